"""Where a forwarded call's time goes, by py-spy: the system under test's Python frames, sampled while it serves.

    .venv/bin/python bench/py_spy_profile.py [--target mcpstore] [--seconds 20] [--rate 1000] [--native] [--no-install]

py-spy is installed by this script in its own venv (bench/.venvs/py-spy, pinned), as the peers are. The target
starts as in bench/forwarding.py (pinned to core 1 with its upstreams, the load on core 0), one client calls
`echo` at c=1 in a loop, and py-spy samples the target's process for `--seconds`. Prints the share of samples
of the frames that were running (self) and of those on the stack (inclusive), in two markdown tables.

py-spy counts a thread as busy while it is runnable, not only while it runs: a write to the upstream's stdin wakes
the upstream on the same core, which then runs before the writer returns, so those samples are mostly the
upstream's time on the proxy's clock. They are counted apart ("runnable in a pipe write"), and the shares below
are of the rest. Compare two builds with `PYTHONPATH=<checkout>`; for CPU per call use bench/interleaved.py.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from subprocess import CompletedProcess

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forwarding_load import call_batch
from forwarding_processes import pin_load_generator, running
from forwarding_targets import TARGETS, ensure_venv

PY_SPY_REQUIREMENTS = ["py-spy==0.4.3"]
_LINE = re.compile(r":\d+\)$")
_PIPE_WRITES = (
    "StreamWriter.write (asyncio/streams.py",
    "WritePipe.write (mcpstore_proxy/raw_pipes.py",  # a stdio upstream's stdin since 489f151
)


def _frame(entry: str) -> str:
    """A stack entry without its line number."""
    return _LINE.sub(")", entry)


def tally(raw: str) -> tuple[int, int, collections.Counter[str], collections.Counter[str]]:
    """From py-spy's raw output: (samples, samples runnable in a pipe write, self counts, inclusive counts)."""
    samples = in_writes = 0
    running_frames: collections.Counter[str] = collections.Counter()
    on_stack: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(entry) for entry in stack.split(";")]
        samples += int(count)
        if frames[-1].startswith(_PIPE_WRITES):
            in_writes += int(count)
            continue
        running_frames[frames[-1]] += int(count)
        for frame in set(frames):
            on_stack[frame] += int(count)
    return samples, in_writes, running_frames, on_stack


def report(raw: str, top: int) -> str:
    samples, in_writes, running_frames, on_stack = tally(raw)
    counted = samples - in_writes
    if not counted:
        return "no samples (is the target running Python? try a longer --seconds)"
    lines = [
        f"{samples} samples; {in_writes} ({in_writes / samples:.0%}) runnable in a pipe write, left out; "
        f"shares of the other {counted}:",
        "",
        "| self | frame |",
        "|---|---|",
        *(f"| {count / counted:.1%} | `{frame}` |" for frame, count in running_frames.most_common(top)),
        "",
        "| inclusive | frame |",
        "|---|---|",
        *(f"| {count / counted:.1%} | `{frame}` |" for frame, count in on_stack.most_common(top)),
    ]
    return "\n".join(lines)


async def sample(target_name: str, seconds: int, rate: int, native: bool, install: bool) -> str:
    py_spy = ensure_venv("py-spy", PY_SPY_REQUIREMENTS, install).parent / "py-spy"
    pin = pin_load_generator()
    target = TARGETS[target_name]
    with tempfile.TemporaryDirectory(prefix="mcpstore-profile-") as scratch:
        out = Path(scratch) / "raw.txt"
        async with AsyncExitStack() as stack:
            launch, pid, _ = await stack.enter_async_context(running(target, Path(scratch), pin, install))
            session = await stack.enter_async_context(target.client(launch.url, 0))
            await call_batch(session, 100, "warm-up", [])
            sampled = anyio.Event()
            done: CompletedProcess[bytes] | None = None

            async def load() -> None:
                while not sampled.is_set():
                    await call_batch(session, 50, "profiled", [])

            argv = [str(py_spy), "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(seconds)]
            argv += ["--format", "raw", "--output", str(out), "--nonblocking", *(["--native"] if native else [])]
            async with anyio.create_task_group() as group:
                group.start_soon(load)
                try:
                    done = await anyio.run_process(argv, check=False)
                finally:
                    sampled.set()
            assert done is not None
            if done.returncode != 0 or not out.exists():
                message = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
                raise SystemExit(f"py-spy failed ({done.returncode}): {message[-1] if message else 'no output'}")
        return out.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--target", default="mcpstore", choices=sorted(TARGETS))
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=1000, help="samples per second")
    parser.add_argument("--top", type=int, default=25, help="frames in each table")
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw output here")
    parser.add_argument("--no-install", action="store_true", help="use bench/.venvs/py-spy as it is")
    arguments = parser.parse_args()
    raw = anyio.run(
        sample, arguments.target, arguments.seconds, arguments.rate, arguments.native, not arguments.no_install
    )
    if arguments.raw is not None:
        arguments.raw.write_text(raw)
    print(report(raw, arguments.top))


if __name__ == "__main__":
    main()
