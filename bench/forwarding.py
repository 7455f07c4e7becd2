"""Forwarding cost, side by side in one run: mcpstore-proxy against direct, a floor relay and peer proxies.

    .venv/bin/python bench/forwarding.py [--quick] [--targets direct-sse,direct-json,floor,mcpstore,mcp-proxy,fastmcp]

Every target serves the `echo` tool of bench/echo_server.py over Streamable HTTP at /mcp:

- direct-sse, direct-json: the echo server's own SDK server (SSE responses; `json_response=True`);
- floor: bench/floor_relay.py, a bare isolating relay kept as a reference (never shipped);
- mcpstore: this repository's `mcpstore-proxy serve`, the echo server as an isolated stdio upstream;
- mcp-proxy, fastmcp: the peers, each installed by this script in its own venv under bench/.venvs/ (pinned).

Each system under test runs pinned to core 1 (with the upstreams it starts), the load generator to core 0. The load
generator is the MCP SDK client (`mcp.Client`, `streamable_http_client`, mode="legacy"), one session per worker:
N calls in one session (c=1: latency), then M calls spread over 8 sessions (c=8: throughput). "CPU ms per call" is
the utime+stime that the system under test's own process spends per call (its upstream children excluded; for
direct, the whole server), read from /proc/<pid>/stat around each phase. Ratios within one run are what matter.
Prints a markdown table and writes JSON (bench/results/forwarding.json unless --json says otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import yaml
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_overhead import ECHO_SERVER, ROOT, client, cpu_seconds, free_port, percentile

BENCH = ROOT / "bench"
VENVS = BENCH / ".venvs"
FLOOR_RELAY = BENCH / "floor_relay.py"
DEFAULT_JSON = BENCH / "results" / "forwarding.json"
UPSTREAM = [sys.executable, str(ECHO_SERVER), "stdio"]
SESSIONS = 8
SUT_CORE = 1
LOADGEN_CORE = 0

# Pinned installs, one venv each; the floor's is optional (it falls back to this venv's uvicorn defaults).
FLOOR_REQUIREMENTS = ["uvicorn==0.54.0", "httptools==0.9.0", "uvloop==0.23.0", "orjson==3.13.0"]
MCP_PROXY_REQUIREMENTS = ["mcp-proxy==0.13.*"]
FASTMCP_REQUIREMENTS = ["fastmcp==4.1.6"]

FASTMCP_LAUNCHER = """\
import sys
from fastmcp.client.transports import StdioTransport
from fastmcp.server.providers.proxy import FastMCPProxy, StatefulProxyClient

