"""bench/lifecycle.py's scenarios about the proxy's own start and stop: a hanging upstream delays neither /healthz
nor stdio `initialize` (and SIGTERM still ends it), and SIGTERM drains the calls in flight, refuses new work, exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lifecycle_steps import PROMPT_SECONDS, Run, stop_proxy
from lifecycle_support import (
    ROOT,
    Figures,
    Proxy,
    RawSession,
    connect,
    descendants,
    describe,
    find_process,
    fixture,
    is_alive,
    json_rpc_answer,
    kill_if_same,
    ms,
    running_proxy,
    short,
    start_time,
    structured,
    wait_until,
    write_config,
)

from mcpstore_proxy.errors import SHUTTING_DOWN

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
