"""What the proxy costs a client whose transport carries one message at a time (the message lane's clients, see
`mcpstore_proxy/lane_messages.py`): a stdio client (`mcpstore-proxy stdio`, as Claude Desktop runs it) and a legacy
HTTP+SSE client (`GET /sse`); proxy CPU per request and latency, for a small call, a 1 MB result and a listing of
1,000 tools, for a client of each era.

    .venv/bin/python bench/message_clients.py [--transports stdio,sse] [--calls 1000] [--listings 50]
    .venv/bin/python bench/message_clients.py --builds /tmp/before,/tmp/after   # two checkouts of mcpstore-proxy

The client is the SDK's own `Client`: over stdio in the handshake era (`legacy`, as Claude Desktop speaks) and in
2026-07-28 (`auto`, the Python SDK's default); over legacy SSE (`sse_client`) in the handshake era, the only one
that transport carries. The proxy runs pinned to core 1 with its upstreams, the client on core 0. The upstream
is bench/echo_server.py for calls, and 50 of bench/many_tools_server.py (20 tools each) for listings. CPU per
request is the proxy's own (/proc/<pid>/stat, its upstreams excluded), which machine noise barely moves; latency
is what the client waits, its own parsing included (a 1,000-tool listing is ~400 KB of JSON validated by the SDK's
models: most of its wait). With `--builds`, each build is a checkout of this project run with `PYTHONPATH` set to
it; rows alternate between the builds. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx2
import yaml
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forwarding_processes import SUT_CORE
from proxy_overhead import ECHO_SERVER, cpu_seconds, free_port, percentile
from scale import many_tools_config

ROOT = Path(__file__).resolve().parent.parent
_LOAD_CORE = 0
_MB_TEXT = "x" * 1_000_000
_MB_CALLS = 30
_WARM_UP = 10


def _echo_config(workdir: Path) -> Path:
    config = workdir / "echo.yaml"
    servers = {"bench": {"command": sys.executable, "args": [str(ECHO_SERVER), "stdio"], "prefix": ""}}
    config.write_text(yaml.safe_dump({"log_level": "WARNING", "mcpServers": servers}))
    return config


def _parameters(build: Path, config: Path, pid_file: Path) -> StdioServerParameters:
    """The proxy over `config`, from the checkout `build`, pinned; it writes its pid to `pid_file`."""
    command = f'echo $$ > "{pid_file}"; exec taskset -c {SUT_CORE} "{sys.executable}" -m mcpstore_proxy stdio'
    return StdioServerParameters(
        command="sh",
        args=["-c", f'{command} --config "{config}"'],
        cwd=str(build),
        env={**os.environ, "PYTHONPATH": str(build)},
    )


@asynccontextmanager
async def _client(build: Path, config: Path, transport: str, mode: str) -> AsyncGenerator[tuple[Client, int]]:
    """A client of `mode` over `transport` to the proxy over `config` from the checkout `build`, and the proxy's pid."""
    if transport == "stdio":
        with tempfile.TemporaryDirectory(prefix="mcpstore-stdio-bench-") as scratch:
            pid_file = Path(scratch) / "pid"
            async with Client(stdio_client(_parameters(build, config, pid_file)), mode=mode) as client:
                yield client, int(pid_file.read_text())
        return
    port = free_port()
    argv = ["taskset", "-c", str(SUT_CORE), sys.executable, "-m", "mcpstore_proxy", "serve", "--config", str(config)]
    environment = {**os.environ, "PYTHONPATH": str(build)}
    process = await anyio.open_process([*argv, "--port", str(port)], cwd=build, env=environment)
    try:
        async with httpx2.AsyncClient(timeout=5) as http:
            with anyio.fail_after(120):
                while True:
                    with suppress(httpx2.TransportError):
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                            break
                    await anyio.sleep(0.2)
        async with Client(sse_client(f"http://127.0.0.1:{port}/sse"), mode=mode) as client:
            yield client, process.pid
    finally:
        process.terminate()
        with anyio.move_on_after(30):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


