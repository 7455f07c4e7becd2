"""Where an idle session's memory goes, by tracemalloc: the Python objects the system under test holds per session.

    .venv/bin/python bench/memory_profile.py [--target mcpstore] [--sessions 30] [--first 5] [--frames 30] [--top 25]

`bench/forwarding.py --sections memory` measures RSS per idle session; this says what it is made of. The target
(mcpstore-proxy, with a handshake-era client or `mcpstore-modern`'s 2026-07-28 one) starts as in
bench/forwarding.py, but under `python -X tracemalloc=<frames>`, with a handler that writes a snapshot on SIGUSR1.
Sessions are opened one after another (each initialized, one `echo` call made, then left idle); a snapshot is
taken after `--first` sessions and another after `--sessions`, and what grew between them, divided by the sessions
opened in between, is grouped by its owner: the most recent frame of the proxy, the SDK, uvicorn or Starlette on
the stack where it was allocated (else the allocation site itself). Prints two markdown tables: KiB per session by
owner module, and the largest owner lines with their allocation sites.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forwarding_processes import running, upstream_processes
from forwarding_targets import TARGETS, Launch, Target
from proxy_overhead import ROOT
from scale import SETTLE_SECONDS

Frame = tuple[str, int]
"""A stack frame as (file name, line number)."""

_OWNERS = ("mcpstore_proxy/", "mcp/", "uvicorn/", "starlette/")
_CHECKOUT = f"{ROOT}/"
_INSTALLED = re.compile(r"^.*(?:/site-packages/|/lib/python3\.\d+/)")
_SNAPSHOT_SECONDS = 60.0
_TRACED = """\
import gc, itertools, os, signal, sys, tracemalloc
taken = itertools.count()
def snapshot(*_):
    gc.collect()
    path = f"{prefix}.{next(taken)}"
    tracemalloc.take_snapshot().dump(path + ".part")
    os.replace(path + ".part", path)  # whole when it appears
signal.signal(signal.SIGUSR1, snapshot)
from mcpstore_proxy.cli import main
sys.argv = ["mcpstore-proxy", *sys.argv[1:]]
main()
"""


def short(filename: str) -> str:
    """A file name from its package on (`mcpstore_proxy/lane.py`, `mcp/server/...`, `asyncio/locks.py`), or as it
    is."""
    installed = _INSTALLED.sub("", filename, count=1)
    if installed != filename:
        return installed  # a package's (the venv may be inside the checkout) or the standard library's
    return filename.removeprefix(_CHECKOUT)


def owner(frames: Sequence[Frame]) -> Frame:
    """The most recent frame of the proxy, the SDK, uvicorn or Starlette (frames most recent first), else the
    allocation site itself."""
    for frame in frames:
        if any(part in frame[0] for part in _OWNERS):
            return frame
    return frames[0]


def grouped(grown: Iterable[tuple[Sequence[Frame], int]], sessions: int) -> tuple[dict[str, float], dict[str, float]]:
    """KiB per session by owner module, and by owner line with its allocation site, from what grew (each with its
    frames, most recent first, and its size in bytes)."""
    modules: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    for frames, size in grown:
        if size <= 0 or not frames:
            continue
        name, line = owner(frames)
        modules[short(name)] += size
        site = f"{short(frames[0][0])}:{frames[0][1]}"
        lines[f"`{short(name)}:{line}` ({site})"] += size
    per_session = 1024 * sessions
    return (
        {module: size / per_session for module, size in modules.most_common()},
        {line: size / per_session for line, size in lines.most_common()},
    )


def report(by_module: dict[str, float], by_line: dict[str, float], top: int) -> str:
    if not by_module:
        return "nothing grew between the two snapshots"
    total = sum(by_module.values())
    out = [f"{total:.1f} KiB of Python objects per idle session\n", "| KiB per session | owner |", "|---|---|"]
    out += [f"| {kib:.2f} | `{module}` |" for module, kib in list(by_module.items())[:top]]
    out += ["", "| KiB per session | owner line (allocation site) |", "|---|---|"]
    out += [f"| {kib:.2f} | {line} |" for line, kib in list(by_line.items())[:top]]
    return "\n".join(out)


def grown_between(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[tuple[list[Frame], int]]:
    return [
        ([(frame.filename, frame.lineno) for frame in reversed(stat.traceback)], stat.size_diff)
        for stat in after.compare_to(before, "traceback")
    ]


def _traced(prepare: Callable[[Path, int, bool], Launch], prefix: Path, frames: int) -> Callable[..., Launch]:
    def traced(workdir: Path, port: int, install: bool) -> Launch:
        launch = prepare(workdir, port, install)
        code = f"prefix = {str(prefix)!r}\n" + _TRACED
        argv = [sys.executable, "-X", f"tracemalloc={frames}", "-c", code, *launch.argv[1:]]
        return dataclasses.replace(launch, argv=argv)

    return traced


async def _snapshot(pid: int, path: Path) -> tracemalloc.Snapshot:
    """Have the target write a snapshot to `path`, and read it once it is whole."""
    await anyio.sleep(SETTLE_SECONDS)  # the sessions' standing streams open after their calls: measurement only
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + _SNAPSHOT_SECONDS
    while not await anyio.Path(path).exists():  # written under another name, then renamed: never half-written
        if time.monotonic() > deadline:
            raise TimeoutError(f"no snapshot at {path} after {_SNAPSHOT_SECONDS:g} s")
        await anyio.sleep(0.2)
    return tracemalloc.Snapshot.load(str(path))


async def profile(target: Target, sessions: int, first: int, frames: int, top: int) -> str:
    with tempfile.TemporaryDirectory(prefix="memory-profile-") as scratch:
        workdir = Path(scratch)
        prefix = workdir / "snapshot"
        traced = dataclasses.replace(target, prepare=_traced(target.prepare, prefix, frames))
        async with running(traced, workdir, False, False) as (launch, pid, seen_upstreams):
            async with target.client(launch.url, sessions) as warm:  # the proxy's code paths, warmed first
                await warm.call_tool("echo", {"text": "warm-up"})
            async with AsyncExitStack() as stack:
                before = None
                for index in range(sessions):
                    client = await stack.enter_async_context(target.client(launch.url, index))
                    await client.call_tool("echo", {"text": f"idle {index}"})
                    if index + 1 == first:
                        before = await _snapshot(pid, Path(f"{prefix}.0"))
                after = await _snapshot(pid, Path(f"{prefix}.1"))
                seen_upstreams.extend(upstream_processes(pid))
    assert before is not None
    by_module, by_line = grouped(grown_between(before, after), sessions - first)
    return f"{target.label}, {sessions - first} sessions between the snapshots:\n\n" + report(by_module, by_line, top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="mcpstore", choices=["mcpstore", "mcpstore-modern"])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--first", type=int, default=5, help="sessions opened before the first snapshot")
    parser.add_argument("--frames", type=int, default=30, help="frames tracemalloc keeps per allocation")
    parser.add_argument("--top", type=int, default=25, help="rows in each table")
    arguments = parser.parse_args()
    if not 0 < arguments.first < arguments.sessions:
        parser.error("--first must be at least 1 and less than --sessions")
    target = TARGETS[arguments.target]
    print(anyio.run(profile, target, arguments.sessions, arguments.first, arguments.frames, arguments.top))


if __name__ == "__main__":
    main()
