"""The sections of bench/forwarding.py beyond forwarding: memory per idle session, `tools/list` at scale, first call.

    .venv/bin/python bench/forwarding.py --sections memory,tools-list,first-call

Run by bench/forwarding.py (its `--sections`), in the same run and with the same pinning as the forwarding table:

- memory: RSS of the system under test's own process (VmRSS of its pid, upstream children excluded), before and
  after opening N idle sessions (each initialized and with one `echo` call made, so its upstream is running), the
  delta divided by N; for mcpstore-proxy and the floor relay;
- tools-list: mcpstore-proxy with 50 stdio upstreams (bench/many_tools_server.py, 20 tools each: 1,000 tools), once
  `/admin/status` shows every upstream ready; p50 and p90 of `tools/list`, and the proxy's CPU per listing, from
  one client at a time: a bare HTTP client (what the proxy costs) in a handshake-era session with and without
  gzip, and with 2026-07-28 requests, also timed to the answer's last byte (before the client's own parse of
  ~400 KB, 3 to 4 ms with orjson on this machine, which no proxy can save it); and the SDK's `Client` in both
  eras (what an agent sees, with its validation);
- first-call: bench/first_call.py's two modes (no warm pool; `warm_sessions: 1`), sessions opened one at a time.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import first_call
from forwarding_processes import pinned, process_table, running, started_process, upstream_processes
from forwarding_targets import Target
from proxy_overhead import ROOT, client, cpu_seconds, free_port, percentile, rss_kib

MANY_TOOLS_SERVER = ROOT / "bench" / "many_tools_server.py"
SETTLE_SECONDS = 2.0  # after the last idle session opens, before reading RSS: measurement only
PROTOCOL_VERSION = "2025-06-18"


# ---------------------------------------------------------------------------------------------------- memory


def rss_children_kib(pid: int) -> tuple[int, int]:
    """How many echo-server upstreams run under `pid`, and their RSS in total (KiB)."""
    upstreams = upstream_processes(pid)
    total = 0
    for upstream in upstreams:
        with suppress(FileNotFoundError, ProcessLookupError, RuntimeError):
            total += rss_kib(upstream)
    return len(upstreams), total


async def idle_memory(target: Target, workdir: Path, pin: bool, install: bool, sessions: int) -> dict[str, Any]:
    row: dict[str, Any] = {"target": target.name, "label": target.label, "idle_sessions": sessions}
    try:
        async with running(target, workdir, pin, install) as (launch, pid, seen_upstreams):
            async with target.client(launch.url, sessions) as warm:  # the proxy's code paths, warmed first
                await warm.call_tool("echo", {"text": "warm-up"})
            await anyio.sleep(SETTLE_SECONDS)
            before = rss_kib(pid)
            started = time.perf_counter()
            async with AsyncExitStack() as stack:
                for index in range(sessions):
                    session = await stack.enter_async_context(target.client(launch.url, index))
                    await session.call_tool("echo", {"text": f"idle {index}"})
                opened = time.perf_counter() - started
                await anyio.sleep(SETTLE_SECONDS)
                after = rss_kib(pid)
                upstreams, upstream_kib = rss_children_kib(pid)
                seen_upstreams.extend(upstream_processes(pid))
    except Exception as error:  # noqa: BLE001 - a target that cannot run is reported, not fatal
        row["skipped"] = f"{type(error).__name__}: {error}"[:300]
        return row
    row.update(
        {
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_idle_session": (after - before) / sessions,
            "upstream_processes": upstreams,
            "upstream_rss_mib_each": upstream_kib / 1024 / upstreams if upstreams else 0.0,
            "seconds_to_open": opened,
        }
    )
    return row


def memory_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| target | idle sessions | proxy RSS before → after (MiB) | proxy KiB per idle session | "
        "upstream processes (MiB RSS each) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['label']} | skipped: {row['skipped'].replace('|', '/')} | | | |")
            continue
        lines.append(
            f"| {row['label']} | {row['idle_sessions']} | {row['rss_before_kib'] / 1024:.1f} → "
            f"{row['rss_after_kib'] / 1024:.1f} | {row['kib_per_idle_session']:.0f} | "
            f"{row['upstream_processes']} ({row['upstream_rss_mib_each']:.0f}) |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- tools/list


def many_tools_config(workdir: Path, upstreams: int, tools_each: int) -> Path:
    servers = {
        f"u{index:02d}": {
            "command": sys.executable,
            "args": [str(MANY_TOOLS_SERVER), "--count", str(tools_each), "--name", f"u{index:02d}"],
        }
        for index in range(upstreams)
    }
    config = workdir / "many-tools.yaml"
    # Fifty starts at once on one core can each take past the default start timeout on a slow machine; one that
    # times out starts over, and the section never sees them all ready. It measures listing, not starting.
    settings = {"log_level": "WARNING", "upstream_start_timeout_seconds": 600, "mcpServers": servers}
    config.write_text(yaml.safe_dump(settings))
    return config


async def all_ready(port: int, upstreams: int) -> float:
    """Seconds until /admin/status shows every upstream ready."""
    started = time.perf_counter()
    with anyio.fail_after(600):
        async with httpx2.AsyncClient(timeout=30) as http:
            while True:
                states: dict[str, Any] = {}
                with suppress(httpx2.TransportError, KeyError, ValueError):
                    states = (await http.get(f"http://127.0.0.1:{port}/admin/status")).json()["upstreams"]
                if len(states) == upstreams and all(state.get("state") == "ready" for state in states.values()):
                    return time.perf_counter() - started
                await anyio.sleep(0.2)


def rpc_result(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC result of a Streamable HTTP response, whether a JSON body or an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:"):
                message: dict[str, Any] = orjson.loads(line[5:])
                if "result" in message or "error" in message:
                    return message
        raise RuntimeError("no JSON-RPC response in the SSE stream")
    return orjson.loads(response.content)


_MODERN = "2026-07-28"
_ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": _MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
}
_LISTERS: list[tuple[str, str, str]] = [
    # (what the row says, the client's protocol version, its Accept-Encoding), for the bare HTTP client
    ("bare HTTP (httpx2 + orjson), gzip", PROTOCOL_VERSION, "gzip, deflate"),
    ("bare HTTP (httpx2 + orjson), no compression", PROTOCOL_VERSION, "identity"),
    ("bare HTTP (httpx2 + orjson), gzip", _MODERN, "gzip, deflate"),
]


async def raw_tools_list(
    url: str, calls: int, pid: int, version: str, accept_encoding: str
) -> tuple[list[float], int, float, list[float]]:
    """`tools/list` over a bare HTTP client speaking `version` (a handshake-era session, or 2026-07-28 requests),
    `calls` timed requests; latencies (the listing parsed), tool count, proxy CPU ms each, and latencies to the
    answer's last byte (received and decompressed, not yet parsed)."""
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "accept-encoding": accept_encoding,
    }
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=300.0), headers=headers) as http:
        if version == _MODERN:
            session = {"mcp-protocol-version": _MODERN, "mcp-method": "tools/list"}
            params: dict[str, Any] = {"_meta": _ENVELOPE}
        else:
            session = await _opened_session(http, url)
            params = {}

        received: list[float] = []

        async def listing(request_id: int, started: float) -> int:
            body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": params})
            response = await http.post(url, content=body, headers=session)
            received.append(time.perf_counter() - started)
            response.raise_for_status()
            message = rpc_result(response)
            if "nextCursor" in message["result"]:
                raise RuntimeError("the proxy paginated tools/list; this bench does not follow cursors")
            return len(message["result"]["tools"])

        count = await listing(1, time.perf_counter())  # warm-up
        received.clear()
        latencies: list[float] = []
        cpu_before = cpu_seconds(pid)
        for index in range(calls):
            started = time.perf_counter()
            await listing(index + 2, started)
            latencies.append(time.perf_counter() - started)
        cpu_ms = (cpu_seconds(pid) - cpu_before) / calls * 1000
    return latencies, count, cpu_ms, received


