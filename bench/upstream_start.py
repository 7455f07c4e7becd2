"""How long starting a stdio upstream stops the event loop, on uvloop as `serve` runs it.

    .venv/bin/python bench/upstream_start.py [--starts 20] [--ballast-mb 0]

Every client's calls wait while the loop is stopped, so this is paid by everyone at every new session and every
warm spare. Compares the SDK's start (`anyio.open_process`, which uvloop does with `fork()`, copying the page
tables of the whole proxy) with the proxy's (`upstream_process.start_process`: `subprocess`, which uses `vfork()`),
in a process that has imported the proxy's app (its heap, as `serve` has it, plus `--ballast-mb` of objects to
stand for a proxy holding many sessions). A task that only yields measures the longest stop of the loop during
each start. Prints p50 / max of the start's time and of the loop's longest stop.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import mcp.client.stdio
import uvloop
from anyio.abc import Process
from mcp.client.stdio import StdioServerParameters

from mcpstore_proxy.compat import spawn_stdio_server, stop_stdio_server

_COMMAND = StdioServerParameters(command=sys.executable, args=["-c", "import sys; sys.stdin.read()"])


async def _sdk_start() -> Process:
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230  # /dev/null never blocks
        process = await mcp.client.stdio._create_platform_compatible_process(  # pyright: ignore[reportPrivateUsage]
            command=_COMMAND.command, args=_COMMAND.args, errlog=errlog
        )
    assert isinstance(process, Process)
    return process


async def _proxy_start() -> Process:
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230  # /dev/null never blocks
        return await spawn_stdio_server(_COMMAND, errlog)


async def _measure(start: Callable[[], Awaitable[Process]], starts: int) -> tuple[list[float], list[float]]:
    durations: list[float] = []
    stops: list[float] = []
    longest = 0.0
    done = False

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    watching = asyncio.ensure_future(ticker())
    for _ in range(starts):
        await asyncio.sleep(0.01)
        longest = 0.0
        began = time.perf_counter()
        process = await start()
        durations.append(time.perf_counter() - began)
        stops.append(longest)
        await stop_stdio_server(process)
    done = True
    await watching
    return durations, stops


def _line(label: str, values: list[float]) -> str:
    return f"| {label} | {statistics.median(values) * 1000:.2f} | {max(values) * 1000:.2f} |"


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--ballast-mb", type=int, default=0)
    arguments = parser.parse_args()
    importlib.import_module("mcpstore_proxy.app")  # the heap `serve` has
    ballast = [bytearray(1024) for _ in range(arguments.ballast_mb * 1024)]
    print(f"RSS {_rss_mib():.0f} MiB ({len(ballast)} KiB of ballast), {arguments.starts} starts each, uvloop")
    print("| start | ms p50 | ms max |")
    print("|---|---|---|")
    for label, start in (("SDK (uvloop's fork)", _sdk_start), ("proxy (subprocess, vfork)", _proxy_start)):
        durations, stops = await _measure(start, arguments.starts)
        print(_line(f"{label}: start", durations))
        print(_line(f"{label}: longest stop of the loop", stops))


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    uvloop.run(main())
