"""The proxy's one error hierarchy, and its single translation to the wire.

    ProxyError
     ├── ConfigError                the YAML/JSON config or a value in it is wrong
     │    └── NameCollisionError    two upstreams expose the same tool name
     ├── UnknownToolError           no exposed tool has that name
     ├── UnknownPromptError         no exposed prompt has that name
     ├── UnknownResourceError       no upstream offers that resource URI
     ├── UnknownServiceError        no service of that name in this scope
     ├── AmbiguousToolError         a short tool name matches several services' tools
     ├── UpstreamError              an upstream failed; names the upstream
     │    ├── UpstreamStartError     it could not be started or initialized
     │    ├── UpstreamClosedError    its connection ended by itself while in use (crash, exit)
     │    ├── UpstreamStoppedError   the proxy closed the connection under the request (restart, removal,
     │    │                          shutdown, or the end of the session that held it)
     │    └── UpstreamTimeoutError   a call exceeded the upstream's call timeout
     ├── SessionError               the session could not serve the request
     │    ├── InvalidSessionKeyError the explicit session key or agent id is malformed
     │    ├── SessionLimitError      a cap on sessions is reached (names the cap and the fix)
     │    │    └── ConnectionLimitError  the proxy already holds max_downstream_sessions client sessions
     │    └── SessionClosedError     the named session was closed, expired, or never opened
     ├── AccessError                the request may not do this
     │    ├── AuthenticationError   it proves no principal (HTTP 401, with the resource metadata URL)
     │    └── PermissionDeniedError its principal may not do it (HTTP 403)
     ├── ToolChangedError           the tool's definition changed since it was approved, and
     │                              `tool_pinning: enforce` withholds it until it is approved
     ├── ToolError                  the tool answered `isError: true` (raised by the SDK only when
     │                              asked: `use_tool(..., raise_on_error=True)`; never on the wire)
     ├── RequestTooLargeError       a request body is over the size the API takes (HTTP 413)
     └── ShuttingDownError          the proxy is draining for shutdown and takes no new work

Each class carries its wire facts: the JSON-RPC `code` an MCP client sees and
the `http_status` the admin API and the HTTP front door answer with. Errors
that the upstream itself answered (an `MCPError` from its JSON-RPC reply) are
not wrapped: the client sees the upstream's own code and message.
`to_mcp_error` is the one place our errors become MCP errors. `did_you_mean`
words the suggestion an unknown name's message carries.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, cast

from mcp import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST

if TYPE_CHECKING:
    from mcp.types import CallToolResult

UPSTREAM_FAILED: Final = -32010
"""JSON-RPC code for a failed, crashed, stopped or timed-out upstream (implementation-defined server error range)."""

SESSION_REFUSED: Final = -32011
"""JSON-RPC code for a session that could not be created (a cap) or is closed."""

SHUTTING_DOWN: Final = -32012
"""JSON-RPC code for work refused or cut short because the proxy is shutting down."""

TOOL_CHANGED: Final = -32013
"""JSON-RPC code for a tool withheld because its definition changed since it was approved (see `pins`)."""

_CLOSE_RATIO: Final = 0.6
_CLOSE_MARGIN: Final = 0.1


class ProxyError(Exception):
    """Base of every error the proxy raises on purpose."""

    code: int = INTERNAL_ERROR
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ProxyError):
    """The config file, or one value in it (or in a request), is invalid."""

    code = INVALID_PARAMS
    http_status = 400


class NameCollisionError(ConfigError):
    """Two upstreams expose the same tool name in a static config."""


class UnknownToolError(ProxyError):
    code = INVALID_PARAMS
    http_status = 404


class UnknownPromptError(ProxyError):
    code = INVALID_PARAMS
    http_status = 404


class UnknownResourceError(ProxyError):
    # -32002 was retired by the spec; like the SDK, an unknown URI is invalid params, with the URI in `data.uri`.
    code = INVALID_PARAMS
    http_status = 404

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class UnknownServiceError(ProxyError):
    code = INVALID_PARAMS
    http_status = 404


class AmbiguousToolError(ProxyError):
    code = INVALID_PARAMS
    http_status = 400


class UpstreamError(ProxyError):
    code = UPSTREAM_FAILED
    http_status = 502

    def __init__(self, upstream: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.upstream = upstream
        self.detail = detail
        """What only operators may see (an upstream's stderr can hold secrets): logs and `/admin/status`."""

    @property
    def described(self) -> str:
        """The message with its detail: for the log, and for whoever holds the exception in the operator's own
        process (`str(error)`); the wire carries `message` alone, the detail only to admins."""
        return f"{self.message}; {self.detail}" if self.detail else self.message

    def __str__(self) -> str:
        return self.described


class UpstreamStartError(UpstreamError):
    pass


class UpstreamClosedError(UpstreamError):
    def __init__(self, upstream: str, message: str, *, is_retryable: bool = False, detail: str | None = None) -> None:
        super().__init__(upstream, message, detail=detail)
        self.is_retryable = is_retryable
        """True when the upstream provably never ran the request (its HTTP session had expired)."""


class UpstreamStoppedError(UpstreamError):
    def __init__(self, upstream: str, message: str, *, was_sent: bool = True, detail: str | None = None) -> None:
        super().__init__(upstream, message, detail=detail)
        self.was_sent = was_sent
        """Whether the request had reached the upstream; one that had not may run again on a fresh session."""


class UpstreamTimeoutError(UpstreamError):
    http_status = 504


class SessionError(ProxyError):
    code = SESSION_REFUSED
    http_status = 409


class InvalidSessionKeyError(SessionError):
    code = INVALID_PARAMS
    http_status = 400


class SessionLimitError(SessionError):
    http_status = 429


class ConnectionLimitError(SessionLimitError):
    http_status = 503


class SessionClosedError(SessionError):
    http_status = 404


class AccessError(ProxyError):
    code = INVALID_REQUEST
    http_status = 403


class AuthenticationError(AccessError):
    http_status = 401

    def __init__(self, message: str, *, reason: str | None) -> None:
        super().__init__(message)
        self.reason = reason
        """The OAuth error code for `WWW-Authenticate` (`invalid_token`), or None when no token was presented."""


class PermissionDeniedError(AccessError):
    pass


class ToolChangedError(ProxyError):
    """Names the tool, says what changed, and how to approve it."""

    code = TOOL_CHANGED
    http_status = 409


class ToolError(ProxyError):
    """The tool ran and answered `isError: true`; carries the tool's name, its error text and the whole result."""

    http_status = 502

    def __init__(self, tool: str, text: str, result: CallToolResult) -> None:
        super().__init__(f"tool {tool!r} answered with an error: {text or '(no text)'}")
        self.tool = tool
        self.text = text
        self.result = result


class RequestTooLargeError(ProxyError):
    code = INVALID_REQUEST
    http_status = 413


class ShuttingDownError(ProxyError):
    code = SHUTTING_DOWN
    http_status = 503


def error_data(error: ProxyError, *, for_operator: bool = False) -> dict[str, str]:
    """What travels with one of our errors besides its message: its type, the upstream it names (so that the
    remote SDK raises the same exception the embedded one would), and, `for_operator` only, its detail."""
    data: dict[str, str] = {"type": type(error).__name__}
    if isinstance(error, UnknownResourceError) and error.uri is not None:
        data["uri"] = error.uri
    if isinstance(error, UpstreamError):
        data["upstream"] = error.upstream
        if for_operator and error.detail:
            data["detail"] = error.detail
    return data


def to_mcp_error(error: ProxyError) -> MCPError:
    """The MCP form of one of our errors: its code, its message, and `error_data` in `data`."""
    return MCPError(code=error.code, message=error.message, data=error_data(error))


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`; did you mean 'x'?` naming the real names closest to the unknown `name`, or `""` when none is close.

    Close is a `difflib` ratio of at least 0.6 and within 0.1 of the best one's (names sharing a long prefix,
    such as a service's tools, all score well against each other), at most three, closest first.
    """
    matcher = difflib.SequenceMatcher(b=name)
    scores: dict[str, float] = {}
    for candidate in set(candidates):
        matcher.set_seq1(candidate)
        scores[candidate] = matcher.ratio()
    floor = max(_CLOSE_RATIO, max(scores.values(), default=1.0) - _CLOSE_MARGIN)
    close = sorted((c for c, score in scores.items() if score >= floor), key=lambda c: (-scores[c], c))[:3]
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def innermost(error: BaseException | None) -> BaseException | None:
    """The first real exception inside (possibly nested) task-group exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = cast("BaseExceptionGroup[BaseException]", error).exceptions[0]
    return error


def first_line(error: BaseException) -> str:
    """`Type: first line of the message` of the innermost exception, for a one-line error or log."""
    inner = innermost(error) or error
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0]}" if text else type(inner).__name__
