"""The SDK's cost per call: `Session.use_tool` embedded and remote, against MCP clients doing the same call.

    .venv/bin/python bench/sdk_overhead.py [--calls 1000]

Every row calls the echo tool of bench/echo_server.py (a stdio upstream) in one named session, sequentially:

- stdio direct: the MCP SDK's client on the echo server's own stdio (the floor: no proxy at all);
- sdk embedded: `MCPStore.setup_store(config=...)`, the engine in this process, sync API;
- mcp client via proxy: the MCP SDK's client on a running proxy, session named by header;
- sdk remote: `MCPStore.setup_store(url=...)` against that proxy, sync API.

All rows run in the same process and the same run, so compare the ratios. The sync SDK calls are made from a
worker thread, as a program without an event loop would make them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_overhead import ECHO_SERVER, ROOT, client, percentile, proxy_server, timed_calls

from mcpstore_proxy import MCPStore


def timed(call: Callable[[int], Any], calls: int) -> list[float]:
    call(-1)  # warm-up: starts the session's upstream
    latencies: list[float] = []
    for index in range(calls):
        started = time.perf_counter()
        call(index)
        latencies.append(time.perf_counter() - started)
    return latencies


def sdk_latencies(store: MCPStore, calls: int) -> list[float]:
    session = store.for_store().create_session("bench")
    try:
        return timed(lambda index: session.use_tool("echo", {"text": f"call {index}"}), calls)
    finally:
        session.close_session()
        store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    calls = parser.parse_args().calls
    workdir = ROOT / "bench" / "results"
    workdir.mkdir(exist_ok=True)
    rows: dict[str, list[float]] = {}

    parameters = StdioServerParameters(command=sys.executable, args=[str(ECHO_SERVER), "stdio"])
    async with Client(stdio_client(parameters), mode="legacy", cache=None) as direct:
        rows["stdio direct"] = await timed_calls(direct, calls)

    config = workdir / "bench-sdk.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "log_level": "WARNING",
                "mcpServers": {"bench": {"command": sys.executable, "args": [str(ECHO_SERVER), "stdio"], "prefix": ""}},
            }
        )
    )
    rows["sdk embedded"] = await anyio.to_thread.run_sync(sdk_latencies, MCPStore.setup_store(config=config), calls)

    async with proxy_server(workdir) as (url, _pid):
        async with client(url, {"X-MCPStore-Session": "bench-client"}) as proxied:
            rows["mcp client via proxy"] = await timed_calls(proxied, calls)
        store = await anyio.to_thread.run_sync(lambda: MCPStore.setup_store(url=url))
        rows["sdk remote"] = await anyio.to_thread.run_sync(sdk_latencies, store, calls)

    floor = statistics.median(rows["stdio direct"])
    print(f"{'path':<22}{'p50 ms':>10}{'p99 ms':>10}{'p50 / stdio direct':>20}")
    for name, latencies in rows.items():
        p50 = statistics.median(latencies)
        print(f"{name:<22}{p50 * 1000:>10.2f}{percentile(latencies, 0.99) * 1000:>10.2f}{p50 / floor:>20.2f}")


if __name__ == "__main__":
    anyio.run(main)