upstream = StatefulProxyClient(StdioTransport(command=sys.argv[2], args=sys.argv[3:]))
proxy = FastMCPProxy(client_factory=upstream.new_stateful, name="bench")
proxy.run(transport="http", host="127.0.0.1", port=int(sys.argv[1]), show_banner=False, log_level="warning")
"""


@dataclass
class Launch:
    argv: list[str]
    url: str
    ready_path: str = "/mcp"
    notes: list[str] = field(default_factory=list[str])
    version: str = ""
    upstream_argv: list[str] | None = None  # an HTTP upstream that this target needs running first (pinned with it)
    upstream_url: str = ""


@dataclass
class Target:
    name: str
    label: str
    direct: bool
    prepare: Callable[[Path, int, bool], Launch]
    upstream: str = "stdio"


# ---------------------------------------------------------------------------------------------------- venvs


def ensure_venv(name: str, requirements: list[str], install: bool) -> Path:
    """The python of bench/.venvs/NAME with exactly these pinned requirements, installed on first use."""
    home = VENVS / name
    python = home / "bin" / "python"
    marker = home / ".bench-requirements"
    wanted = "\n".join(requirements)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if not install:
        raise RuntimeError(f"{home.relative_to(ROOT)} is not installed (--no-install)")
    if home.exists():
        shutil.rmtree(home)
    VENVS.mkdir(parents=True, exist_ok=True)
    print(f"installing {' '.join(requirements)} into {home.relative_to(ROOT)} ...", file=sys.stderr, flush=True)
    steps = [[sys.executable, "-m", "venv", str(home)], [str(python), "-m", "pip", "install", "-q", *requirements]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            errors = [line for line in lines if "ERROR" in line] or lines[-1:] or [f"exit {done.returncode}"]
            raise RuntimeError(f"cannot install {' '.join(requirements)}: {errors[0].strip()[:200]}")
    marker.write_text(wanted)
    return python


def venv_version(python: Path, distribution: str) -> str:
    done = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({distribution!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


# ---------------------------------------------------------------------------------------------------- targets


def prepare_direct(json_response: bool) -> Callable[[Path, int, bool], Launch]:
    def prepare(workdir: Path, port: int, install: bool) -> Launch:
        framing = "json" if json_response else "sse"
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve-direct", framing, str(port)]
        return Launch(argv, f"http://127.0.0.1:{port}/mcp", version=f"mcp {venv_version(Path(sys.executable), 'mcp')}")

    return prepare


def prepare_floor(workdir: Path, port: int, install: bool) -> Launch:
    notes: list[str] = []
    try:
        python = ensure_venv("floor", FLOOR_REQUIREMENTS, install)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        python = Path(sys.executable)
        notes.append(f"uvicorn defaults from the project venv ({error})")
    argv = [str(python), str(FLOOR_RELAY), str(port), "--", *UPSTREAM]
    return Launch(argv, f"http://127.0.0.1:{port}/mcp", notes=notes)


def prepare_mcpstore(workdir: Path, port: int, install: bool) -> Launch:
    config = workdir / "mcpstore.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "log_level": "WARNING",
                "max_sessions_per_upstream": 256,
                "mcpServers": {"bench": {"command": UPSTREAM[0], "args": UPSTREAM[1:], "prefix": ""}},
            }
        )
    )
    executable = Path(sys.executable).parent / "mcpstore-proxy"
    argv = [str(executable), "serve", "--config", str(config), "--port", str(port)]
    version = f"mcpstore-proxy {venv_version(Path(sys.executable), 'mcpstore-proxy')}"
    return Launch(argv, f"http://127.0.0.1:{port}/mcp", ready_path="/healthz", version=version)


def prepare_mcpstore_http(workdir: Path, port: int, install: bool) -> Launch:
    """mcpstore-proxy with the echo server as an isolated Streamable HTTP upstream (its own process, SSE responses)."""
    upstream_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/mcp"
    config = workdir / "mcpstore-http.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "log_level": "WARNING",
                "max_sessions_per_upstream": 256,
                "mcpServers": {"bench": {"url": upstream_url, "prefix": ""}},
            }
        )
    )
    executable = Path(sys.executable).parent / "mcpstore-proxy"
    argv = [str(executable), "serve", "--config", str(config), "--port", str(port)]
    version = f"mcpstore-proxy {venv_version(Path(sys.executable), 'mcpstore-proxy')}"
    upstream_argv = [sys.executable, str(ECHO_SERVER), "http", str(upstream_port)]
    return Launch(
        argv,
        f"http://127.0.0.1:{port}/mcp",
        ready_path="/healthz",
        version=version,
        upstream_argv=upstream_argv,
        upstream_url=upstream_url,
    )


def prepare_mcp_proxy(workdir: Path, port: int, install: bool) -> Launch:
    python = ensure_venv("mcp-proxy", MCP_PROXY_REQUIREMENTS, install)
    executable = python.parent / "mcp-proxy"
    argv = [str(executable), "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING", *UPSTREAM]
    return Launch(argv, f"http://127.0.0.1:{port}/mcp", version=f"mcp-proxy {venv_version(python, 'mcp-proxy')}")


def prepare_fastmcp(workdir: Path, port: int, install: bool) -> Launch:
    python = ensure_venv("fastmcp", FASTMCP_REQUIREMENTS, install)
    launcher = workdir / "fastmcp_proxy.py"
    launcher.write_text(FASTMCP_LAUNCHER)
    argv = [str(python), str(launcher), str(port), *UPSTREAM]
    return Launch(argv, f"http://127.0.0.1:{port}/mcp", version=f"fastmcp {venv_version(python, 'fastmcp')}")


TARGETS = {
    target.name: target
    for target in [
        Target(
            "direct-sse", "direct: the upstream's own SDK server over HTTP, SSE responses", True, prepare_direct(False)
        ),
        Target("direct-json", "direct, JSON responses", True, prepare_direct(True)),
        Target("floor", "floor: bare isolating relay (bench/floor_relay.py)", False, prepare_floor),
        Target("mcp-proxy", "mcp-proxy 0.13 (sparfenyuk)", False, prepare_mcp_proxy),
        Target("fastmcp", "FastMCP 4.1.6 `StatefulProxyClient`", False, prepare_fastmcp),
        Target("mcpstore", "**mcpstore-proxy**", False, prepare_mcpstore),
        Target(
            "mcpstore-http",
            "**mcpstore-proxy**, Streamable HTTP upstream (`echo_server.py http`, SSE responses)",
            False,
            prepare_mcpstore_http,
            upstream="http",
        ),
    ]
}


# ---------------------------------------------------------------------------------------------------- processes


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


# ---------------------------------------------------------------------------------------------------- load


async def call_batch(session: Client, count: int, label: str, sink: list[float]) -> None:
    for index in range(count):
        started = time.perf_counter()
        await session.call_tool("echo", {"text": f"{label} {index}"})
        sink.append(time.perf_counter() - started)


async def measure(url: str, pid: int, seen_upstreams: list[int], calls: int, c8_calls: int) -> dict[str, Any]:
    single: list[float] = []
    async with client(url) as session:
        await session.call_tool("echo", {"text": "warm-up"})  # an isolating proxy starts the session's upstream here
        cpu_before = cpu_seconds(pid)
        await call_batch(session, calls, "c1", single)
        cpu_c1 = (cpu_seconds(pid) - cpu_before) / calls

    per_session = max(1, c8_calls // SESSIONS)
    concurrent: list[float] = []
    async with AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(client(url)) for _ in range(SESSIONS)]
        for session in sessions:
            await session.call_tool("echo", {"text": "warm-up"})
        upstreams = upstream_processes(pid)
        seen_upstreams.extend(upstreams)
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        async with anyio.create_task_group() as workers:
            for index, session in enumerate(sessions):
                workers.start_soon(call_batch, session, per_session, f"c8/{index}", concurrent)
        seconds = time.perf_counter() - started
        cpu_c8 = (cpu_seconds(pid) - cpu_before) / (per_session * SESSIONS)
    return {
        "c1_calls": calls,
        "c1_p50_ms": statistics.median(single) * 1000,
        "c1_p99_ms": percentile(single, 0.99) * 1000,
        "c8_calls": per_session * SESSIONS,
        "c8_calls_per_s": per_session * SESSIONS / seconds,
        "c8_p50_ms": statistics.median(concurrent) * 1000,
        "cpu_ms_per_call_c1": cpu_c1 * 1000,
        "cpu_ms_per_call_c8": cpu_c8 * 1000,
        "upstream_processes_for_8_sessions": len(upstreams),
    }


async def run_target(
    target: Target, workdir: Path, pin: bool, install: bool, calls: int, c8_calls: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"target": target.name, "label": target.label, "direct": target.direct}
    try:
        async with running(target, workdir, pin, install) as (launch, pid, seen_upstreams):
            row["version"] = launch.version
            row["notes"] = launch.notes
            row.update(await measure(launch.url, pid, seen_upstreams, calls, c8_calls))
    except Exception as error:  # noqa: BLE001 - a target that cannot be installed or run is skipped, with the reason shown
        row["skipped"] = f"{type(error).__name__}: {error}"[:300]
        return row
    if target.name == "floor":  # the relay's first line says which loop, HTTP parser and JSON library it runs
        row["notes"] = [*row["notes"], *(workdir / "floor.log").read_text(errors="replace").splitlines()[:1]]
    if target.upstream == "http":  # no upstream processes to count: one HTTP server, one MCP session per key in it
        row["isolates_sessions"] = "per key (HTTP upstream; not observed)"
    else:
        row["isolates_sessions"] = None if target.direct else row["upstream_processes_for_8_sessions"] >= SESSIONS
    return row


# ---------------------------------------------------------------------------------------------------- report


def table(rows: list[dict[str, Any]]) -> str:
    floor = next((row for row in rows if row["target"] == "floor" and "skipped" not in row), None)
    lines = [
        "| target | isolates sessions | c=1 p50 ms | c=8 calls/s (× floor) | CPU ms per call c=1 / c=8 |",  # noqa: RUF001
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['label']} | skipped: {row['skipped'].replace('|', '/')} | | | |")
            continue
        isolates: str
        match row["isolates_sessions"]:
            case None:
                isolates = "—"
            case str(text):
                isolates = text
            case observed:
                isolates = "yes" if observed else "no"
        throughput = f"{row['c8_calls_per_s']:.0f}"
        if floor is not None:
            throughput += f" ({row['c8_calls_per_s'] / floor['c8_calls_per_s']:.2f}×)"  # noqa: RUF001
        cpu = f"{row['cpu_ms_per_call_c1']:.2f} / {row['cpu_ms_per_call_c8']:.2f}"
        if row["direct"]:
            cpu = f"(whole server {cpu})"
        lines.append(f"| {row['label']} | {isolates} | {row['c1_p50_ms']:.2f} | {throughput} | {cpu} |")
    return "\n".join(lines)


def load_average() -> str:
    """The machine's load (1, 5, 15 min): anything above what this run adds means other work shared the cores."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def source_state() -> dict[str, Any]:
    """The commit measured, and the package files that differ from it (a run measures the working tree)."""

    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "modified": git("status", "--short", "mcpstore_proxy").splitlines()}


