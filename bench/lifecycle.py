"""The proxy's lifecycle under stress, through the real `mcpstore-proxy serve` (and `stdio`) process and real MCP
clients: isolation between many clients, upstreams SIGKILLed mid-call, a connect/call/disconnect soak, floods
against each session cap, start-up beside a hanging upstream, and shutdown with calls in flight.

    .venv/bin/python bench/lifecycle.py [all|isolation|kill|churn|floods|startup|shutdown] [--quick]
        [--churn-seconds 120] [--json [PATH]] [--keep-logs]

Each scenario runs its own proxy on 127.0.0.1 with tests/fixtures/stateful_server.py as its upstream, prints
its figures as it ends, and every figure appears again in one summary table at the end. A figure with an
expectation carries a verdict (ok or FAIL); timings are meant to be read as ratios and orders of magnitude,
since this machine is shared. Every process a scenario starts is killed by pid when it ends, however it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, MCPError, StdioServerParameters, types
from mcp.client.stdio import stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lifecycle_support import (
    ROOT,
    Figures,
    Proxy,
    RawSession,
    connect,
    cpu_seconds,
    descendants,
    describe,
    find_process,
    fixture,
    is_alive,
    json_rpc_answer,
    kill_if_same,
    ms,
    open_fds,
    p50,
    percentile,
    rss_kib,
    running_proxy,
    short,
    spread_ms,
    start_time,
    structured,
    table,
    wait_until,
    write_config,
    zombie_children,
)

from mcpstore_proxy.errors import SESSION_REFUSED, SHUTTING_DOWN, UPSTREAM_FAILED

PROMPT_SECONDS = 5.0
"""What counts as "at once" for a refusal or a failure: the bugs this guards against took 20 to 65 s, and on a
shared 2-core machine running the test suite beside us even an instant answer can take a second."""


@dataclass(frozen=True)
class Run:
    workdir: Path
    quick: bool
    churn_seconds: float

    def directory(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(exist_ok=True)
        return path


@dataclass
class Tally:
    """Outcomes counted by many concurrent clients."""

    calls: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list[str])

    def error(self, error: BaseException) -> None:
        self.errors += 1
        if len(self.samples) < 3:
            self.samples.append(describe(error))


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


# 4. Floods: each session cap refuses at once, naming itself, and leaves what exists working.


async def floods(run: Run, figures: Figures) -> None:
    await downstream_flood(run, figures)
    await upstream_cap_flood(run, figures)
    await named_sessions_flood(run, figures)


async def downstream_flood(run: Run, figures: Figures) -> None:
    cap, extra_attempts, openers = 200, 50 if run.quick else 200, 8
    workdir = run.directory("floods-downstream")
    config = write_config(workdir, {"state": fixture("state")}, log_level="WARNING", max_downstream_sessions=cap)
    opened: list[RawSession] = []
    refusals: Counter[tuple[str, str]] = Counter()
    refusal_seconds: list[float] = []
    admitted_past_cap = 0

    def refusal(answer: httpx2.Response) -> str:
        try:
            error = json_rpc_answer(answer)["error"]
            return f"HTTP {answer.status_code}, {error['code']}: {short(error['message'])}"
        except (ValueError, KeyError):
            return f"HTTP {answer.status_code}: {short(answer.text)}"

    async with (
        running_proxy(config, workdir, upstreams_ready=["state"]) as proxy,
        httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_connections=64)) as http,
    ):
        full = anyio.Event()

        async def opener() -> None:
            while not full.is_set():
                session = RawSession(http, proxy.url)
                answer = await session.initialize()
                if session.session_id is not None:
                    opened.append(session)
                else:
                    refusals["while filling", refusal(answer)] += 1
                    full.set()

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(openers):
                tg.start_soon(opener)
        fill_seconds = time.perf_counter() - started
        for _ in range(extra_attempts):
            session = RawSession(http, proxy.url)
            asked = time.perf_counter()
            answer = await session.initialize()
            refusal_seconds.append(time.perf_counter() - asked)
            if session.session_id is not None:
                admitted_past_cap += 1
                opened.append(session)
            else:
                refusals["at the cap", refusal(answer)] += 1
        try:
            async with connect(proxy.url) as legitimate:
                structured(await legitimate.call_tool("state_echo", {"text": "let in"}))
            legitimate_outcome = "admitted"
        except Exception as error:  # noqa: BLE001  # the refusal is the figure, in whatever form the SDK raises it
            legitimate_outcome = f"refused: {short(describe(error))}"
        flood_session_works = "error" not in await opened[0].call_tool(1, "state_echo", {"text": "still here"})
        deleted = await opened[-1].delete()
        newcomer = RawSession(http, proxy.url)
        after_delete = (await newcomer.initialize()).status_code
        closing = await stop_proxy(proxy)

    figures.add("a: downstream cap (max_downstream_sessions)", cap)
    figures.add("a: time to fill (8 openers)", ms(fill_seconds))
    figures.check("a: sessions admitted", len(opened), cap)
    figures.check("a: admitted past the cap (later attempts)", admitted_past_cap, 0)
    for (phase, reason), count in sorted(refusals.items(), key=lambda item: item[0][0], reverse=True):
        expected = "503 naming max_downstream_sessions"
        is_expected = "503" in reason and "max_downstream_sessions" in reason
        figures.add(f"a: refusals {phase}: {count} x", reason, expected, is_expected)
    add_prompt(figures, f"a: refusal latency over {extra_attempts} more attempts (p50 / max)", refusal_seconds)
    figures.add("a: a different legitimate SDK client at the cap", legitimate_outcome, "refused (at the cap)")
    figures.check("a: a flood session still answers calls", flood_session_works, True)
    figures.add(
        "a: after one DELETE, a new initialize gets",
        f"HTTP {after_delete} (DELETE: {deleted})",
        "200",
        after_delete == 200,
    )
    closing.report(figures, f"a: with {len(opened)} sessions open, ")


@dataclass(frozen=True)
class Outcome:
    session: str
    seconds: float
    code: int | None
    message: str = ""


async def calls_in_parallel(session: Client, names: list[str], *, remember: bool = True) -> list[Outcome]:
    """Call `state_remember` (or `state_echo`) once per named session, all at once: each call's latency and error
    code (None if it answered)."""
    outcomes: list[Outcome] = []

    async def one(name: str) -> None:
        asked = time.perf_counter()
        tool, arguments = ("state_remember", {"value": name}) if remember else ("state_echo", {"text": name})
        try:
            structured(await session.call_tool(tool, {**arguments, "session_id": name}))
            outcomes.append(Outcome(name, time.perf_counter() - asked, None))
        except MCPError as error:
            outcomes.append(Outcome(name, time.perf_counter() - asked, error.code, error.message))
        except RuntimeError as error:  # the tool itself answered an error
            outcomes.append(Outcome(name, time.perf_counter() - asked, 0, str(error)))

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)
    return outcomes


def report_flood(figures: Figures, label: str, outcomes: list[Outcome], cap_name: str, admitted: int) -> None:
    succeeded = [o for o in outcomes if o.code is None]
    refused = [o for o in outcomes if o.code == SESSION_REFUSED and cap_name in o.message]
    other = [o for o in outcomes if o.code is not None and o not in refused]
    figures.check(f"{label}: succeeded", len(succeeded), admitted)
    figures.check(f"{label}: refused ({SESSION_REFUSED} naming {cap_name})", len(refused), len(outcomes) - admitted)
    figures.check(f"{label}: other errors", len(other), 0)
    if refused:
        figures.add(f"{label}: refusal message", short(refused[0].message))
    if other:
        figures.add(f"{label}: first other error", f"{other[0].code}: {short(other[0].message)}")
    add_prompt(figures, f"{label}: refusal latency (p50 / max)", [o.seconds for o in refused])
    figures.add(
        f"{label}: success latency, incl. upstream start (p50 / max)", spread_ms([o.seconds for o in succeeded])
    )


async def upstream_cap_flood(run: Run, figures: Figures) -> None:
    cap, names = 8, [f"flood-{index}" for index in range(40)]
    workdir = run.directory("floods-upstream")
    config = write_config(
        workdir,
        {"state": fixture("state")},
        log_level="WARNING",
        max_sessions_per_upstream=cap,
        max_named_sessions_per_client=100,
    )
    async with running_proxy(config, workdir, upstreams_ready=["state"]) as proxy:
        async with connect(proxy.url) as session:
            outcomes = await calls_in_parallel(session, names)
            survivors = [o.session for o in outcomes if o.code is None]
            still_working = 0
            for name in survivors:
                recalled: list[str] = structured(await session.call_tool("state_recall", {"session_id": name}))
                still_working += recalled == [name]
            # Refusals with no upstream starting beside them, and the same load of calls that are served.
            second_wave = await calls_in_parallel(session, [f"late-{index}" for index in range(len(names))])
            reused = [survivors[i % len(survivors)] for i in range(len(names))] if survivors else []
            served = await calls_in_parallel(session, reused, remember=False)
        closing = await stop_proxy(proxy)
    figures.add("b: 40 session_id values at once, cap", f"max_sessions_per_upstream: {cap}")
    report_flood(figures, "b", outcomes, "max_sessions_per_upstream", cap)
    figures.check("b: admitted sessions keep their state after the flood", still_working, len(survivors))
    add_prompt(
        figures,
        f"b: {len(names)} more new ids at the full cap, refused (p50 / max)",
        [o.seconds for o in second_wave if o.code == SESSION_REFUSED],
    )
    figures.check("b: ... of which refused", sum(o.code == SESSION_REFUSED for o in second_wave), len(names))
    refused_p50 = p50([o.seconds for o in second_wave if o.code == SESSION_REFUSED])
    served_p50 = p50([o.seconds for o in served if o.code is None])
    figures.add(
        f"b: for scale, {len(names)} calls at once on admitted sessions (p50 / max)",
        spread_ms([o.seconds for o in served if o.code is None]),
    )
    figures.add(
        "b: refusal at the full cap / served call, p50 ratio",
        f"{refused_p50 / served_p50:.1f}x",
        "<= 2x",
        refused_p50 <= 2 * served_p50,
    )
    closing.report(figures, "b: ")


async def named_sessions_flood(run: Run, figures: Figures) -> None:
    cap, names = 4, [f"mine-{index}" for index in range(10)]
    workdir = run.directory("floods-named")
    config = write_config(workdir, {"state": fixture("state")}, log_level="WARNING", max_named_sessions_per_client=cap)
    async with running_proxy(config, workdir, upstreams_ready=["state"]) as proxy:
        async with connect(proxy.url) as session:
            outcomes = await calls_in_parallel(session, names)
            admitted = [o.session for o in outcomes if o.code is None]
            still_working = 0
            for name in admitted:
                still_working += structured(await session.call_tool("state_recall", {"session_id": name})) == [name]
        async with connect(proxy.url) as other:
            other_client = await calls_in_parallel(other, names[:cap])
        closing = await stop_proxy(proxy)
    figures.add("c: one connection, 10 session ids, cap", f"max_named_sessions_per_client: {cap}")
    report_flood(figures, "c", outcomes, "max_named_sessions_per_client", cap)
    figures.check("c: its admitted sessions keep their state", still_working, len(admitted))
    figures.check(f"c: another connection opens its own {cap}", sum(o.code is None for o in other_client), cap)
    closing.report(figures, "c: ")


# 5. Start-up: a hanging upstream delays neither /healthz nor stdio `initialize`, and SIGTERM still ends it.


def hanging_pids(gate: Path) -> dict[int, int | None]:
    """The upstreams hanging in their start (stateful_server.py --start-gate), with their start times."""
    pids = [int(path.name.removeprefix("hanging-")) for path in gate.glob("hanging-*")]
    return {pid: start_time(pid) for pid in pids}


def gated(workdir: Path, name: str) -> Path:
    gate = workdir / name
    gate.mkdir()
    (gate / "slow").touch()
    return gate


async def startup(run: Run, figures: Figures) -> None:
    workdir = run.directory("startup")
    normal = {"state": fixture("state")}
    baseline = write_config(workdir, normal, name="baseline.yaml")
    http_gate, stdio_gate = gated(workdir, "http-gate"), gated(workdir, "stdio-gate")
    hanging = {
        "http": write_config(
            workdir, {**normal, "slow": fixture("slow", "--start-gate", str(http_gate))}, name="h.yaml"
        ),
        "stdio": write_config(
            workdir, {**normal, "slow": fixture("slow", "--start-gate", str(stdio_gate))}, name="s.yaml"
        ),
    }
    timings: dict[str, dict[str, float]] = {"baseline": {}, "hanging": {}}
    later = Figures(figures.scenario)
    stdio_left: list[int] = []

    async def over_http(label: str, config: Path) -> None:
        async with running_proxy(config, workdir, wait=False) as proxy:
            timings[label]["healthz"] = await proxy.wait_healthy()
            async with connect(proxy.url) as session:
                structured(await session.call_tool("state_echo", {"text": "first"}))
            timings[label]["first call"] = time.perf_counter() - proxy.launched
            if label == "hanging":
                await sigterm_during_start_up(proxy, http_gate, later)
            else:
                (await stop_proxy(proxy)).report(later, "baseline: ")

    async def over_stdio(label: str, config: Path) -> None:
        seconds, left = await stdio_start_up(config, workdir / f"stdio-{label}.log")
        timings[label] |= seconds
        stdio_left.extend(left)

    try:
        # HTTP and stdio side by side: both rows of each comparison start under the same contention.
        for label, http_config, stdio_config in (
            ("baseline", baseline, baseline),
            ("hanging", hanging["http"], hanging["stdio"]),
        ):
            async with anyio.create_task_group() as tg:
                tg.start_soon(over_http, label, http_config)
                tg.start_soon(over_stdio, label, stdio_config)
        stdio_hanging_left = await leftover_hanging(stdio_gate)
    finally:
        for gate in (http_gate, stdio_gate):
            for pid, started in hanging_pids(gate).items():
                kill_if_same(pid, started)

    limit = 10.0
    for what, unit in (
        ("healthz", "/healthz 200"),
        ("first call", "first state_echo answered"),
        ("initialize", "stdio initialize answered"),
        ("tools/list", "stdio first tools/list"),
    ):
        base, hung = timings["baseline"][what], timings["hanging"][what]
        figures.add(f"{unit}: baseline / with a hanging upstream", f"{ms(base)} / {ms(hung)}")
        if what in ("healthz", "initialize"):
            figures.add(
                f"{unit}: added by the hanging upstream",
                f"{hung - base:+.1f} s",
                f"< {limit:g} s (start timeout 60 s)",
                hung - base < limit,
            )
        else:
            figures.add(
                f"{unit}: added by the hanging upstream", f"{hung - base:+.1f} s", "~ startup_wait_seconds (5 s)"
            )
    figures.check("stdio: hanging upstreams alive after EOF", stdio_hanging_left, 0)
    figures.check("stdio: processes left after EOF", len(stdio_left), 0)
    figures.rows.extend(later.rows)


async def sigterm_during_start_up(proxy: Proxy, gate: Path, figures: Figures) -> None:
    if not await wait_until(lambda: bool(hanging_pids(gate)), timeout=30):
        raise RuntimeError("the slow upstream never started hanging")
    status = await proxy.health()
    figures.add("slow upstream state at SIGTERM", status["upstreams"]["slow"]["state"] if status else "no /healthz")
    closing = await stop_proxy(proxy)
    figures.check("SIGTERM during a hanging start: hanging upstreams alive after", await leftover_hanging(gate), 0)
    closing.report(figures, "SIGTERM during a hanging start: ")


async def leftover_hanging(gate: Path) -> int:
    def alive() -> list[int]:
        return [pid for pid, started in hanging_pids(gate).items() if is_alive(pid) and start_time(pid) == started]

    await wait_until(lambda: not alive(), timeout=10)
    return len(alive())


async def stdio_start_up(config: Path, log_path: Path) -> tuple[dict[str, float], list[int]]:
    """Seconds from launching `mcpstore-proxy stdio` until `initialize`, then a first tools/list, are answered;
    and the processes it started (the proxy included) still alive a while after its stdin closed."""
    parameters = StdioServerParameters(
        command=sys.executable, args=["-m", "mcpstore_proxy", "stdio", "--config", str(config)], cwd=str(ROOT)
    )
    started: dict[int, int | None] = {}
    try:
        with log_path.open("w") as log:
            launched = time.perf_counter()
            async with Client(stdio_client(parameters, errlog=log), mode="legacy", cache=None) as session:
                initialized = time.perf_counter() - launched
                tools = {tool.name for tool in (await session.list_tools()).tools}
                listed = time.perf_counter() - launched
                proxy = find_process(os.getpid(), f"stdio --config {config}")
                if proxy is None:
                    raise RuntimeError("the stdio proxy's process is not among this process's descendants")
                started = {pid: start_time(pid) for pid in {proxy, *descendants(proxy)}}
        if "state_echo" not in tools:
            raise RuntimeError(f"the stdio proxy listed no state_echo: {sorted(tools)}")

        def alive() -> list[int]:
            return [pid for pid, began in started.items() if is_alive(pid) and start_time(pid) == began]

        await wait_until(lambda: not alive(), timeout=10)
        return {"initialize": initialized, "tools/list": listed}, alive()
    finally:
        for pid, began in started.items():
            kill_if_same(pid, began)


# 6. Shutdown: SIGTERM drains the calls in flight, refuses new work with -32012, and exits 0.


@dataclass
class AfterSigterm:
    """What a scenario saw once it had sent SIGTERM."""

    asked: float = 0.0
    existing_session: dict[str, Any] = field(default_factory=dict[str, Any])
    """The JSON-RPC error of a call on a session opened before."""
    new_session: str = "not tried"
    new_session_ok: bool = False


async def shutdown(run: Run, figures: Figures) -> None:
    callers, sleep_seconds = 8, 4.0 if run.quick else 8.0
    workdir = run.directory("shutdown")
    config = write_config(workdir, {"state": fixture("state")}, shutdown_grace_seconds=30)
    markers = [workdir / f"started-{index}" for index in range(callers)]
    answers: list[tuple[float, dict[str, Any]]] = []
    seen = AfterSigterm()
    async with (
        running_proxy(config, workdir, upstreams_ready=["state"]) as proxy,
        httpx2.AsyncClient(timeout=120) as http,
    ):
        sessions = [RawSession(http, proxy.url) for _ in range(callers)]

        async def warm(session: RawSession) -> None:
            await session.open()
            check_answered(await session.call_tool(1, "state_echo", {"text": "warm"}))  # starts its upstream

        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(warm, session)

        async def long_call(index: int) -> None:
            arguments = {"seconds": sleep_seconds, "started_marker": str(markers[index])}
            try:
                answer = await sessions[index].call_tool(2, "state_sleep", arguments)
            except httpx2.HTTPError as error:
                answer = {"error": {"code": None, "message": describe(error)}}
            answers.append((time.perf_counter(), answer))

        async with anyio.create_task_group() as tg:
            for index in range(callers):
                tg.start_soon(long_call, index)
            if not await wait_until(lambda: all(m.exists() for m in markers), timeout=60):
                raise RuntimeError("the sleep calls never all started upstream")
            proxy.track()
            seen.asked = time.perf_counter()
            os.kill(proxy.pid, signal.SIGTERM)
            await wait_until(lambda: is_draining(proxy), timeout=10, interval=0.02)
            seen.existing_session = (await sessions[0].call_tool(3, "state_echo", {"text": "late"})).get("error", {})
            newcomer = await RawSession(http, proxy.url).initialize()
            try:
                refusal = json_rpc_answer(newcomer)["error"]
                seen.new_session = f"HTTP {newcomer.status_code}, {refusal['code']}: {short(refusal['message'])}"
                seen.new_session_ok = newcomer.status_code == 503 and refusal["code"] == SHUTTING_DOWN
            except (ValueError, KeyError):
                seen.new_session = f"HTTP {newcomer.status_code}: {short(newcomer.text)}"
        with anyio.move_on_after(60):
            await proxy.process.wait()
        exited = time.perf_counter()
        code = proxy.process.returncode
        left = await proxy.leftovers()
        log = proxy.log

    slept = [
        answer for _, answer in answers if answer.get("result", {}).get("structuredContent") == {"result": "slept"}
    ]
    last_answer = max((at for at, _ in answers), default=seen.asked)
    figures.add("calls in flight at SIGTERM", f"{callers} x sleep {sleep_seconds:g} s")
    figures.check("calls completed successfully", len(slept), callers)
    failed = [answer["error"] for _, answer in answers if "error" in answer]
    if failed:
        figures.add("first failed call", short(json.dumps(failed[0])))
    figures.add("SIGTERM to last answer", ms(last_answer - seen.asked))
    figures.add("SIGTERM to exit", ms(exited - seen.asked))
    figures.add(
        "last answer to exit",
        ms(exited - last_answer),
        f"< {PROMPT_SECONDS * 2:g} s",
        exited - last_answer < PROMPT_SECONDS * 2,
    )
    figures.check("exit code", code if code is not None else "still running", 0)
    figures.check("tracebacks in log", log.count("Traceback"), 0)
    figures.check("processes left after exit", len(left), 0)
    error = seen.existing_session
    figures.add(
        "call on an existing session after SIGTERM",
        f"{error.get('code')}: {short(str(error.get('message')))}",
        f"{SHUTTING_DOWN} shutting down",
        error.get("code") == SHUTTING_DOWN and "shutting down" in str(error.get("message")),
    )
    figures.add("new initialize after SIGTERM", seen.new_session, f"503, {SHUTTING_DOWN}", seen.new_session_ok)


def check_answered(answer: dict[str, Any]) -> None:
    if "error" in answer:
        raise RuntimeError(f"the call failed: {answer['error']}")


async def is_draining(proxy: Proxy) -> bool:
    status = await proxy.health()
    return status is not None and status["status"] == "draining"


# Shared steps, and the run.


@dataclass(frozen=True)
class Closing:
    """How a proxy ended: its exit code, the processes it left, the tracebacks it logged."""

    code: int
    seconds: float
    left: list[int]
    tracebacks: int

    def report(self, figures: Figures, prefix: str = "") -> None:
        figures.add(f"{prefix}proxy SIGTERM to exit", ms(self.seconds))
        figures.check(f"{prefix}proxy exit code", self.code, 0)
        figures.check(f"{prefix}processes left after the proxy stopped", len(self.left), 0)
        figures.check(f"{prefix}tracebacks in the proxy's log", self.tracebacks, 0)


async def stop_proxy(proxy: Proxy) -> Closing:
    """SIGTERM the proxy, wait for it, and see what it left behind."""
    asked = time.perf_counter()
    code = await proxy.stop()
    seconds = time.perf_counter() - asked
    return Closing(code, seconds, await proxy.leftovers(), proxy.log.count("Traceback"))


def add_prompt(figures: Figures, name: str, seconds: list[float]) -> None:
    """Durations (p50 / max) that must all be prompt."""
    expected = f"max < {PROMPT_SECONDS:g} s"
    figures.add(name, spread_ms(seconds), expected, bool(seconds) and max(seconds) < PROMPT_SECONDS)


def add_error_samples(figures: Figures, tally: Tally) -> None:
    for sample in tally.samples:
        figures.add("error sample", short(sample))


SCENARIOS: dict[str, Callable[[Run, Figures], Awaitable[None]]] = {
    "isolation": isolation,
    "kill": kill,
    "churn": churn,
    "floods": floods,
    "startup": startup,
    "shutdown": shutdown,
}


async def run_scenarios(names: list[str], run: Run) -> tuple[list[Figures], str | None]:
    """Run the scenarios in turn; a SIGINT or SIGTERM stops the one running (which cleans up what it started).
    Returns their figures, and the signal that stopped them, if one did."""
    everything: list[Figures] = []
    stopped_by: str | None = None
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            nonlocal stopped_by
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    stopped_by = signal.Signals(signum).name
                    print(f"{stopped_by}: stopping, cleaning up", file=sys.stderr, flush=True)
                    tg.cancel_scope.cancel()

        tg.start_soon(stop_on_signal)
        for name in names:
            figures = Figures(name)
            everything.append(figures)
            started = time.perf_counter()
            print(f"== {name}", file=sys.stderr, flush=True)
            try:
                await SCENARIOS[name](run, figures)
            except Exception as error:  # noqa: BLE001  # one failed scenario is reported; the others still run
                traceback.print_exc()
                figures.add("scenario failed", short(describe(error), 160), "no failure", False)
            finally:
                figures.add("scenario wall time", f"{time.perf_counter() - started:.1f} s")
                print(table(figures.rows), end="\n\n", file=sys.stderr, flush=True)
        tg.cancel_scope.cancel()
    return everything, stopped_by


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="all", choices=["all", *SCENARIOS])
    parser.add_argument("--quick", action="store_true", help="smaller counts and a 20 s soak (about 90 s in all)")
    parser.add_argument("--churn-seconds", type=float, default=120.0, help="length of the churn soak")
    parser.add_argument("--json", nargs="?", type=Path, const=ROOT / "bench" / "results" / "lifecycle.json")
    parser.add_argument("--keep-logs", action="store_true", help="keep the proxies' logs and configs")
    arguments = parser.parse_args()

    names = list(SCENARIOS) if arguments.scenario == "all" else [arguments.scenario]
    workdir = Path(tempfile.mkdtemp(prefix="mcpstore-lifecycle-"))
    began = time.perf_counter()
    try:
        everything, stopped_by = await run_scenarios(names, Run(workdir, arguments.quick, arguments.churn_seconds))
    finally:
        if arguments.keep_logs:
            print(f"logs and configs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = [row for figures in everything for row in figures.rows]
    failed = [row for row in rows if row.ok is False]
    mode = "quick" if arguments.quick else "default"
    seconds = time.perf_counter() - began
    ending = f", stopped by {stopped_by}" if stopped_by else ""
    print(f"## mcpstore-proxy lifecycle ({mode} run, {seconds:.0f} s, {len(failed)} FAIL{ending})\n")
    print(table(rows))
    if arguments.json is not None:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "mode": mode,
            "seconds": round(seconds, 1),
            "failed": len(failed),
            "stopped_by": stopped_by,
            "figures": [asdict(r) for r in rows],
        }
        arguments.json.write_text(json.dumps(summary, indent=2))
        print(f"\nfigures written to {arguments.json}", file=sys.stderr)
    if failed or stopped_by:
        sys.exit(1)


if __name__ == "__main__":
    anyio.run(main)
