"""The `mcpstore-proxy` command: `serve` (Streamable HTTP), `stdio` (one client on a pipe), `check`,
`pins list` / `pins approve NAME` (the config's tool pins; see `pins`), and `status` (a running proxy's
`/admin/status`, as the status page shows it; see `status_page`).

A bad config prints one line naming the field and the fix, and exits with 2;
no traceback. `check` exits with 1 when any upstream fails to start, `pins
approve` when no pinned tool has that name, `status` when the proxy cannot be
reached or refuses the token.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx2

from mcpstore_proxy.__about__ import __version__
from mcpstore_proxy.collector import tuned_collector
from mcpstore_proxy.config import ProxySettings, load_settings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ConfigError, ProxyError
from mcpstore_proxy.lean_events import lean_events
from mcpstore_proxy.logs import configure_logging
from mcpstore_proxy.pins import PinInfo, ToolPins
from mcpstore_proxy.services import IsolatedService
from mcpstore_proxy.serving import serve_http, serve_stdio
from mcpstore_proxy.status import ServiceInfo
from mcpstore_proxy.status_page import aligned, render_text

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
_STATUS_TIMEOUT_SECONDS = 10.0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        if arguments.command == "status":
            _status(arguments.url, arguments.token, arguments.config)
            return 0
        settings = load_settings(
            arguments.config,
            serving=arguments.command == "serve",
            host=arguments.host,
            port=arguments.port,
            log_level=arguments.log_level,
        )
        configure_logging(settings.log_level, settings.log_format)
        if arguments.command == "serve":
            with tuned_collector(), lean_events():
                anyio.run(serve_http, settings, backend_options=_event_loop())
        elif arguments.command == "stdio":
            with tuned_collector(), lean_events():
                anyio.run(serve_stdio, settings, backend_options=_event_loop())
        elif arguments.command == "pins":
            _pins(settings, arguments.action, arguments.name)
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


def _event_loop() -> dict[str, Any]:
    """uvloop where it is installed (not on Windows): the proxy's per-call work is mostly event-loop work."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


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
    pins = commands.add_parser("pins", help="list the tool pins, or approve a tool's changed definition")
    actions = pins.add_subparsers(dest="action", required=True, metavar="ACTION")
    pins_list = actions.add_parser("list", help="every pinned tool, and the changes awaiting approval")
    pins_approve = actions.add_parser("approve", help="approve the changed definition of the tool NAME")
    pins_approve.add_argument("name", metavar="NAME", help="the exposed tool name (state_echo) or upstream/tool")
    pins_list.set_defaults(name=None)
    for command in (serve, stdio, check, pins_list, pins_approve):
        command.add_argument(
            "--config",
            type=Path,
            default=None,
            help="YAML or JSON config (default: $MCPSTORE_PROXY_CONFIG, then config/proxy.yaml)",
        )
        command.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
        command.set_defaults(host=None, port=None)
    status = commands.add_parser("status", help="print a running proxy's upstreams, sessions and recent refusals")
    status.add_argument(
        "--url", default=None, help="the proxy's address, such as http://127.0.0.1:8765 (default: from the config)"
    )
    status.add_argument(
        "--token", default=None, help="an admin token (default: $MCPSTORE_PROXY_ADMIN_TOKEN, then the config's)"
    )
    status.add_argument("--config", type=Path, default=None, help="the config the proxy serves (for --url, --token)")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default 8765)")
    return parser


async def _check(settings: ProxySettings) -> int:
    async with ProxyEngine(settings) as engine:
        await engine.started()
        for service in engine.registry:
            if isinstance(service, IsolatedService):
                await service.pool.warm.spares_started()  # so that the table shows whether the warm pool comes up
        statuses = engine.statuses()
    print(_format_table(statuses))
    if not statuses:
        print("no enabled upstreams under mcpServers", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if any(status.state != "ready" for status in statuses) else 0


def _status(url: str | None, token: str | None, config: Path | None) -> None:
    """Print the status report of the proxy at `url` (else the address the config serves).

    Raises:
        ConfigError: no `url`, and the config cannot be read.
        ProxyError: the proxy cannot be reached, or refuses.
    """
    token = token or os.environ.get("MCPSTORE_PROXY_ADMIN_TOKEN")
    if url is None:
        settings = load_settings(config)
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        url = f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"
        token = token or settings.admin_token
    base = url.rstrip("/").removesuffix("/mcp")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx2.get(f"{base}/admin/status", headers=headers, timeout=_STATUS_TIMEOUT_SECONDS)
    except httpx2.HTTPError as error:
        raise ProxyError(
            f"cannot reach the proxy at {base} ({error}); is it running? (give its address with --url)"
        ) from None
    if answer.status_code != 200:
        raise ProxyError(f"{base}/admin/status answered {answer.status_code}: {_error_message(answer)}")
    print(render_text(answer.json(), base))


def _error_message(answer: httpx2.Response) -> str:
    try:
        message = str(answer.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return answer.text[:200]
    if answer.status_code in (401, 403):
        message += " (give an admin token with --token or $MCPSTORE_PROXY_ADMIN_TOKEN)"
    return message


def _pins(settings: ProxySettings, action: str, name: str | None) -> None:
    pins = ToolPins(settings.tool_pins_path, mode=settings.tool_pinning)
    if name is not None:
        approval = pins.approve(name)
        if approval.changes is None:
            print(f"{approval.tool} ({approval.exposed_name}): no change awaits approval")
        else:
            print(f"approved {approval.tool} ({approval.exposed_name}): {approval.changes}")
        return
    infos = pins.infos()
    if not infos:
        print(f"no tool pins in {pins.path} yet: the proxy pins each tool the first time it exposes it")
        return
    print(_format_pins(infos))


def _format_pins(infos: Sequence[PinInfo]) -> str:
    rows = [("TOOL", "EXPOSED AS", "STATE", "CHANGES")]
    rows += [(i.tool, i.exposed_name, i.state, i.changes or "") for i in infos]
    return aligned(rows)


def _format_table(statuses: Sequence[ServiceInfo]) -> str:
    rows = [("UPSTREAM", "TRANSPORT", "SESSION", "STATE", "TOOLS", "DETAIL")]
    rows += [
        (s.name, s.transport, s.session_mode, s.state, str(s.tool_count), "; ".join(filter(None, _details(s))))
        for s in statuses
    ]
    return aligned(rows)


def _details(status: ServiceInfo) -> tuple[str | None, ...]:
    pool = status.warm_pool
    warm = f"warm pool: {pool.ready}/{pool.target} spares ready" if pool is not None else None
    return (status.error, status.detail, warm)
