"""The `mcpstore-proxy` command: `serve` (Streamable HTTP), `stdio` (one client on a pipe), `check`.

A bad config prints one line naming the field and the fix, and exits with 2;
no traceback. `check` exits with 1 when any upstream fails to start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from mcpstore_proxy.__about__ import __version__
from mcpstore_proxy.config import ProxySettings, load_settings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ConfigError, ProxyError
from mcpstore_proxy.logs import configure_logging
from mcpstore_proxy.serving import serve_http, serve_stdio
from mcpstore_proxy.status import ServiceInfo

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        settings = load_settings(
            arguments.config, host=arguments.host, port=arguments.port, log_level=arguments.log_level
        )
        configure_logging(settings.log_level)
        if arguments.command == "serve":
            anyio.run(serve_http, settings)
        elif arguments.command == "stdio":
            anyio.run(serve_stdio, settings)
        else:
            return anyio.run(_check, settings)
    except ConfigError as error:
        print(f"mcpstore-proxy: config error: {error.message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except ProxyError as error:
        print(f"mcpstore-proxy: {error.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcpstore-proxy",
        description="One MCP endpoint over many upstream MCP servers, with a persistent session per client.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve Streamable HTTP at http://HOST:PORT/mcp")
    stdio = commands.add_parser("stdio", help="serve one client over stdin/stdout (how Claude Desktop runs servers)")
    check = commands.add_parser("check", help="validate the config, start each upstream once, and report")
    for command in (serve, stdio, check):
        command.add_argument(
            "--config",
            type=Path,
            default=None,
            help="YAML or JSON config (default: $MCPSTORE_PROXY_CONFIG, then config/proxy.yaml)",
        )
        command.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
        command.set_defaults(host=None, port=None)
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default 8765)")
    return parser


async def _check(settings: ProxySettings) -> int:
    async with ProxyEngine(settings) as engine:
        await engine.started()
        statuses = engine.statuses()
    print(_format_table(statuses))
    if not statuses:
        print("no enabled upstreams under mcpServers", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if any(status.state != "ready" for status in statuses) else 0


def _format_table(statuses: Sequence[ServiceInfo]) -> str:
    rows = [("UPSTREAM", "TRANSPORT", "SESSION", "STATE", "TOOLS", "DETAIL")]
    rows += [
        (s.name, s.transport, s.session_mode, s.state, str(s.tool_count), "; ".join(filter(None, (s.error, s.detail))))
        for s in statuses
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ).rstrip()
