"""The request headers the proxy's HTTP layers read, found in one pass over the request's headers and kept with its
scope, so that the layers a request to /mcp passes (trimming, the gate, the front door, the fast lane) do not
each walk its headers again.

A pass over a request's ten or so headers costs about as much as the rest of a layer; each layer walking them
cost about 4% of the instructions of a forwarded call. The headers found are kept with the very list they were
found in: a layer that replaces the scope's headers (trimming their values, dropping `Last-Event-ID`) makes the
next reader find them again, never a stale copy.

Where a header is sent twice, the first one counts, as Starlette's `Headers.get` (and so the SDK) reads it; a
repeated `Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method` or `Mcp-Name` is noted (`repeats`), for the fast
lane to leave such a request to the SDK.
"""

from __future__ import annotations

from typing import Final

from mcp.server.streamable_http import LAST_EVENT_ID_HEADER, MCP_SESSION_ID_HEADER
from mcp.shared.inbound import MCP_METHOD_HEADER, MCP_NAME_HEADER, MCP_PROTOCOL_VERSION_HEADER
from starlette.types import Scope

__all__ = [
    "AGENT_HEADER",
    "CHECKED_HEADERS",
    "EXISTING_SESSION_HEADER",
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
EXISTING_SESSION_HEADER: Final = "x-mcpstore-existing-session"
"""Sent as `1` by the SDK's remote backend: a tool call must run in an open named session, not open one (see
`records.require`)."""
SESSION_KEY_HEADER: Final = "x-mcpstore-session"
"""The default `session_header`, found with the rest (another name by a pass of its own, see `first_value`)."""

CHECKED_HEADERS: Final = frozenset((b"accept", b"content-type", b"host", b"origin"))
"""The headers the SDK's transport checks judge (see `lane_wire.Acceptance`)."""

_KEPT: Final = {
    "authorization": b"authorization",
    "agent": AGENT_HEADER.encode(),
    "session_id": SESSION_ID,
    "protocol_version": PROTOCOL_VERSION,
    "content_length": b"content-length",
    "last_event_id": LAST_EVENT_ID,
    "session_key": SESSION_KEY_HEADER.encode(),
    "existing_session": EXISTING_SESSION_HEADER.encode(),
    "mcp_method": MCP_METHOD_HEADER.lower().encode(),
    "mcp_name": MCP_NAME_HEADER.lower().encode(),
}
"""The headers whose first value the pass keeps, by the `RequestHeaders` field that holds it, in the order the pass
assigns them."""
_NAMES: Final = tuple(_KEPT.values())
_ATTRIBUTES: Final = tuple(_KEPT)
_ONCE: Final = frozenset(
    _ATTRIBUTES.index(field) for field in ("session_id", "protocol_version", "mcp_method", "mcp_name")
)
"""The fields whose header, sent twice, makes the request doubtful (`repeats`)."""
_CHECKED = -1
_FIELDS: Final[dict[bytes, int]] = {
    **{name: field for field, name in enumerate(_NAMES)},
    **dict.fromkeys(CHECKED_HEADERS, _CHECKED),
}
_OWS: Final = b" \t"  # optional whitespace: space, tab
_SCOPE_KEY: Final = "mcpstore_proxy.headers"


class RequestHeaders:
    """What one request's headers say, for the proxy's layers (see the module docstring): the first value of
    `Authorization`, `X-MCPStore-Agent` (`agent`), `Mcp-Session-Id`, `MCP-Protocol-Version`, `Content-Length`,
    `Last-Event-ID` (a resumption), `X-MCPStore-Session` (`session_key`), `X-MCPStore-Existing-Session`
    (`existing_session`), `Mcp-Method` and `Mcp-Name` (a 2026-07-28 request's routing), each None when not sent;
    and the rest below."""

    __slots__ = (
        "agent",
        "authorization",
        "checked",
        "content_length",
        "existing_session",
        "is_padded",
        "last_event_id",
        "mcp_method",
        "mcp_name",
        "protocol_version",
        "repeats",
        "session_id",
        "session_key",
        "source",
    )

    def __init__(self, source: list[tuple[bytes, bytes]]) -> None:
        self.source = source
        """The headers list this was found in."""
        values: list[bytes | None] = [None] * len(_NAMES)
        checked: list[tuple[bytes, bytes]] = []
        is_padded = repeats = False
        fields, ows, once = _FIELDS, _OWS, _ONCE
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
            elif field in once:
                repeats = True
        (  # in the order of `_KEPT`
            self.authorization,
            self.agent,
            self.session_id,
            self.protocol_version,
            self.content_length,
            self.last_event_id,
            self.session_key,
            self.existing_session,
            self.mcp_method,
            self.mcp_name,
        ) = values
        self.checked = checked
        """The headers the SDK's transport checks judge, as sent: repeats and order included."""
        self.is_padded = is_padded
        """Whether a value has whitespace around it (RFC 9110 §5.5: not part of the value)."""
        self.repeats = repeats
        """Whether `Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method` or `Mcp-Name` was sent more than once."""

    def declares_more_than(self, limit: int) -> bool:
        """Whether the request declares a body past `limit` bytes (`Content-Length`), which a transport refuses
        unread."""
        declared = self.content_length
        return declared is not None and declared.isdigit() and int(declared) > limit


def request_headers(scope: Scope) -> RequestHeaders:
    """What the request's headers say: found once per headers list, and kept with the scope."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    found: RequestHeaders | None = scope.get(_SCOPE_KEY)
    if found is None or found.source is not headers:
        found = scope[_SCOPE_KEY] = RequestHeaders(headers)
    return found


def first_value(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the request header `name` (lower case): from the request's one pass where that looks
    for `name`, else by a pass of its own."""
    field = _FIELDS.get(name, _CHECKED)
    if field != _CHECKED:
        found: bytes | None = getattr(request_headers(scope), _ATTRIBUTES[field])
        return found
    for key, value in scope["headers"]:  # a plain loop, not a generator
        if key == name:
            return value
    return None
