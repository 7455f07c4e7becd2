"""The request headers the proxy's HTTP layers read, found in one pass over the request's headers and kept with its
scope, so that the layers a request to /mcp passes (trimming, the gate, the front door, the fast lane) do not
each walk its headers again.

A pass over a request's ten or so headers costs about as much as the rest of a layer; each layer walking them
cost about 4% of the instructions of a forwarded call. The headers found are kept with the very list they were
found in: a layer that replaces the scope's headers (trimming their values, dropping `Last-Event-ID`) makes the
next reader find them again, never a stale copy.

Where a header is sent twice, the first one counts, as Starlette's `Headers.get` (and so the SDK) reads it; a
repeated `Mcp-Session-Id` or `MCP-Protocol-Version` is noted (`repeats`), for the fast lane to leave such a
request to the SDK.
"""

from __future__ import annotations

from typing import Final

from mcp.server.streamable_http import LAST_EVENT_ID_HEADER, MCP_SESSION_ID_HEADER
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from starlette.types import Scope

__all__ = [
    "AGENT_HEADER",
    "CHECKED_HEADERS",
    "LAST_EVENT_ID",
    "PROTOCOL_VERSION",
    "SESSION_ID",
    "SESSION_KEY_HEADER",
    "RequestHeaders",
    "request_headers",
]

SESSION_ID: Final = MCP_SESSION_ID_HEADER.lower().encode()
PROTOCOL_VERSION: Final = MCP_PROTOCOL_VERSION_HEADER.lower().encode()
LAST_EVENT_ID: Final = LAST_EVENT_ID_HEADER.lower().encode()
AGENT_HEADER: Final = "x-mcpstore-agent"
SESSION_KEY_HEADER: Final = "x-mcpstore-session"
"""The default `session_header`: found with the rest (another name is looked for apart, see `first`)."""

CHECKED_HEADERS: Final = frozenset((b"accept", b"content-type", b"host", b"origin"))
"""The headers the SDK's transport checks judge (see `lane_wire.Acceptance`)."""

_AUTHORIZATION, _AGENT, _SESSION, _VERSION, _LENGTH, _LAST_EVENT, _SESSION_KEY = range(7)
_CHECKED = -1
_FIELDS: Final[dict[bytes, int]] = {
    b"authorization": _AUTHORIZATION,
    AGENT_HEADER.encode(): _AGENT,
    SESSION_ID: _SESSION,
    PROTOCOL_VERSION: _VERSION,
    b"content-length": _LENGTH,
    LAST_EVENT_ID: _LAST_EVENT,
    SESSION_KEY_HEADER.encode(): _SESSION_KEY,
    **dict.fromkeys(CHECKED_HEADERS, _CHECKED),
}
_OWS: Final = b" \t"  # optional whitespace: space, tab
_SCOPE_KEY: Final = "mcpstore_proxy.headers"


class RequestHeaders:
    """What one request's headers say, for the proxy's layers (see the module docstring): the first value of
    `Authorization`, `X-MCPStore-Agent` (`agent`), `Mcp-Session-Id`, `MCP-Protocol-Version`, `Content-Length`
    and `X-MCPStore-Session` (`session_key`), each None when not sent; and the rest below."""

    __slots__ = (
        "agent",
        "authorization",
        "checked",
        "content_length",
        "is_padded",
        "protocol_version",
        "repeats",
        "resumes",
        "session_id",
        "session_key",
        "source",
    )

    def __init__(self, source: list[tuple[bytes, bytes]]) -> None:
        self.source = source
        """The headers list this was found in."""
        values: list[bytes | None] = [None] * 7
        checked: list[tuple[bytes, bytes]] = []
        is_padded = repeats = False
        fields, ows = _FIELDS, _OWS
        for header in source:  # one pass, as plain as it gets: this runs for every request
            name, value = header
            if value.strip(ows) is not value:  # the same object when there is nothing to strip
                is_padded = True
            field = fields.get(name)
            if field is None:
                continue
            if field == _CHECKED:
                checked.append(header)
            elif values[field] is None:
                values[field] = value
            elif field in (_SESSION, _VERSION):
                repeats = True
        (
            self.authorization,
            self.agent,
            self.session_id,
            self.protocol_version,
            self.content_length,
            last_event_id,
            self.session_key,
        ) = values
        self.resumes = last_event_id is not None
        """Whether it carries a `Last-Event-ID` (a resumption of an event stream)."""
        self.checked = checked
        """The headers the SDK's transport checks judge, as sent: repeats and order included."""
        self.is_padded = is_padded
        """Whether a value has whitespace around it (RFC 9110 §5.5: not part of the value)."""
        self.repeats = repeats
        """Whether `Mcp-Session-Id` or `MCP-Protocol-Version` was sent more than once."""


def request_headers(scope: Scope) -> RequestHeaders:
    """What the request's headers say: found once per headers list, and kept with the scope."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    found: RequestHeaders | None = scope.get(_SCOPE_KEY)
    if found is None or found.source is not headers:
        found = scope[_SCOPE_KEY] = RequestHeaders(headers)
    return found


def first_value(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the request header `name` (lower case): `X-MCPStore-Session` as found with the rest,
    any other by a pass of its own."""
    if name == _SESSION_KEY_NAME:
        return request_headers(scope).session_key
    for key, value in scope["headers"]:  # a plain loop, not a generator
        if key == name:
            return value
    return None


_SESSION_KEY_NAME: Final = SESSION_KEY_HEADER.encode()