async def _measure(
    build: Path,
    config: Path,
    transport: str,
    tools: int,
    mode: str,
    requests: int,
    make: Callable[[Client], Awaitable[Any]],
) -> dict[str, float]:
    """`requests` requests from a client of `mode` to a proxy over `config`, once its `tools` tools are listed."""
    async with _client(build, config, transport, mode) as (client, pid):
        with anyio.fail_after(600):  # the listing's fifty upstreams may take a while to start on one core
            while len((await client.list_tools()).tools) < tools:  # noqa: ASYNC110  # nothing to wait on but listing
                await anyio.sleep(0.5)
        for _ in range(_WARM_UP):
            await make(client)
        latencies: list[float] = []
        cpu_before = cpu_seconds(pid)
        for _ in range(requests):
            started = time.perf_counter()
            await make(client)
            latencies.append(time.perf_counter() - started)
        cpu = cpu_seconds(pid) - cpu_before
    return {
        "cpu_ms": 1000 * cpu / requests,
        "p50_ms": 1000 * statistics.median(latencies),
        "p90_ms": 1000 * percentile(latencies, 0.9),
    }


def _small_call(client: Client) -> Awaitable[Any]:
    return client.call_tool("echo", {"text": "hello"})


def _mb_call(client: Client) -> Awaitable[Any]:
    return client.call_tool("echo", {"text": _MB_TEXT})


def _listing(client: Client) -> Awaitable[Any]:
    return client.list_tools()


async def run(builds: list[Path], transports: list[str], calls: int, listings: int) -> list[dict[str, Any]]:
    os.sched_setaffinity(0, {_LOAD_CORE})
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mcpstore-stdio-bench-") as workdir:
        echo = _echo_config(Path(workdir))
        many = many_tools_config(Path(workdir), 50, 20)
        cases = [
            ("tools/call, small", echo, 1, calls, _small_call),
            ("tools/call, 1 MB result", echo, 1, _MB_CALLS, _mb_call),
            ("tools/list, 1,000 tools", many, 1000, listings, _listing),
        ]
        for what, config, tools, requests, make in cases:
            for transport in transports:
                for mode in _MODES[transport]:
                    for build in builds:
                        measured = await _measure(build, config, transport, tools, mode, requests, make)
                        row = {"request": what, "transport": transport, "era": _ERAS[mode], "build": str(build)}
                        rows.append({**row, **measured})
                        print(f"measured {rows[-1]}", file=sys.stderr)
    return rows


_ERAS = {"legacy": "2025-11-25 (handshake)", "auto": "2026-07-28"}
_MODES = {"stdio": ("legacy", "auto"), "sse": ("legacy",)}
_TRANSPORTS = {"stdio": "stdio", "sse": "legacy SSE"}


def table(rows: list[dict[str, Any]], builds: list[Path]) -> str:
    lines = [
        "| request | transport | client era | build | proxy CPU ms per request | p50 ms | p90 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        build = row["build"] if len(builds) > 1 else "this checkout"
        lines.append(
            f"| {row['request']} | {_TRANSPORTS[row['transport']]} | {row['era']} | {build} | {row['cpu_ms']:.2f} |"
            f" {row['p50_ms']:.2f} | {row['p90_ms']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="small calls per row")
    parser.add_argument("--listings", type=int, default=50, help="listings per row")
    parser.add_argument("--builds", help="checkouts of mcpstore-proxy to compare, A,B (default: this one)")
    parser.add_argument("--transports", default="stdio,sse", help="from: stdio, sse (legacy HTTP+SSE)")
    arguments = parser.parse_args()
    builds = [Path(build).resolve() for build in arguments.builds.split(",")] if arguments.builds else [ROOT]
    transports = arguments.transports.split(",")
    unknown = set(transports) - set(_MODES)
    if unknown:
        parser.error(f"unknown transports {sorted(unknown)}: choose from {sorted(_MODES)}")
    rows = anyio.run(run, builds, transports, arguments.calls, arguments.listings)
    print(table(rows, builds))


if __name__ == "__main__":
    main()
