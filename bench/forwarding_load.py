"""The load of bench/forwarding.py: N calls in one session (c=1), then M calls over 8 sessions (c=8), against one
running system under test, with the CPU its own process spends per call.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forwarding_processes import running, upstream_processes
from forwarding_targets import Target
from proxy_overhead import cpu_seconds, percentile

SESSIONS = 8


async def call_batch(session: Client, count: int, label: str, sink: list[float]) -> None:
    for index in range(count):
        started = time.perf_counter()
        await session.call_tool("echo", {"text": f"{label} {index}"})
        sink.append(time.perf_counter() - started)


async def measure(
    target: Target, url: str, pid: int, seen_upstreams: list[int], calls: int, c8_calls: int
) -> dict[str, Any]:
    single: list[float] = []
    async with target.client(url, SESSIONS) as session:
        await session.call_tool("echo", {"text": "warm-up"})  # an isolating proxy starts the session's upstream here
        cpu_before = cpu_seconds(pid)
        await call_batch(session, calls, "c1", single)
        cpu_c1 = (cpu_seconds(pid) - cpu_before) / calls

    per_session = max(1, c8_calls // SESSIONS)
    concurrent: list[float] = []
    async with AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(target.client(url, index)) for index in range(SESSIONS)]
        for session in sessions:
            await session.call_tool("echo", {"text": "warm-up"})
        upstreams = upstream_processes(pid)
        seen_upstreams.extend(upstreams)
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        async with anyio.create_task_group() as workers:
            for index, session in enumerate(sessions):
                workers.start_soon(call_batch, session, per_session, f"c8/{index}", concurrent)
        seconds = time.perf_counter() - started
        cpu_c8 = (cpu_seconds(pid) - cpu_before) / (per_session * SESSIONS)
    return {
        "c1_calls": calls,
        "c1_p50_ms": statistics.median(single) * 1000,
        "c1_p99_ms": percentile(single, 0.99) * 1000,
        "c8_calls": per_session * SESSIONS,
        "c8_calls_per_s": per_session * SESSIONS / seconds,
        "c8_p50_ms": statistics.median(concurrent) * 1000,
        "cpu_ms_per_call_c1": cpu_c1 * 1000,
        "cpu_ms_per_call_c8": cpu_c8 * 1000,
        "upstream_processes_for_8_sessions": len(upstreams),
    }


async def run_target(
    target: Target, workdir: Path, pin: bool, install: bool, calls: int, c8_calls: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"target": target.name, "label": target.label, "direct": target.direct}
    try:
        async with running(target, workdir, pin, install) as (launch, pid, seen_upstreams):
            row["version"] = launch.version
            row["notes"] = launch.notes
            row.update(await measure(target, launch.url, pid, seen_upstreams, calls, c8_calls))
    except Exception as error:  # noqa: BLE001 - a target that cannot be installed or run is skipped, with the reason shown
        row["skipped"] = f"{type(error).__name__}: {error}"[:300]
        return row
    if target.name == "floor":  # the relay's first line says which loop, HTTP parser and JSON library it runs
        row["notes"] = [*row["notes"], *(workdir / "floor.log").read_text(errors="replace").splitlines()[:1]]
    if target.upstream == "http":  # no upstream processes to count: one HTTP server, one MCP session per key in it
        row["isolates_sessions"] = "per key (HTTP upstream; not observed)"
    else:
        row["isolates_sessions"] = None if target.direct else row["upstream_processes_for_8_sessions"] >= SESSIONS
    return row
