"""Forwarding cost, side by side in one run: mcpstore-proxy against direct, a floor relay and peer proxies.

    .venv/bin/python bench/forwarding.py [--quick] [--targets direct-sse,direct-json,floor,mcpstore,mcp-proxy,fastmcp]

Every target serves the `echo` tool of bench/echo_server.py over Streamable HTTP at /mcp:

- direct-sse, direct-json: the echo server's own SDK server (SSE responses; `json_response=True`);
- floor: bench/floor_relay.py, a bare isolating relay kept as a reference (never shipped);
- mcpstore: this repository's `mcpstore-proxy serve`, the echo server as an isolated stdio upstream;
- mcp-proxy, fastmcp: the peers, each installed by this script in its own venv under bench/.venvs/ (pinned).

Each system under test runs pinned to core 1 (with the upstreams it starts), the load generator to the others. The load
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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale
from forwarding_load import SESSIONS, run_target
from forwarding_processes import SUT_CORE, pin_load_generator
from forwarding_report import load_average, machine, source_state, table
from forwarding_targets import BENCH, TARGETS

DEFAULT_JSON = BENCH / "results" / "forwarding.json"


def serve_direct(framing: str, port: int) -> None:
    """The "direct" target: bench/echo_server.py's own HTTP server, SSE or JSON responses (a child of this script)."""
    from echo_server import serve_http

    serve_http(port, json_response=framing == "json")


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
    pin = pin_load_generator()
    load_before = load_average()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    output: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/forwarding.py", *sys.argv[1:]]),
        "machine": machine(),
        "source": source_state(),
        "pinned": {"system_under_test": SUT_CORE, "load_generator": sorted(os.sched_getaffinity(0))} if pin else None,
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
        if "memory" in sections:
            memory: list[dict[str, Any]] = []
            for name in [name for name in ("floor", "mcpstore", "mcpstore-modern") if name in names]:
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
            print(f"\n`tools/list` through mcpstore-proxy, {list_calls} calls from each client in turn:\n")
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
