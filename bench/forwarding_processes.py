"""The processes of a bench/forwarding.py run: a system under test started (pinned to its core), watched through
/proc, and stopped by pid, with any upstream it left behind.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forwarding_targets import Launch, Target
from proxy_overhead import ECHO_SERVER, ROOT, free_port

SUT_CORE = 1


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        table[int(entry.name)] = (parent, command)
    return table


def upstream_processes(root: int) -> list[int]:
    """Descendants of `root` that run the echo server: the upstream processes a system under test started."""
    table = process_table()
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, command) in table.items():
            if ppid == parent:
                frontier.append(pid)
                if str(ECHO_SERVER) in command:
                    found.append(pid)
    return found


def log_tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[:300]


def stop_leftover(pid: int) -> None:
    """An upstream that its proxy left running: started by this run (we saw it as the proxy's child), so ours."""
    try:
        if str(ECHO_SERVER) in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
            os.kill(pid, 15)
    except (FileNotFoundError, ProcessLookupError):
        pass


def pin_load_generator() -> bool:
    """Pin this process (the load) to every core but the system under test's, where there is a core to spare and
    `taskset` to pin the system under test with (`pinned`); whether it did."""
    cores = os.sched_getaffinity(0)
    if len(cores) < 2 or shutil.which("taskset") is None:
        return False
    os.sched_setaffinity(0, cores - {SUT_CORE})
    return True


def pinned(argv: list[str], pin: bool) -> list[str]:
    return ["taskset", "-c", str(SUT_CORE), *argv] if pin else argv


async def wait_ready(process: anyio.abc.Process, url: str, log: Path) -> None:
    with anyio.fail_after(120):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"exited with {process.returncode}: {log_tail(log)}")
            try:
                async with httpx2.AsyncClient(timeout=5) as http:
                    await http.get(url)
                return
            except httpx2.TransportError:
                await anyio.sleep(0.1)


@asynccontextmanager
async def running(
    target: Target, workdir: Path, pin: bool, install: bool
) -> AsyncGenerator[tuple[Launch, int, list[int]]]:
    """Start the system under test; yield its launch, pid and a list that collects its upstream pids."""
    port = free_port()
    launch = target.prepare(workdir, port, install)
    log = workdir / f"{target.name}.log"
    seen_upstreams: list[int] = []
    async with AsyncExitStack() as stack:
        if launch.upstream_argv is not None:  # an HTTP upstream, on the same core as the system under test
            upstream_log = workdir / f"{target.name}-upstream.log"
            upstream = await stack.enter_async_context(started_process(launch.upstream_argv, upstream_log, pin))
            await wait_ready(upstream, launch.upstream_url, upstream_log)
        process = await stack.enter_async_context(started_process(launch.argv, log, pin))
        await wait_ready(process, launch.url.rsplit("/", 1)[0] + launch.ready_path, log)
        try:
            yield launch, process.pid, seen_upstreams
        finally:
            await stop(process)
            for pid in seen_upstreams:
                stop_leftover(pid)


@asynccontextmanager
async def started_process(argv: list[str], log: Path, pin: bool) -> AsyncGenerator[anyio.abc.Process]:
    """A process this run starts (pinned when asked), its output to `log`; stopped by its pid on the way out."""
    with log.open("wb") as sink:
        process = await anyio.open_process(pinned(argv, pin), cwd=ROOT, stdout=sink, stderr=sink)
    try:
        yield process
    finally:
        await stop(process)


async def stop(process: anyio.abc.Process) -> None:
    if process.returncode is None:
        process.terminate()
    try:
        with anyio.fail_after(30):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
