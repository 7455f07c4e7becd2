"""Why an upstream did not start, in words a person can act on.

`start_failure` reads the innermost exception of a failed start (a missing or
non-executable command, an HTTP request the server refused, an exit during the
handshake) into an `UpstreamStartError` whose message names the config field
to check; `start_error` words any other failed start (a start that ran out of
time). What the upstream wrote on stderr may hold secrets, so it goes to the
error's `detail`, which only operators see (`stderr_detail`). A URL service
added through the admin API must not tell open ports from closed ones: with
`hides_detail`, clients hear only that it could not connect, and the reason
goes to `detail` too.
"""

from __future__ import annotations

import httpx2
from mcp import MCPError, types

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import UpstreamStartError, first_line, innermost
from mcpstore_proxy.transports import StderrTail

__all__ = ["start_error", "start_failure", "stderr_detail"]


def start_failure(
    upstream: str, config: UpstreamConfig, error: BaseException | None, stderr: StderrTail, *, hides_detail: bool
) -> UpstreamStartError:
    """The error for a start that failed with `error` (None: the upstream closed the connection first)."""
    error = innermost(error)
    where = f"mcpServers.{upstream}." + ("command" if config.command else "url")
    if isinstance(error, FileNotFoundError) and config.command:
        reason = f"command '{config.command}' not found"
    elif isinstance(error, PermissionError) and config.command:
        reason = f"command '{config.command}' is not executable"
    elif isinstance(error, MCPError) and error.code == types.CONNECTION_CLOSED:
        reason = "it exited during the handshake"
    elif error is None:
        reason = "it closed the connection before the handshake finished"
    elif isinstance(error, httpx2.HTTPStatusError) and error.response.status_code in (401, 403):
        reason = (
            f"{first_line(error)}: the server refused the request. Check the credentials in "
            f"mcpServers.{upstream}.headers, and whether it accepts this host name (Playwright MCP, for one, "
            "accepts only the host it prints when it starts, such as localhost)"
        )
    else:
        reason = first_line(error)
    return start_error(upstream, f"failed to start: {reason} (check {where})", stderr, hides_detail=hides_detail)


def start_error(upstream: str, what: str, stderr: StderrTail, *, hides_detail: bool) -> UpstreamStartError:
    """The error for a start that did not come up: "upstream 'x' <what>". With `hides_detail`, `what` goes to
    `detail` only."""
    detail = stderr_detail(stderr)
    if hides_detail:
        return UpstreamStartError(
            upstream,
            f"upstream '{upstream}' could not connect (check its url)",
            detail=f"{what}; {detail}" if detail else what,
        )
    return UpstreamStartError(upstream, f"upstream '{upstream}' {what}", detail=detail)


def stderr_detail(stderr: StderrTail) -> str | None:
    """What the upstream said on stderr, which may hold secrets: shown to operators only."""
    tail = stderr.summary()
    return f"its stderr said: {tail}" if tail else None
