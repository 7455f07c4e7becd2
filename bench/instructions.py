"""Instructions per forwarded call (callgrind): the one cost figure this noisy machine reproduces to within 1%.

    .venv/bin/python bench/instructions.py [--targets floor,mcpstore,mcpstore-modern] [--calls 300]
    .venv/bin/python bench/instructions.py --builds /tmp/before,/tmp/after   # two checkouts of mcpstore-proxy

CPU time per call moves by 30% and more between runs on a shared 2-core machine, which hides any change smaller
than that unless `bench/interleaved.py` runs long. Here each target runs under valgrind's callgrind with its
instrumentation off, is warmed up, and counts only the user-space instructions of one burst of calls at c=1 (the
kernel's share, system calls, is not counted: it is about the same for every target, a quarter of the floor's CPU).
Repeated runs agree to within about 0.5%, so a 1% change shows. Each target's load is its own client
(`Target.client`); the upstreams run natively. Needs valgrind (`apt-get install valgrind`). The proxy's timers run
30 to 50 times late under valgrind, so work that a timer starts only for slow calls (a hang-up watch after 50 ms)
may be counted here that a real call never does; compare builds, and targets, in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forwarding_load import call_batch
from forwarding_processes import running
from forwarding_targets import TARGETS, Launch, Target

_WARM_UP_CALLS = 30
_TOTALS = re.compile(r"^([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", re.MULTILINE)


def _under_callgrind(target: Target, out: Path) -> Target:
    """`target`, started under callgrind with its instrumentation off (switched on for the burst)."""

    def prepare(workdir: Path, port: int, install: bool) -> Launch:
        launch = target.prepare(workdir, port, install)
        callgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        launch.argv = [*callgrind, *launch.argv]
        return launch

    return dataclasses.replace(target, prepare=prepare)


def _instructions(out: Path) -> int:
    """The instructions of the burst: the largest total among the dumps (the one at exit counts none)."""
    totals: list[int] = []
    for dump in out.parent.glob(f"{out.name}*"):
        report = subprocess.run(["callgrind_annotate", str(dump)], capture_output=True, text=True, check=False)
        found = _TOTALS.search(report.stdout)
        if found:
            totals.append(int(found.group(1).replace(",", "")))
    if not totals:
        raise RuntimeError(f"callgrind wrote no profile at {out}")
    return max(totals)


def _callgrind_control(*arguments: str) -> None:
    subprocess.run(["callgrind_control", *arguments], capture_output=True, check=True)


async def instructions_per_call(target: Target, calls: int, scratch: Path) -> float:
    out = scratch / "callgrind.out"
    async with AsyncExitStack() as stack:
        launch, pid, _ = await stack.enter_async_context(running(_under_callgrind(target, out), scratch, False, False))
        session = await stack.enter_async_context(target.client(launch.url, 0))
        await call_batch(session, _WARM_UP_CALLS, "warm-up", [])
        _callgrind_control("--instr=on", str(pid))
        await call_batch(session, calls, "burst", [])
        _callgrind_control("--instr=off", str(pid))
        _callgrind_control("--dump", str(pid))
    return _instructions(out) / calls


def _keep(scratch: Path, folder: Path) -> None:
    """Copy a run's callgrind dumps into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for dump in scratch.glob("callgrind.out*"):
        shutil.copy(dump, folder)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--targets", default="floor,mcpstore,mcpstore-modern")
    parser.add_argument("--builds", help="two checkouts of mcpstore-proxy to compare, A,B (instead of --targets)")
    parser.add_argument("--target", default="mcpstore", help="with --builds: the target both run (default mcpstore)")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--keep", type=Path, help="a folder to keep each run's callgrind dumps in (callgrind_annotate)")
    arguments = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench/instructions.py needs valgrind: apt-get install valgrind")
    runs: list[tuple[str, str, str | None]] = []  # (label, target, build)
    if arguments.builds:
        builds = arguments.builds.split(",")
        if len(builds) != 2 or not all((Path(build) / "mcpstore_proxy").is_dir() for build in builds):
            raise SystemExit("--builds takes two checkouts of mcpstore-proxy, A,B")
        runs = [(build, arguments.target, build) for build in builds]
    else:
        names = arguments.targets.split(",")
        unknown = [name for name in names if name not in TARGETS]
        if unknown:
            raise SystemExit(f"unknown targets {unknown}; --targets takes some of: {', '.join(TARGETS)}")
        runs = [(name, name, None) for name in names]
    print(f"| target | instructions per call (c=1, {arguments.calls} calls) | x first |")
    print("|---|---|---|")
    first = 0.0
    for label, name, build in runs:
        with tempfile.TemporaryDirectory(prefix="mcpstore-instructions-") as scratch:
            target = TARGETS[name]
            if build is None:
                per_call = await instructions_per_call(target, arguments.calls, Path(scratch))
            else:
                previous = os.environ.get("PYTHONPATH")
                os.environ["PYTHONPATH"] = build  # inherited by the proxy started next
                try:
                    per_call = await instructions_per_call(target, arguments.calls, Path(scratch))
                finally:
                    os.environ.pop("PYTHONPATH")
                    if previous is not None:
                        os.environ["PYTHONPATH"] = previous
            if arguments.keep is not None:
                _keep(Path(scratch), arguments.keep / re.sub(r"[^\w.-]+", "_", label.strip("/")))
        first = first or per_call
        print(f"| {label} | {per_call:,.0f} | {per_call / first:.2f}x |", flush=True)


if __name__ == "__main__":
    anyio.run(main)
