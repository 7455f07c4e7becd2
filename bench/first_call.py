"""First-call latency of a new session, without and with a warm pool (`warm_sessions`).

    .venv/bin/python bench/first_call.py [--sessions 20] [--warm 1]

Runs mcpstore-proxy as a process (`serve`, Streamable HTTP) with bench/echo_server.py as an isolated stdio
upstream, once with `warm_sessions: 0` and once with `warm_sessions: --warm`. Sessions are opened one after
another; each client initializes, then its first `echo` call is timed (the call that, cold, starts the upstream
process), then it ends its session. With a warm pool, each session is opened only once `/admin/status` says the
pool has refilled, so every first call meets a ready spare: the figure is the steady state the pool is for, not a
burst of new sessions faster than spares start. Prints p50 / p90 / max per mode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx2
import yaml
from forwarding_processes import stop
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from proxy_overhead import ECHO_SERVER, ROOT, free_port

LAUNCH_PREFIX: list[str] = []  # e.g. ["taskset", "-c", "1"]: bench/scale.py pins the proxy as forwarding.py does


@asynccontextmanager
async def proxy(workdir: Path, warm_sessions: int) -> AsyncGenerator[int]:
    port = free_port()
    entry: dict[str, object] = {"command": sys.executable, "args": [str(ECHO_SERVER), "stdio"], "prefix": ""}
    if warm_sessions:
        entry["warm_sessions"] = warm_sessions
    config = workdir / f"first-call-{warm_sessions}.yaml"
    config.write_text(yaml.safe_dump({"log_level": "WARNING", "mcpServers": {"bench": entry}}))
    process = await anyio.open_process(
        [*LAUNCH_PREFIX, sys.executable, "-m", "mcpstore_proxy", "serve", "--config", str(config), "--port", str(port)],
        cwd=ROOT,
        stdout=None,
        stderr=None,
    )
    try:
        await pool_ready(port, warm_sessions)  # also waits for the proxy to serve and its catalog session
        yield port
    finally:
        await stop(process)


async def pool_ready(port: int, target: int) -> None:
    """Wait until the upstream is ready and its warm pool (if any) holds `target` ready spares."""
    with anyio.fail_after(60):
        async with httpx2.AsyncClient() as http:
            while True:
                upstream: dict[str, Any] = {}
                with suppress(httpx2.TransportError, KeyError, ValueError):
                    upstream = (await http.get(f"http://127.0.0.1:{port}/admin/status")).json()["upstreams"]["bench"]
                pool: dict[str, int] = upstream.get("warm_pool") or {"ready": 0, "target": 0}
                if upstream.get("state") == "ready" and pool["ready"] >= target:
                    return
                await anyio.sleep(0.02)


async def first_call_seconds(port: int) -> float:
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=300.0)) as http,
        Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http), mode="legacy") as client,
    ):
        started = time.perf_counter()
        await client.call_tool("echo", {"text": "first"})
        return time.perf_counter() - started


async def run_mode(workdir: Path, warm_sessions: int, sessions: int) -> list[float]:
    latencies: list[float] = []
    async with proxy(workdir, warm_sessions) as port:
        await first_call_seconds(port)  # warm the proxy's own imports and code paths; not counted
        for _ in range(sessions):
            await pool_ready(port, warm_sessions)
            latencies.append(await first_call_seconds(port))
    return latencies


def summary(label: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"{label:<22} n={len(ordered):<3} p50 {statistics.median(ordered) * 1000:8.1f} ms   "
        f"p90 {p90 * 1000:8.1f} ms   max {ordered[-1] * 1000:8.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20, help="sessions opened one after another, per mode")
    parser.add_argument("--warm", type=int, default=1, help="warm_sessions for the warm run")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        cold = await run_mode(Path(directory), 0, arguments.sessions)
        warm = await run_mode(Path(directory), arguments.warm, arguments.sessions)
    print("first call of a new session (echo upstream over stdio, sessions opened one after another)")
    print(summary("no warm pool", cold))
    print(summary(f"warm_sessions: {arguments.warm}", warm))


if __name__ == "__main__":
    anyio.run(main)