def serve_direct(framing: str, port: int) -> None:
    """The echo server's own SDK server over Streamable HTTP, SSE or JSON responses (a child of this script)."""
    import uvicorn
    from echo_server import build
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.routing import Route

    manager = StreamableHTTPSessionManager(app=build(), json_response=framing == "json")

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncGenerator[None]:
        async with manager.run():
            yield

    app = Starlette(routes=[Route("/mcp", endpoint=StreamableHTTPASGIApp(manager))], lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


SECTIONS = ["forwarding", "memory", "tools-list", "first-call"]


async def run(arguments: argparse.Namespace) -> None:
    names = [name.strip() for name in arguments.targets.split(",") if name.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    sections = [name.strip() for name in arguments.sections.split(",") if name.strip()]
    if unknown := [name for name in sections if name not in SECTIONS]:
        raise SystemExit(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    calls = arguments.calls or (100 if arguments.quick else 2000)
    c8_calls = arguments.c8_calls or (200 if arguments.quick else 4000)
    idle_sessions = arguments.idle_sessions or (5 if arguments.quick else 50)
    list_calls = arguments.list_calls or (20 if arguments.quick else 200)
    upstreams = arguments.upstreams or (5 if arguments.quick else 50)
    first_call_sessions = arguments.first_call_sessions or (3 if arguments.quick else 20)
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if pin:
        os.sched_setaffinity(0, {LOADGEN_CORE})
    load_before = load_average()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    output: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/forwarding.py", *sys.argv[1:]]),
        "machine": machine(),
        "source": source_state(),
        "pinned": {"system_under_test": SUT_CORE, "load_generator": LOADGEN_CORE} if pin else None,
        "sections": sections,
    }
    reports: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-forwarding-") as scratch:
        workdir = Path(scratch)
        if "forwarding" in sections:
            for name in names:
                print(f"{name} ...", file=sys.stderr, flush=True)
                rows.append(await run_target(TARGETS[name], workdir, pin, not arguments.no_install, calls, c8_calls))
            report = table(rows)
            print(report)
            print(f"\n{calls} calls at c=1, {c8_calls} over {SESSIONS} sessions at c=8")
            reports.append(report)
            output.update({"calls_c1": calls, "calls_c8": c8_calls, "sessions_c8": SESSIONS, "rows": rows})
            output["table"] = report
        import scale  # the other sections (bench/scale.py imports this module)

        if "memory" in sections:
            memory: list[dict[str, Any]] = []
            for name in [name for name in ("floor", "mcpstore") if name in names]:
                print(f"memory: {name} ...", file=sys.stderr, flush=True)
                install = not arguments.no_install
                memory.append(await scale.idle_memory(TARGETS[name], workdir, pin, install, idle_sessions))
            output["memory"] = memory
            output["memory_table"] = scale.memory_table(memory)
            print("\nMemory per idle session (RSS of the proxy's own process, upstream children excluded):\n")
            print(output["memory_table"])
        if "tools-list" in sections:
            print("tools/list at scale ...", file=sys.stderr, flush=True)
            listing = await scale.tools_list(workdir, pin, upstreams, arguments.tools_each, list_calls)
            output["tools_list"] = listing
            output["tools_list_table"] = scale.tools_list_table(listing)
            print(f"\n`tools/list` through mcpstore-proxy, {list_calls} calls from one session:\n")
            print(output["tools_list_table"])
        if "first-call" in sections:
            print("first call ...", file=sys.stderr, flush=True)
            first = await scale.first_calls(workdir, pin, first_call_sessions, arguments.warm)
            output["first_call"] = first
            output["first_call_table"] = scale.first_call_table(first)
            print("\nFirst call of a new session, sessions opened one after another:\n")
            print(output["first_call_table"])
    wall = time.perf_counter() - started
    load_after = load_average()
    print(f"\nwall time {wall:.0f} s; load average (1, 5, 15 min) before: {load_before}, after: {load_after}")
    output.update({"wall_seconds": round(wall, 1), "load_average_before": load_before})
    output["load_average_after"] = load_after
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(output, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, from: " + ", ".join(TARGETS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 calls at c=1, 200 at c=8")
    parser.add_argument("--calls", type=int, default=0, help="calls at c=1 (default 2000)")
    parser.add_argument("--c8-calls", type=int, default=0, help="calls over 8 sessions at c=8 (default 4000)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, from: " + ", ".join(SECTIONS))
    parser.add_argument("--idle-sessions", type=int, default=0, help="memory: idle sessions opened (default 50)")
    parser.add_argument("--upstreams", type=int, default=0, help="tools-list: upstreams (default 50)")
    parser.add_argument("--tools-each", type=int, default=20, help="tools-list: tools per upstream (default 20)")
    parser.add_argument("--list-calls", type=int, default=0, help="tools-list: timed calls (default 200)")
    parser.add_argument("--first-call-sessions", type=int, default=0, help="first-call: sessions per mode (20)")
    parser.add_argument("--warm", type=int, default=1, help="first-call: warm_sessions of the warm mode (default 1)")
    parser.add_argument("--no-install", action="store_true", help="never install a venv: skip peers not in place")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the figures")
    parser.add_argument("--serve-direct", nargs=2, metavar=("FRAMING", "PORT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_direct:
        serve_direct(arguments.serve_direct[0], int(arguments.serve_direct[1]))
        return
    anyio.run(run, arguments)


if __name__ == "__main__":
    main()
