"""What bench/lifecycle.py stands on: the real proxy as a process on 127.0.0.1 (launched, watched through /proc,
and always cleaned up by pid), MCP clients over the SDK and over plain HTTP, and the figures it prints.

Every process the proxy starts is remembered by pid and start time as soon as it is seen, so that when a run
ends, however it ends, whatever is still alive is killed by pid (and never a reused pid), and reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.abc
import httpx2
import yaml
from mcp import Client, MCPError, types
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
STATEFUL_SERVER = ROOT / "tests" / "fixtures" / "stateful_server.py"
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
PROTOCOL_VERSION = "2025-11-25"


# Configs.


def fixture(name: str, *flags: str, **options: Any) -> dict[str, Any]:
    """An `mcpServers` entry running tests/fixtures/stateful_server.py over stdio."""
    return {"command": sys.executable, "args": [str(STATEFUL_SERVER), "--name", name, *flags], **options}


def write_config(directory: Path, servers: Mapping[str, Any], name: str = "proxy.yaml", **settings: Any) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({**settings, "mcpServers": dict(servers)}, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Processes, as /proc sees them.


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from the state field on (index 0 is the state, 1 the parent, 19 the start time)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def is_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as dead)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def _process_table() -> dict[int, list[str]]:
    table: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            table[int(entry.name)] = fields
    return table


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for child, fields in _process_table().items():
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(child)
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def find_process(ancestor: int, fragment: str) -> int | None:
    """The first live process below `ancestor` whose command line contains `fragment`."""
    for pid in sorted(descendants(ancestor)):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fragment in command:
            return pid
    return None


def zombie_children(pid: int) -> list[int]:
    """Children of `pid` that have exited and not been reaped by it."""
    return [child for child, fields in _process_table().items() if fields[0] == "Z" and int(fields[1]) == pid]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (unlike wall time, a loaded machine barely moves it)."""
    fields = _stat_fields(pid)
    if fields is None:
        raise RuntimeError(f"no process {pid}")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def kill_if_same(pid: int, started: int | None) -> bool:
    """SIGKILL `pid` if it is still the process that started at `started`; whether it was killed."""
    if not is_alive(pid) or start_time(pid) != started:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
        return True
    return False


async def wait_until(
    predicate: Callable[[], bool] | Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.05
) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; whether it held."""
    with anyio.move_on_after(timeout):
        while True:
            outcome = predicate()
            if not isinstance(outcome, bool):
                outcome = await outcome
            if outcome:
                return True
            await anyio.sleep(interval)
    return False


# The proxy.


@dataclass(eq=False)
class Proxy:
    """A running `mcpstore-proxy serve` process, and every process it has been seen to start."""

    process: anyio.abc.Process
    port: int
    log_path: Path
    launched: float
    """`time.perf_counter()` just before the launch."""
    seen: dict[int, int | None] = field(default_factory=dict[int, "int | None"])
    """pid -> start time of every descendant seen so far."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def is_running(self) -> bool:
        return self.process.returncode is None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def track(self) -> set[int]:
        """The proxy's live descendants now (remembered for the leak check and the clean-up)."""
        found = descendants(self.pid) if self.is_running else set[int]()
        for pid in found:
            self.seen.setdefault(pid, start_time(pid))
        return found

    async def watch(self, interval: float = 0.5) -> None:
        """Track the proxy's descendants while it runs, so that one it loses hold of is still known."""
        while self.is_running:
            self.track()
            await anyio.sleep(interval)

    async def health(self) -> dict[str, Any] | None:
        """/admin/status (the upstreams' states; /healthz is liveness only), or None while it does not answer 200."""
        try:
            async with httpx2.AsyncClient(timeout=5) as http:
                answer = await http.get(f"http://127.0.0.1:{self.port}/admin/status")
        except httpx2.TransportError:
            return None
        return answer.json() if answer.status_code == 200 else None

    async def wait_healthy(self, *, timeout: float = 60, upstreams_ready: Sequence[str] = ()) -> float:
        """Seconds from launch until /admin/status answers 200 (and names each of `upstreams_ready` ready)."""

        async def is_healthy() -> bool:
            if not self.is_running:
                raise RuntimeError(f"the proxy exited with {self.process.returncode}; log:\n{self.log[-3000:]}")
            status = await self.health()
            if status is None:
                return False
            states = {name: upstream["state"] for name, upstream in status["upstreams"].items()}
            return all(states.get(name) == "ready" for name in upstreams_ready)

        if not await wait_until(is_healthy, timeout=timeout, interval=0.02):
            raise RuntimeError(f"the proxy on port {self.port} did not become healthy within {timeout:g} s")
        return time.perf_counter() - self.launched

    async def stop(self, *, timeout: float = 60) -> int:
        """SIGTERM, then wait (bounded; SIGKILL past it) for the exit; returns the exit code."""
        self.track()
        if self.is_running:
            self.process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(timeout):
            return await self.process.wait()
        self.process.kill()
        await self.process.wait()
        raise RuntimeError(f"the proxy did not exit within {timeout:g} s of SIGTERM")

    async def leftovers(self, *, timeout: float = 10) -> list[int]:
        """Processes the proxy started that are still alive `timeout` seconds (at most) after it stopped."""

        def survivors() -> list[int]:
            return sorted(pid for pid, started in self.seen.items() if is_alive(pid) and start_time(pid) == started)

        await wait_until(lambda: not survivors(), timeout=timeout)
        return survivors()

    def kill_everything(self) -> list[int]:
        """Kill the proxy and every process it started that is still alive, by pid; the pids killed."""
        if self.is_running:
            self.track()
            self.process.kill()
        return [pid for pid, started in self.seen.items() if kill_if_same(pid, started)]


