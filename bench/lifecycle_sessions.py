"""bench/lifecycle.py's scenarios about sessions under load: isolation between many clients, upstreams SIGKILLed
under a call in flight, and a connect/call/disconnect soak whose memory, descriptors and processes stay flat.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio
from mcp import Client, MCPError, types

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lifecycle_steps import Run, Tally, add_error_samples, add_prompt, stop_proxy
from lifecycle_support import (
    Figures,
    connect,
    cpu_seconds,
    fixture,
    ms,
    open_fds,
    p50,
    percentile,
    rss_kib,
    running_proxy,
    short,
    spread_ms,
    structured,
    wait_until,
    write_config,
    zombie_children,
)

from mcpstore_proxy.errors import UPSTREAM_FAILED

# 1. Isolation: many clients, each only ever sees its own state.


async def isolation(run: Run, figures: Figures) -> None:
    clients, calls = (10, 20) if run.quick else (50, 200)
    workdir = run.directory("isolation")
    config = write_config(workdir, {"state": fixture("state")}, log_level="WARNING", max_sessions_per_upstream=64)
    tally = Tally()
    leaks: list[str] = []
    mismatches = 0
    first_calls: list[float] = []
    later_calls: list[float] = []

    async def client(index: int) -> None:
        nonlocal mismatches
        own = f"client-{index}-"
        remembered: list[str] = []
        try:
            async with connect(proxy.url) as session:
                for call in range(calls):
                    asked = time.perf_counter()
                    try:
                        if call % 2 == 0:
                            result = await session.call_tool("state_remember", {"value": f"{own}{call}"})
                            remembered.append(f"{own}{call}")
                        else:
                            result = await session.call_tool("state_recall", {})
                        values: list[str] = structured(result)
                    except (MCPError, RuntimeError) as error:
                        tally.error(error)
                        continue
                    (later_calls if call else first_calls).append(time.perf_counter() - asked)
                    tally.calls += 1
                    leaks.extend(value for value in values if not value.startswith(own))
                    mismatches += values != remembered
        except Exception as error:  # noqa: BLE001  # a client that could not even connect counts as one error
            tally.error(error)

    async with running_proxy(config, workdir, upstreams_ready=["state"]) as proxy:
        started, cpu_before = time.perf_counter(), cpu_seconds(proxy.pid)
        async with anyio.create_task_group() as tg:
            for index in range(clients):
                tg.start_soon(client, index)
        wall_seconds = time.perf_counter() - started
        proxy_cpu_seconds = cpu_seconds(proxy.pid) - cpu_before
        closing = await stop_proxy(proxy)
    figures.add("clients x calls (all at once)", f"{clients} x {calls}")
    figures.check("calls answered", tally.calls, clients * calls)
    figures.check("cross-session leaks", len(leaks), 0)
    figures.check("state mismatches (lost or extra values)", mismatches, 0)
    figures.check("errors", tally.errors, 0)
    add_error_samples(figures, tally)
    figures.add("first call, starting the client's upstream (p50 / max)", spread_ms(first_calls))
    figures.add("later calls (p50 / p99)", f"{ms(p50(later_calls))} / {ms(percentile(later_calls, 0.99))}")
    figures.add("wall time, upstream starts included", f"{wall_seconds:.1f} s")
    figures.add("calls per second, upstream starts included", f"{tally.calls / wall_seconds:.0f}")
    figures.add(
        "proxy CPU per call, upstream starts included", f"{1000 * proxy_cpu_seconds / max(1, tally.calls):.1f} ms"
    )
    closing.report(figures)


# 2. Kill: an upstream SIGKILLed under a call in flight fails that call at once, and only that one.


async def kill(run: Run, figures: Figures) -> None:
    kills, bystanders = (5, 5) if run.quick else (30, 10)
    workdir = run.directory("kill")
    config = write_config(workdir, {"state": fixture("state")}, max_sessions_per_upstream=32)
    bystanders_done = anyio.Event()
    others = Tally()
    failed_after: list[float] = []
    failures: Counter[str] = Counter()
    fresh_sessions = 0
    resets: list[str] = []

    async def bystander(index: int) -> None:
        try:
            async with connect(proxy.url) as session:
                while not bystanders_done.is_set():
                    try:
                        structured(await session.call_tool("state_echo", {"text": f"bystander {index}"}))
                        others.calls += 1
                    except (MCPError, RuntimeError) as error:
                        others.error(error)
                    await anyio.sleep(0.02)  # pacing, so that ten clients do not starve the victim of CPU
        except Exception as error:  # noqa: BLE001  # a bystander that could not connect counts as an error
            others.error(error)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        if "was reset" in str(params.data):
            resets.append(str(params.data))

    async def sigkill_during_call(victim: Client, pid: int, round_number: int) -> None:
        marker = workdir / f"sleeping-{round_number}"
        ended = anyio.Event()
        ended_at = 0.0

        async def long_call() -> None:
            nonlocal ended_at
            try:
                await victim.call_tool("state_sleep", {"seconds": 600, "started_marker": str(marker)})
                failures["answered (not failed)"] += 1
            except MCPError as error:
                failures[f"{error.code}: {short(error.message, 50)}"] += 1
            finally:
                ended_at = time.perf_counter()
                ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            if not await wait_until(marker.exists, timeout=60):
                raise RuntimeError(f"round {round_number}: the sleep call never started upstream")
            killed_at = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            with anyio.move_on_after(60):
                await ended.wait()
            if not ended.is_set():
                failures["still running 60 s after the kill"] += 1
                tg.cancel_scope.cancel()
                return
            failed_after.append(ended_at - killed_at)

    async with running_proxy(config, workdir, upstreams_ready=["state"]) as proxy:
        async with anyio.create_task_group() as tg:
            for index in range(bystanders):
                tg.start_soon(bystander, index)
            await wait_until(lambda: others.calls >= 3 * bystanders, timeout=120)
            async with connect(proxy.url, logging_callback=on_log) as victim:
                killed: set[int] = set()
                for round_number in range(kills + 1):
                    pid: int = structured(await victim.call_tool("state_whoami", {}))
                    fresh_sessions += bool(killed) and pid not in killed
                    if round_number < kills:
                        killed.add(pid)
                        proxy.track()
                        await sigkill_during_call(victim, pid, round_number)
            bystanders_done.set()
        await wait_until(lambda: not zombie_children(proxy.pid), timeout=10)
        zombies = len(zombie_children(proxy.pid))
        closing = await stop_proxy(proxy)
    figures.add("kills (SIGKILL of the session's upstream, a call in flight)", kills)
    add_prompt(figures, "in-flight call failed after SIGKILL (p50 / max)", failed_after)
    figures.add("in-flight call outcomes", "; ".join(f"{n} x {kind}" for kind, n in failures.items()))
    figures.check(
        f"in-flight calls failed with {UPSTREAM_FAILED}",
        sum(n for kind, n in failures.items() if kind.startswith(f"{UPSTREAM_FAILED}:")),
        kills,
    )
    figures.check("next call on the killed session works (fresh upstream)", fresh_sessions, kills)
    figures.check("state-reset warnings received by the victim", len(resets), kills)
    figures.add(f"bystander calls ({bystanders} clients, meanwhile)", others.calls)
    figures.check("errors seen by other clients", others.errors, 0)
    add_error_samples(figures, others)
    figures.check("zombie children of the proxy after the kills", zombies, 0)
    closing.report(figures)


# 3. Churn: connect, call, disconnect for minutes; memory, descriptors and processes stay flat.


@dataclass(frozen=True)
class Sample:
    seconds: float
    rss_kib: int
    fds: int
    children: int


async def churn(run: Run, figures: Figures) -> None:
    seconds = 20.0 if run.quick else run.churn_seconds
    idle_seconds = 5.0
    workers, pool_names = 4, 6
    workdir = run.directory("churn")
    servers = {"state": fixture("state"), "hub": fixture("hub", session="shared")}
    config = write_config(
        workdir,
        servers,
        log_level="WARNING",
        session_idle_timeout_seconds=idle_seconds,
        max_sessions_per_upstream=256,
    )
    tally = Tally()
    cycles = 0
    lost = 0
    reused = 0
    samples: list[Sample] = []

    async def churner(worker: int, deadline: float) -> None:
        nonlocal cycles, lost, reused
        cycle = 0
        while time.perf_counter() < deadline:
            # Half the cycles use a name from a small pool (kept alive, reused across connections), half a name
            # used once (it expires after the idle timeout, which closes its upstream process).
            name = f"pool-{(worker + cycle) % pool_names}" if cycle % 2 else f"once-{worker}-{cycle}"
            value = f"w{worker}-c{cycle}"
            try:
                async with connect(proxy.url) as session:
                    structured(await session.call_tool("hub_echo", {"text": value}))
                    structured(await session.call_tool("state_remember", {"value": value, "session_id": name}))
                    recalled: list[str] = structured(await session.call_tool("state_recall", {"session_id": name}))
                    tally.calls += 3
                    lost += value not in recalled
                    reused += len(recalled) > 1
                    if cycle % 3 == 0:  # the connection's own session: its own upstream process, ended by DELETE
                        structured(await session.call_tool("state_whoami", {}))
                        tally.calls += 1
                cycles += 1
            except Exception as error:  # noqa: BLE001  # any failure of a cycle is a figure, not a crash
                tally.error(error)
            cycle += 1

    async def sampler(stop: anyio.Event, interval: float) -> None:
        began = time.perf_counter()
        while not stop.is_set():
            samples.append(
                Sample(time.perf_counter() - began, rss_kib(proxy.pid), open_fds(proxy.pid), len(proxy.track()))
            )
            with anyio.move_on_after(interval):
                await stop.wait()

    async with running_proxy(config, workdir, upstreams_ready=["state", "hub"]) as proxy:
        before = Sample(0, rss_kib(proxy.pid), open_fds(proxy.pid), len(proxy.track()))
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler, stop, 1.0 if run.quick else 3.0)
            deadline = time.perf_counter() + seconds
            async with anyio.create_task_group() as churners:
                for worker in range(workers):
                    churners.start_soon(churner, worker, deadline)
            stop.set()
        settled = await wait_until(lambda: len(proxy.track()) <= before.children, timeout=idle_seconds + 30)
        after = Sample(0, rss_kib(proxy.pid), open_fds(proxy.pid), len(proxy.track()))
        closing = await stop_proxy(proxy)

    warm = next((s for s in samples if s.seconds >= min(30.0, seconds / 4)), samples[0])
    last = samples[-1]
    growth_kib = last.rss_kib - warm.rss_kib
    figures.add("soak", f"{seconds:.0f} s, {workers} clients at a time, idle timeout {idle_seconds:g} s")
    figures.add("connect/call/disconnect cycles", cycles)
    figures.add("calls", tally.calls)
    figures.check("errors", tally.errors, 0)
    add_error_samples(figures, tally)
    figures.check("values lost within a cycle", lost, 0)
    figures.add("cycles that found a named session's earlier state", reused)
    figures.add("proxy RSS first / max / last", "/".join(f"{mib(v)}" for v in rss_of(samples)) + " MiB")
    is_flat = growth_kib <= 0.2 * warm.rss_kib
    figures.add(
        f"RSS after warm-up (at {warm.seconds:.0f} s) to last",
        f"{'flat' if is_flat else 'growing'}: {growth_kib / 1024:+.1f} MiB ({100 * growth_kib / warm.rss_kib:+.0f}%)",
        "flat (within 20%)",
        is_flat,
    )
    figures.add("open fds first / max / last", f"{samples[0].fds}/{max(s.fds for s in samples)}/{last.fds}")
    figures.add(
        "children first / max / last", f"{samples[0].children}/{max(s.children for s in samples)}/{last.children}"
    )
    figures.add(
        "children once named sessions expired (before the soak)",
        f"{after.children} ({before.children})",
        f"= {before.children}",
        settled and after.children == before.children,
    )
    figures.add(
        "open fds once sessions expired (before the soak)",
        f"{after.fds} ({before.fds})",
        "within 5",
        after.fds - before.fds <= 5,
    )
    figures.add("RSS once sessions expired (before the soak)", f"{mib(after.rss_kib)} ({mib(before.rss_kib)}) MiB")
    closing.report(figures)


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def rss_of(samples: list[Sample]) -> tuple[int, int, int]:
    return samples[0].rss_kib, max(s.rss_kib for s in samples), samples[-1].rss_kib
