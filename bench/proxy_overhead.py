"""Proxied against direct: echo-call latency (p50, p99) and throughput, one session and 8 concurrent sessions,
plus the memory each idle session costs the proxy (and its upstream process).

    .venv/bin/python bench/proxy_overhead.py [--calls 2000] [--idle-sessions 20]

"Direct" is the SDK's own Streamable HTTP server serving the echo tool; "proxied" is mcpstore-proxy over HTTP
with the same echo server as an isolated stdio upstream. Both run on this machine in the same run, so compare
the ratios, not the absolute numbers. `server_cpu_ms` is the CPU time the server process (the echo server, or
the proxy without its upstream) spends per call at c=1: unlike latency, machine noise barely moves it.
Prints a table, and writes JSON to bench/results/ when asked to.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
ECHO_SERVER = ROOT / "bench" / "echo_server.py"
CONCURRENCY = 8


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_serving(port: int, path: str) -> None:
    with anyio.fail_after(60):
        while True:
            try:
                async with httpx2.AsyncClient() as http:
                    await http.get(f"http://127.0.0.1:{port}{path}")
                return
            except httpx2.TransportError:
                await anyio.sleep(0.1)


@asynccontextmanager
async def direct_server() -> AsyncGenerator[tuple[str, int]]:
    port = free_port()
    process = await anyio.open_process([sys.executable, str(ECHO_SERVER), "http", str(port)], stdout=None, stderr=None)
    try:
        await wait_serving(port, "/mcp")
        yield f"http://127.0.0.1:{port}/mcp", process.pid
    finally:
        process.terminate()
        with anyio.fail_after(30):
            await process.wait()


@asynccontextmanager
async def proxy_server(workdir: Path) -> AsyncGenerator[tuple[str, int]]:
    port = free_port()
    config = workdir / "bench-proxy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "log_level": "WARNING",
                "max_sessions_per_upstream": 256,
                "mcpServers": {"bench": {"command": sys.executable, "args": [str(ECHO_SERVER), "stdio"], "prefix": ""}},
            }
        )
    )
    process = await anyio.open_process(
        [sys.executable, "-m", "mcpstore_proxy", "serve", "--config", str(config), "--port", str(port)],
        cwd=ROOT,
        stdout=None,
        stderr=None,
    )
    try:
        await wait_serving(port, "/healthz")
        yield f"http://127.0.0.1:{port}/mcp", process.pid
    finally:
        process.terminate()
        with anyio.fail_after(60):
            await process.wait()


@asynccontextmanager
async def client(url: str, headers: dict[str, str] | None = None, mode: str = "legacy") -> AsyncGenerator[Client]:
    async with (
        httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30.0, read=300.0)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as session,
    ):
        yield session


async def timed_calls(session: Client, calls: int) -> list[float]:
    await session.call_tool("echo", {"text": "warm-up"})  # the first call starts the isolated upstream session
    latencies: list[float] = []
    for index in range(calls):
        started = time.perf_counter()
        await session.call_tool("echo", {"text": f"call {index}"})
        latencies.append(time.perf_counter() - started)
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (wall-clock noise does not touch it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, calls: int, server_pid: int) -> dict[str, float]:
    async with client(url) as session:
        cpu_before = cpu_seconds(server_pid)
        started = time.perf_counter()
        single = await timed_calls(session, calls)
        single_seconds = time.perf_counter() - started
        cpu_per_call = (cpu_seconds(server_pid) - cpu_before) / (calls + 1)
    per_session = max(1, calls // CONCURRENCY)
    all_latencies: list[float] = []
    concurrent_seconds = 0.0
    async with anyio.create_task_group() as tg:
        sessions: list[Client] = []
        for _ in range(CONCURRENCY):
            sessions.append(await tg.start(_open_session, url))
        for session in sessions:
            await session.call_tool("echo", {"text": "warm-up"})
        started = time.perf_counter()
        async with anyio.create_task_group() as workers:
            for session in sessions:
                workers.start_soon(_run_batch, session, per_session, all_latencies)
        concurrent_seconds = time.perf_counter() - started
        tg.cancel_scope.cancel()
    return {
        "server_cpu_ms": cpu_per_call * 1000,
        "c1_p50_ms": statistics.median(single) * 1000,
        "c1_p99_ms": percentile(single, 0.99) * 1000,
        "c1_calls_per_s": calls / single_seconds,
        "c8_p50_ms": statistics.median(all_latencies) * 1000,
        "c8_p99_ms": percentile(all_latencies, 0.99) * 1000,
        "c8_calls_per_s": per_session * CONCURRENCY / concurrent_seconds,
    }


async def _open_session(url: str, *, task_status: anyio.abc.TaskStatus[Client]) -> None:
    async with client(url) as session:
        task_status.started(session)
        await anyio.sleep_forever()


async def _run_batch(session: Client, count: int, sink: list[float]) -> None:
    for index in range(count):
        started = time.perf_counter()
        await session.call_tool("echo", {"text": f"c8 {index}"})
        sink.append(time.perf_counter() - started)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


async def idle_memory(url: str, proxy_pid: int, sessions: int) -> dict[str, float]:
    """Open `sessions` explicit-key sessions (each with its own upstream process), then leave them idle."""
    async with client(url) as session:
        await session.call_tool("echo", {"text": "baseline"})
        before_proxy = rss_kib(proxy_pid)
        before_children = set(children(proxy_pid))
        for index in range(sessions):
            await session.call_tool("echo", {"text": "open", "session_id": f"idle-{index}"})
        await anyio.sleep(1.0)  # let allocations settle; measurement only, not synchronization
        after_proxy = rss_kib(proxy_pid)
        new_children = [pid for pid in children(proxy_pid) if pid not in before_children]
        upstream_kib = statistics.mean(rss_kib(pid) for pid in new_children) if new_children else 0.0
    return {
        "idle_sessions": float(sessions),
        "proxy_kib_per_idle_session": (after_proxy - before_proxy) / sessions,
        "upstream_process_kib_each": upstream_kib,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--idle-sessions", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    arguments = parser.parse_args()

    async with direct_server() as (url, pid):
        direct = await measure(url, arguments.calls, pid)
    workdir = ROOT / "bench" / "results"
    workdir.mkdir(exist_ok=True)
    async with proxy_server(workdir) as (url, pid):
        proxied = await measure(url, arguments.calls, pid)
        memory = await idle_memory(url, pid, arguments.idle_sessions)

    print(f"{'metric':<16}{'direct':>12}{'proxied':>12}{'ratio':>10}")
    for metric in direct:
        ratio = proxied[metric] / direct[metric]
        print(f"{metric:<16}{direct[metric]:>12.2f}{proxied[metric]:>12.2f}{ratio:>10.2f}")
    print(f"added p50 at c=1: {proxied['c1_p50_ms'] - direct['c1_p50_ms']:.2f} ms")
    print(
        f"idle sessions: {memory['proxy_kib_per_idle_session']:.0f} KiB of proxy memory each "
        f"(+ {memory['upstream_process_kib_each'] / 1024:.0f} MiB RSS for each session's own upstream process)"
    )
    if arguments.json is not None:
        arguments.json.write_text(json.dumps({"direct": direct, "proxied": proxied, "memory": memory}, indent=2))


if __name__ == "__main__":
    anyio.run(main)
