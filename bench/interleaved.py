"""CPU per forwarded call and throughput of two targets, in alternating bursts while both run: steadier ratios on
a shared machine.

    .venv/bin/python bench/interleaved.py [--targets floor,mcpstore] [--rounds 8] [--calls 1000]
    .venv/bin/python bench/interleaved.py --builds /tmp/before,/tmp/after   # two checkouts of mcpstore-proxy

`bench/forwarding.py` measures each target once, one after another, so load from outside the run that comes and
goes between the two passes moves their ratio (by 30% and more on this machine). Here both targets run at once
(pinned to core 1, the load generator to core 0), each with one session at c=1 and 8 sessions at c=8 opened
once, and the bursts alternate: A then B, then B then A, for `--rounds` rounds. Each pair of bursts gives a
ratio (B's CPU per call over A's, from /proc/<pid>/stat, and B's calls per second over A's); the median of those
ratios is the figure. Prints a markdown table; `--json PATH` also writes the bursts. `--builds A,B` compares two
checkouts of this project instead (before and after a change): both run the `mcpstore` target (or `--target`),
each with `PYTHONPATH` set to its checkout. Each target's load is its own client (`Target.client`): a 2026-07-28
one for `mcpstore-modern`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forwarding_load import SESSIONS, call_batch
from forwarding_processes import pin_load_generator, running
from forwarding_targets import TARGETS
from proxy_overhead import cpu_seconds


async def _burst(pid: int, sessions: list[Client], calls: int) -> tuple[float, float]:
    """CPU ms per call of `pid`, and calls per second, over `calls` calls spread over `sessions` at once."""
    each = max(1, calls // len(sessions))
    before = cpu_seconds(pid)
    started = time.perf_counter()
    ignored: list[float] = []
    async with anyio.create_task_group() as workers:
        for index, session in enumerate(sessions):
            workers.start_soon(call_batch, session, each, f"burst/{index}", ignored)
    seconds = time.perf_counter() - started
    return (cpu_seconds(pid) - before) / (each * len(sessions)) * 1000, each * len(sessions) / seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--targets", default="floor,mcpstore", help="two targets: the reference, then the one compared")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1000, help="calls per burst (c=1), and per burst at c=8")
    parser.add_argument("--builds", help="two checkouts of mcpstore-proxy to compare, A,B (instead of --targets)")
    parser.add_argument("--target", default="mcpstore", help="with --builds: the target both run (default mcpstore)")
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    builds: list[str] = arguments.builds.split(",") if arguments.builds else []
    if builds:
        if len(builds) != 2 or not all((Path(build) / "mcpstore_proxy").is_dir() for build in builds):
            raise SystemExit("--builds takes two checkouts of mcpstore-proxy, A,B")
        names = builds
    else:
        names = arguments.targets.split(",")
        if len(names) != 2 or any(name not in TARGETS for name in names):
            raise SystemExit(f"--targets takes two of: {', '.join(TARGETS)}")
    pin = pin_load_generator()
    bursts: dict[str, list[dict[str, dict[str, float]]]] = {"c1": [], "c8": []}
    """Per pair of bursts: each name's CPU ms per call ("cpu_ms") and calls per second ("calls_per_s")."""
    with tempfile.TemporaryDirectory(prefix="mcpstore-interleaved-") as scratch:
        async with AsyncExitStack() as stack:
            pids: list[int] = []
            sessions: dict[str, list[list[Client]]] = {"c1": [], "c8": []}
            for index, name in enumerate(names):
                workdir = Path(scratch) / str(index)
                workdir.mkdir()
                if builds:
                    os.environ["PYTHONPATH"] = name  # inherited by the proxy started next
                target = TARGETS[arguments.target if builds else name]
                launch, pid, _ = await stack.enter_async_context(running(target, workdir, pin, False))
                pids.append(pid)
                opened = [await stack.enter_async_context(target.client(launch.url, i)) for i in range(1 + SESSIONS)]
                for session in opened:
                    await session.call_tool("echo", {"text": "warm-up"})
                sessions["c1"].append(opened[:1])
                sessions["c8"].append(opened[1:])
            for mode in ("c1", "c8"):
                await _burst(pids[0], sessions[mode][0], arguments.calls // 4)  # warm both paths once more
                await _burst(pids[1], sessions[mode][1], arguments.calls // 4)
                for round_index in range(arguments.rounds):
                    order = (0, 1) if round_index % 2 == 0 else (1, 0)
                    measured = [(0.0, 0.0), (0.0, 0.0)]
                    for index in order:
                        measured[index] = await _burst(pids[index], sessions[mode][index], arguments.calls)
                    bursts[mode].append(
                        {
                            "cpu_ms": {name: cpu for name, (cpu, _) in zip(names, measured, strict=True)},
                            "calls_per_s": {name: speed for name, (_, speed) in zip(names, measured, strict=True)},
                        }
                    )
    first, second = names
    rows: list[str] = [
        f"| mode | bursts | {first} CPU ms per call (median) | {second} (median) | CPU ratio per pair: median "
        f"(min, max) | {first} calls/s (median) | {second} (median) | throughput ratio per pair: median (min, max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, pairs in bursts.items():
        cells: list[str] = []
        for figure, digits in (("cpu_ms", 3), ("calls_per_s", 0)):
            measured_pairs = [pair[figure] for pair in pairs if pair[figure][first] > 0]
            ratios = [pair[second] / pair[first] for pair in measured_pairs]
            if not ratios:  # each burst too short for a clock tick (10 ms) of the first target's CPU
                cells += ["—", "—", f"no pair measured: raise --calls (now {arguments.calls})"]
                continue
            cells += [
                f"{statistics.median(p[first] for p in measured_pairs):.{digits}f}",
                f"{statistics.median(p[second] for p in measured_pairs):.{digits}f}",
                f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}, {max(ratios):.2f})",
            ]
        rows.append(
            f"| {'c=1' if mode == 'c1' else 'c=8'} | {len(pairs)} x {arguments.calls} calls | {' | '.join(cells)} |"
        )
    print("\n".join(rows))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps({"targets": names, "bursts": bursts, "table": "\n".join(rows)}, indent=2))


if __name__ == "__main__":
    anyio.run(main)