async def _opened_session(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    """A handshake-era session opened over `http`: the headers its requests carry."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"},
        },
    }
    response = await http.post(url, content=orjson.dumps(initialize))
    response.raise_for_status()
    rpc_result(response)
    session = {"mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": PROTOCOL_VERSION}
    initialized = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    (await http.post(url, content=initialized, headers=session)).raise_for_status()
    return session


async def sdk_tools_list(url: str, calls: int, pid: int, mode: str) -> tuple[list[float], int, float]:
    """`tools/list` from the SDK's `Client` in `mode` (it validates what it receives)."""
    async with client(url, mode=mode) as session:
        count = len((await session.list_tools()).tools)
        latencies: list[float] = []
        cpu_before = cpu_seconds(pid)
        for _ in range(calls):
            started = time.perf_counter()
            await session.list_tools()
            latencies.append(time.perf_counter() - started)
        cpu_ms = (cpu_seconds(pid) - cpu_before) / calls * 1000
    return latencies, count, cpu_ms


def _listing_row(
    client_name: str,
    version: str,
    latencies: list[float],
    count: int,
    cpu_ms: float,
    received: list[float] | None = None,
) -> dict[str, Any]:
    row = {
        "client": client_name,
        "version": version,
        "tools_listed": count,
        "p50_ms": statistics.median(latencies) * 1000,
        "p90_ms": percentile(latencies, 0.9) * 1000,
        "mean_ms": statistics.mean(latencies) * 1000,
        "proxy_cpu_ms_per_list": cpu_ms,
    }
    if received:
        row["received_p50_ms"] = statistics.median(received) * 1000
    return row


async def tools_list(workdir: Path, pin: bool, upstreams: int, tools_each: int, calls: int) -> dict[str, Any]:
    row: dict[str, Any] = {"upstreams": upstreams, "tools_each": tools_each, "calls": calls, "clients": []}
    port = free_port()
    config = many_tools_config(workdir, upstreams, tools_each)
    executable = Path(sys.executable).parent / "mcpstore-proxy"
    argv = [str(executable), "serve", "--config", str(config), "--port", str(port)]
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with started_process(argv, workdir / "many-tools.log", pin) as process:
            row["seconds_until_all_ready"] = await all_ready(port, upstreams)
            for name, version, accept_encoding in _LISTERS:
                measured = await raw_tools_list(url, calls, process.pid, version, accept_encoding)
                row["clients"].append(_listing_row(name, version, *measured))
            for mode, version in (("legacy", PROTOCOL_VERSION), (_MODERN, _MODERN)):
                measured = await sdk_tools_list(url, calls, process.pid, mode)
                row["clients"].append(_listing_row("MCP SDK client (`list_tools`, validates)", version, *measured))
            row["upstream_processes"] = len(
                [pid for pid, (_, command) in process_table().items() if str(MANY_TOOLS_SERVER) in command]
            )
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        row["skipped"] = f"{type(error).__name__}: {error}"[:300]
    return row


def tools_list_table(row: dict[str, Any]) -> str:
    lines = [
        "| client | protocol | upstreams x tools | tools listed | p50 ms | p90 ms | mean ms | p50 ms to the last byte "
        "(before the client parses) | proxy CPU ms per list |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    shape = f"{row['upstreams']} x {row['tools_each']}"
    for measured in row["clients"]:
        received = measured.get("received_p50_ms")
        lines.append(
            f"| {measured['client']} | {measured['version']} | {shape} | {measured['tools_listed']} | "
            f"{measured['p50_ms']:.2f} | {measured['p90_ms']:.2f} | {measured['mean_ms']:.2f} | "
            f"{'—' if received is None else f'{received:.2f}'} | {measured['proxy_cpu_ms_per_list']:.2f} |"
        )
    if "skipped" in row:
        lines.append(f"| — | | {shape} | skipped: {row['skipped'].replace('|', '/')} | | | | | |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- first call


async def first_calls(workdir: Path, pin: bool, sessions: int, warm: int) -> dict[str, Any]:
    """bench/first_call.py's two modes, its proxy pinned like every system under test here."""
    result: dict[str, Any] = {"sessions": sessions, "warm_sessions": warm}
    first_call.LAUNCH_PREFIX[:] = pinned([], pin)
    try:
        for mode, warm_sessions in (("cold", 0), ("warm", warm)):
            latencies = await first_call.run_mode(workdir, warm_sessions, sessions)
            result[mode] = {
                "p50_ms": statistics.median(latencies) * 1000,
                "p90_ms": percentile(latencies, 0.9) * 1000,
                "max_ms": max(latencies) * 1000,
            }
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        result["skipped"] = f"{type(error).__name__}: {error}"[:300]
    return result


def first_call_table(result: dict[str, Any]) -> str:
    lines = [
        "| mcpstore-proxy, echo upstream over stdio | sessions | p50 ms | p90 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    if "skipped" in result:
        return "\n".join([*lines, f"| skipped: {result['skipped'].replace('|', '/')} | | | | |"])
    for mode, label in (("cold", "no warm pool"), ("warm", f"`warm_sessions: {result['warm_sessions']}`")):
        figures = result[mode]
        lines.append(
            f"| {label} | {result['sessions']} | {figures['p50_ms']:.1f} | {figures['p90_ms']:.1f} | "
            f"{figures['max_ms']:.1f} |"
        )
    return "\n".join(lines)