@asynccontextmanager
async def running_proxy(
    config: Path, workdir: Path, *, wait: bool = True, upstreams_ready: Sequence[str] = ()
) -> AsyncGenerator[Proxy]:
    """`mcpstore-proxy serve` on a free loopback port, its log in `workdir`; stopped and cleaned up on exit."""
    port = free_port()
    log_path = workdir / f"proxy-{port}.log"
    with log_path.open("w") as log:
        launched = time.perf_counter()
        process = await anyio.open_process(
            [sys.executable, "-m", "mcpstore_proxy", "serve", "--config", str(config), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    proxy = Proxy(process, port, log_path, launched)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(proxy.watch)
            if wait:
                await proxy.wait_healthy(upstreams_ready=upstreams_ready)
            yield proxy
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if proxy.is_running:
                with contextlib.suppress(RuntimeError):
                    await proxy.stop(timeout=30)
            await proxy.leftovers(timeout=5)
            proxy.kill_everything()
            if proxy.is_running:
                await proxy.process.wait()


# Clients.


@asynccontextmanager
async def connect(url: str, **options: Any) -> AsyncGenerator[Client]:
    """The SDK's client over Streamable HTTP, handshake era; DELETEs its session on exit."""
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=300.0)) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None, **options) as client,
    ):
        yield client


def structured(result: types.CallToolResult) -> Any:
    """The `result` of a tool's structured output; raises on an error result."""
    if result.is_error or result.structured_content is None:
        raise RuntimeError(f"the tool answered an error: {result.content}")
    return result.structured_content["result"]


def json_rpc_answer(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of an answer, sent as JSON or as the last `data:` line of an event stream."""
    data = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    return json.loads(data[-1]) if data else response.json()


class RawSession:
    """A Streamable HTTP MCP session over plain HTTP: no SDK client, which re-opens its event stream and raises
    on leaving once the server has ended the session."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self._http = http
        self._url = url
        self.headers = dict(MCP_HEADERS)
        self.session_id: str | None = None

    async def initialize(self) -> httpx2.Response:
        """Send `initialize`; on success the session id is kept (no `initialized` notice yet)."""
        hello = {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        }
        opened = await self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        if opened.status_code == 200:
            self.session_id = opened.headers["mcp-session-id"]
            self.headers |= {"Mcp-Session-Id": self.session_id, "Mcp-Protocol-Version": PROTOCOL_VERSION}
        return opened

    async def open(self) -> None:
        opened = await self.initialize()
        if self.session_id is None:
            raise RuntimeError(f"initialize answered {opened.status_code}: {opened.text[:300]}")
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def post(self, message: dict[str, Any]) -> httpx2.Response:
        return await self._http.post(self._url, json=message, headers=self.headers)

    async def call_tool(self, request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The JSON-RPC answer to a tools/call: a result or an error."""
        params = {"name": name, "arguments": arguments}
        answer = await self.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        return json_rpc_answer(answer)

    async def delete(self) -> int:
        return (await self._http.delete(self._url, headers=self.headers)).status_code


# Figures.


def p50(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def spread_ms(seconds: Sequence[float]) -> str:
    """`p50 / max` of durations, or `-` for none."""
    return f"{ms(p50(seconds))} / {ms(max(seconds))}" if seconds else "-"


def describe(error: BaseException) -> str:
    """One line for an error: the first real one inside exception groups, with its JSON-RPC code if it has one."""
    while isinstance(error, BaseExceptionGroup):
        error = cast("BaseExceptionGroup[BaseException]", error).exceptions[0]
    if isinstance(error, MCPError):
        return f"{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


def short(text: str, width: int = 100) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


@dataclass(frozen=True)
class Figure:
    """One measured figure: its value, what it should be (if anything), and whether it is."""

    scenario: str
    name: str
    value: float | int | str
    expected: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else "ok" if self.ok else "FAIL"

    def shown(self) -> str:
        if isinstance(self.value, float):
            return f"{self.value:.2f}"
        return str(self.value)


@dataclass
class Figures:
    """The figures of one scenario, in the order they were taken."""

    scenario: str
    rows: list[Figure] = field(default_factory=list[Figure])

    def add(self, name: str, value: float | int | str, expected: str = "", ok: bool | None = None) -> None:
        self.rows.append(Figure(self.scenario, name, value, expected, ok))

    def check(self, name: str, value: float | int | str, expected: float | int | str) -> None:
        """A figure that must equal `expected`."""
        self.add(name, value, f"= {expected}", value == expected)


def table(rows: Sequence[Figure]) -> str:
    """A Markdown table of figures."""
    header = ("scenario", "figure", "value", "expected", "verdict")
    cells = [header, *((f.scenario, f.name, f.shown(), f.expected, f.verdict) for f in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |" for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)
