"""The proxy's one error hierarchy, and its single translation to MCP errors.

    ProxyError
     ├── ConfigError              the YAML/JSON config or a value in it is wrong
     │    └── NameCollisionError  two upstreams expose the same tool name
     ├── UnknownToolError         no exposed tool has that name
     ├── UnknownPromptError       no exposed prompt has that name
     ├── UnknownResourceError     no upstream offers that resource URI
     ├── UnknownServiceError      no service of that name in this scope
     ├── AmbiguousToolError       a short tool name matches several services' tools
     ├── UpstreamError            an upstream failed; names the upstream
     │    ├── UpstreamStartError   it could not be started or initialized
     │    ├── UpstreamClosedError  its connection ended while in use (crash, exit)
     │    └── UpstreamTimeoutError a call exceeded the upstream's call timeout
     └── SessionError             the session could not serve the request
          ├── InvalidSessionKeyError the explicit session key is malformed
          ├── SessionLimitError    the upstream's session cap is reached
          └── SessionClosedError   the session was closed while the call waited

Errors that the upstream itself answered (an `MCPError` from its JSON-RPC
reply) are not wrapped: the client sees the upstream's own code and message.
`to_mcp_error` is the one place our errors become wire errors.
"""

from __future__ import annotations

from typing import Final

from mcp import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS

UPSTREAM_FAILED: Final = -32010
"""JSON-RPC code for a failed, crashed or timed-out upstream (implementation-defined server error range)."""

SESSION_REFUSED: Final = -32011
"""JSON-RPC code for a session that could not be created or was closed under the call."""


class ProxyError(Exception):
    """Base of every error the proxy raises on purpose."""

    code: int = INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ProxyError):
    """The config file, or one value in it, is invalid."""


class NameCollisionError(ConfigError):
    """Two upstreams expose the same tool name in a static config."""


class UnknownToolError(ProxyError):
    code = INVALID_PARAMS


class UnknownPromptError(ProxyError):
    code = INVALID_PARAMS


class UnknownResourceError(ProxyError):
    # -32002 was retired by the spec; like the SDK, an unknown URI is invalid params.
    code = INVALID_PARAMS


class UnknownServiceError(ProxyError):
    code = INVALID_PARAMS


class AmbiguousToolError(ProxyError):
    code = INVALID_PARAMS


class UpstreamError(ProxyError):
    code = UPSTREAM_FAILED

    def __init__(self, upstream: str, message: str) -> None:
        super().__init__(message)
        self.upstream = upstream


class UpstreamStartError(UpstreamError):
    pass


class UpstreamClosedError(UpstreamError):
    def __init__(self, upstream: str, message: str, *, is_retryable: bool = False) -> None:
        super().__init__(upstream, message)
        self.is_retryable = is_retryable
        """True when the upstream provably never ran the request (its HTTP session had expired)."""


class UpstreamTimeoutError(UpstreamError):
    pass


class SessionError(ProxyError):
    code = SESSION_REFUSED


class InvalidSessionKeyError(SessionError):
    code = INVALID_PARAMS


class SessionLimitError(SessionError):
    pass


class SessionClosedError(SessionError):
    pass


def to_mcp_error(error: ProxyError) -> MCPError:
    """The wire form of one of our errors: its code, its message, and in `data` its type and the upstream it
    names (so that the remote SDK raises the same exception the embedded one would)."""
    data: dict[str, str] = {"type": type(error).__name__}
    if isinstance(error, UpstreamError):
        data["upstream"] = error.upstream
    return MCPError(code=error.code, message=error.message, data=data)
