"""What the fast lane (see `lane`) needs to serve a 2026-07-28 `tools/call`, or a listing, exactly as the SDK's
single-exchange entry would, without it.

Through the SDK, every such call is judged from scratch: a `Request`, the transport checks, the envelope's
classification, pydantic validation of the request, of its `_meta` (twice) and of the client's capabilities, a
`Connection` and a server session built for it, and in event-stream mode a task group of two tasks and a memory
stream. A client sends the same envelope with every call, so the lane judges each distinct envelope once, by the
SDK's own validation, and remembers the verdict (a bounded number); what varies per call (the ladder's header
rungs, the id, the name, the arguments, the progress token) is checked per call, with the SDK's own functions
where it has them.

What takes this lane: a POST whose `MCP-Protocol-Version` is a 2026-07-28 version, with each routing header once,
no `Mcp-Session-Id`, `Last-Event-ID` or `Mcp-Param-*` header, that the SDK would accept (media types, Host,
Origin), carrying one JSON-RPC `tools/call` whose params hold only `name`, `arguments` and `_meta`, and whose
`_meta` holds only the envelope (protocol version, client capabilities, client info) and a progress token, passing
the SDK's inbound ladder and its validation, from a client that declared nothing an upstream could ask of it (one
that did is asked in `input_required` rounds: see `rounds`), for a tool whose input schema maps no argument to a
header. Anything else goes to the SDK unchanged, which answers it, or refuses it, itself.

A listing (`tools/list` and its kin, see `listings`) takes the lane on the same conditions of headers, envelope and
ladder (from any client: a listing asks nothing of it), when its params hold only the envelope (no cursor: the
proxy lists everything at once anyway), and the server sets no cache hints of its own for it. Its answer is the
catalog's wire form for the version, shaped once and stamped with `serverInfo` as the SDK stamps it (see
`listings`); through the SDK, each such listing of a thousand tools was dumped, validated and encoded again: 14.5
ms of proxy CPU on a 2-core cloud machine, against about 1 in the lane.

The answer is the SDK's: the result sieved by the SDK's own surface for the version, `resultType` and the
`serverInfo` stamp added, an error with the SDK's HTTP status for its code; a JSON body unless something precedes
the answer (progress, a notice), or the call runs silent for `ping_seconds`, which opens an event stream (with a
comment line every `ping_seconds`, as the SDK sends).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, NamedTuple, TypeVar

from mcp import MCPError, types
from mcp.server.connection import Connection
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PARAM_HEADER_PREFIX,
    MCP_PROTOCOL_VERSION_HEADER,
    InboundModernRoute,
    classify_inbound_request,
    x_mcp_header_map,
)
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    CORE_RESULT_TYPES,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
)
from mcp_types import methods as _methods
from pydantic import BaseModel, ValidationError
from starlette.types import Scope

from mcpstore_proxy.client_capabilities import declared_by
from mcpstore_proxy.json_bytes import to_json
from mcpstore_proxy.lane_wire import (
    RequestId,
    ToolCall,
    is_id,
    tool_call,
)
from mcpstore_proxy.listings import LISTINGS
from mcpstore_proxy.request_headers import request_headers
from mcpstore_proxy.server import ProxyServer

__all__ = [
    "ERROR_STATUSES",
    "STREAM_HEADERS",
    "ModernCall",
    "ModernCalls",
    "ModernListing",
    "Routing",
    "is_kept_as_is",
    "routing_of",
]

logger = logging.getLogger(__name__)

_ResultT = TypeVar("_ResultT", bound=BaseModel)

ERROR_STATUSES: Final = ERROR_CODE_HTTP_STATUS
"""The HTTP status of a 2026-07-28 answer that is an error, by its code (200 for the rest), as the SDK sends it."""
STREAM_HEADERS: Final = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
)
"""The SDK's headers for a 2026-07-28 answer on an event stream."""

_MESSAGE_KEYS: Final = frozenset(("jsonrpc", "id", "method", "params"))
_PARAMS_KEYS: Final = frozenset(("name", "arguments", "_meta"))
_ENVELOPE_KEYS: Final = frozenset((PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY))
_META_KEYS: Final = _ENVELOPE_KEYS | {"progressToken"}
_LISTING_PARAMS_KEYS: Final = frozenset(("_meta",))
_REMEMBERED: Final = 256
_NO_ROUTING: Final[Mapping[str, str]] = {}
_PARAM_PREFIX: Final = MCP_PARAM_HEADER_PREFIX.lower().encode()
_PLAIN_RESULT_KEYS: Final = frozenset(("content", "structuredContent", "isError", "resultType"))
_TEXT_KEYS: Final = frozenset(("type", "text"))


class Routing(NamedTuple):
    """A POST's routing headers (by lower-case name), and the headers the transport checks judge (see
    `lane_wire.Acceptance`), from the request's one header pass (`request_headers`)."""

    headers: dict[str, str]
    checked: list[tuple[bytes, bytes]]


def routing_of(scope: Scope, limit: int) -> Routing | None:
    """A POST's routing headers, when its headers alone allow the lane to take it as a 2026-07-28 call (the
    ladder's header rungs are checked with its body); else None."""
    headers = request_headers(scope)
    version = headers.protocol_version
    if (
        version is None
        or headers.repeats  # a routing header repeated: the SDK refuses it
        or headers.session_id is not None
        or headers.last_event_id is not None
        or headers.declares_more_than(limit)  # the SDK refuses it unread
    ):
        return None
    for name, _ in headers.source:  # the SDK checks these against the tool's schema
        if name.startswith(_PARAM_PREFIX):
            return None
    routing = {MCP_PROTOCOL_VERSION_HEADER: version.decode("latin-1")}
    if routing[MCP_PROTOCOL_VERSION_HEADER] not in MODERN_PROTOCOL_VERSIONS:
        return None
    if headers.mcp_method is not None:
        routing[MCP_METHOD_HEADER] = headers.mcp_method.decode("latin-1")
    if headers.mcp_name is not None:
        routing[MCP_NAME_HEADER] = headers.mcp_name.decode("latin-1")
    return Routing(routing, headers.checked)


class ModernCall(NamedTuple):
    """A 2026-07-28 `tools/call` the lane takes: the call, the client as its envelope describes it, and the
    protocol version."""

    call: ToolCall
    connection: Connection
    version: str


class ModernListing(NamedTuple):
    """A 2026-07-28 listing the lane takes: its method and id, the client as its envelope describes it, and the
    protocol version."""

    method: str
    id: RequestId
    connection: Connection
    version: str


class ModernCalls:
    """Which 2026-07-28 calls and listings the lane may take (`call`, `listing`), and calls' answers in the SDK's
    shape (`result`)."""

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._envelopes: dict[bytes, tuple[Connection, bool] | None] = {}
        """Each distinct envelope's client and whether it may be asked (it declared something an upstream could ask
        of it), or None where the SDK refuses the envelope."""
        self._routes: dict[tuple[object, ...], str] = {}
        """The ladder's verdicts on calls (see `_version`): the version, or "" where it refuses them."""
        self._header_schemas: dict[int, tuple[Mapping[str, Any], bool]] = {}
        """Whether an input schema maps arguments to headers, by the schema (held, so that its id stays its own)."""
        self._stamp = server.server_info_stamp
        self.is_open = "tools/call" not in server.cache_hints
        """False where the server adds cache hints to calls, which the lane does not."""
        self._listings = LISTINGS - server.cache_hints.keys()
        """The listings the lane may answer: those the server adds no cache hints of its own to."""

    def call(self, message: dict[str, Any], routing: Mapping[str, str] | None) -> ModernCall | None:
        """The call `message` asks for, when the lane may serve it exactly as the SDK would; else None. `routing`:
        its HTTP routing headers, None over stdio (which has none: the ladder skips their rungs)."""
        # Subset tests, not set differences, which build a set each (this runs for every 2026-07-28 call).
        if not message.keys() <= _MESSAGE_KEYS or message.get("method") != "tools/call":
            return None
        call = tool_call(message)
        if call is None:
            return None
        params: dict[str, Any] = message["params"]
        meta = params.get("_meta")
        if not params.keys() <= _PARAMS_KEYS or type(meta) is not dict or not meta.keys() <= _META_KEYS:  # pyright: ignore[reportUnknownMemberType]
            return None
        envelope: dict[str, Any] = meta  # pyright: ignore[reportUnknownVariableType]  (parsed JSON: string keys)
        version = self._version(message, routing, call.name, envelope)
        if version is None:
            return None
        client = self._client(version, envelope)
        if client is None or client[1] or (call.arguments and self._maps_headers(call.name)):
            return None  # refused, or a client that may be asked (in rounds: see `rounds`)
        return ModernCall(call, client[0], version)

    def listing(self, message: dict[str, Any], routing: Mapping[str, str] | None) -> ModernListing | None:
        """The listing `message` asks for, when the lane may answer it exactly as the SDK would; else None."""
        method = message.get("method")
        request_id = message.get("id")
        params = message.get("params")
        if method not in self._listings or not is_id(request_id) or not message.keys() <= _MESSAGE_KEYS:
            return None
        if type(params) is not dict:
            return None
        fields: dict[str, Any] = params  # pyright: ignore[reportUnknownVariableType]  (parsed JSON: string keys)
        meta = fields.get("_meta")
        if not fields.keys() <= _LISTING_PARAMS_KEYS or type(meta) is not dict or not meta.keys() <= _ENVELOPE_KEYS:  # pyright: ignore[reportUnknownMemberType]
            return None
        envelope: dict[str, Any] = meta  # pyright: ignore[reportUnknownVariableType]  (parsed JSON: string keys)
        version = self._version(message, routing, "", envelope)
        if version is None:
            return None
        client = self._client(version, envelope)
        if client is None:
            return None
        return ModernListing(method, request_id, client[0], version)  # a listing asks its client nothing

    def result(self, result: dict[str, Any], version: str) -> dict[str, Any]:
        """A call's result as the SDK's server answers it: marked complete, sieved by the version's surface,
        stamped with the server's identity.

        Raises:
            MCPError: the upstream's result is not one (as the SDK says of a handler's).
        """
        result.setdefault("resultType", "complete")  # upstreams speak the handshake era (see `server`)
        kind = result["resultType"]
        if (not isinstance(kind, str) or kind in CORE_RESULT_TYPES) and not is_kept_as_is(result):
            try:
                result = _methods.serialize_server_result("tools/call", version, result)
            except ValidationError:
                logger.exception("the upstream returned an invalid tools/call result")
                raise MCPError(code=types.INTERNAL_ERROR, message="Handler returned an invalid result") from None
        if result.get("resultType") is None:
            result["resultType"] = "complete"
        meta = result.get("_meta")
        if meta is None:
            result["_meta"] = {SERVER_INFO_META_KEY: self._stamp}
        elif type(meta) is dict and meta.get(SERVER_INFO_META_KEY) is None:  # pyright: ignore[reportUnknownMemberType]
            result["_meta"] = {**meta, SERVER_INFO_META_KEY: self._stamp}  # pyright: ignore[reportUnknownArgumentType]
        return result

    def _version(
        self, message: dict[str, Any], routing: Mapping[str, str] | None, name: str, meta: dict[str, Any]
    ) -> str | None:
        """The protocol version of a request the SDK's ladder (`classify_inbound_request`) routes as modern, else
        None. The ladder reads the routing headers, the method, the tool's name (`name`; "" for a listing) and the
        envelope's version and capabilities alone, so its verdict is remembered by those."""
        claimed = meta.get(PROTOCOL_VERSION_META_KEY)
        if type(claimed) is not str:
            verdict = classify_inbound_request(message, headers=routing)
            return verdict.protocol_version if isinstance(verdict, InboundModernRoute) else None
        # Over stdio (no `routing`) the lane has ModernCalls of its own: the two kinds of key never meet.
        key = (
            *(routing or _NO_ROUTING).items(),
            message["method"],
            name,
            claimed,
            CLIENT_CAPABILITIES_META_KEY in meta,
        )
        routed = self._routes.get(key)
        if routed is None:
            verdict = classify_inbound_request(message, headers=routing)
            routed = verdict.protocol_version if isinstance(verdict, InboundModernRoute) else ""
            if len(self._routes) >= _REMEMBERED:
                self._routes.clear()
            self._routes[key] = routed
        return routed or None

    def _client(self, version: str, meta: dict[str, Any]) -> tuple[Connection, bool] | None:
        """The client an envelope describes, and whether it may be asked; None where the SDK refuses it."""
        envelope = meta if "progressToken" not in meta else {k: v for k, v in meta.items() if k != "progressToken"}
        remembered = to_json(envelope)  # the same bytes for the same envelope: a client sends its own each time
        if remembered in self._envelopes:
            return self._envelopes[remembered]
        client: tuple[Connection, bool] | None
        try:
            _methods.validate_client_request("tools/call", version, {"name": "-", "_meta": envelope})
        except (ValidationError, KeyError, ValueError):
            client = None
        else:
            # Shared by the requests of one envelope: nothing in the lane enters its exit stack or writes its state.
            connection = Connection.from_envelope(
                version, envelope.get(CLIENT_INFO_META_KEY), envelope[CLIENT_CAPABILITIES_META_KEY]
            )
            client = connection, bool(declared_by(connection.client_capabilities))
        if len(self._envelopes) >= _REMEMBERED:
            self._envelopes.clear()
        self._envelopes[remembered] = client
        return client

    def _maps_headers(self, name: str) -> bool:
        downstream = self._server.downstream
        if not downstream.tools_may_map_headers:
            return False  # the usual case, without resolving the request's key to find its catalog
        schema = downstream.input_schema(name)
        if schema is None:
            return False
        known = self._header_schemas.get(id(schema))
        if known is None or known[0] is not schema:
            if len(self._header_schemas) >= _REMEMBERED:
                self._header_schemas.clear()
            known = self._header_schemas[id(schema)] = (schema, bool(x_mcp_header_map(schema)))
        return known[1]


def is_kept_as_is(result: dict[str, Any]) -> bool:
    """Whether the version's surface would give `result` back as it is: a complete result of text content, with
    structured content and the error flag, nothing else (most tools'). The rest is sieved by the SDK's own
    surface, which drops what the version does not know and the nulls it does."""
    if not result.keys() <= _PLAIN_RESULT_KEYS or result["resultType"] != "complete":
        return False
    content = result.get("content")
    if type(content) is not list or type(result.get("isError", False)) is not bool:
        return False
    if "structuredContent" in result and type(result["structuredContent"]) is not dict:
        return False
    items: list[Any] = content  # pyright: ignore[reportUnknownVariableType]  (parsed JSON)
    return all(map(_is_plain_text, items))  # no generator frame: this runs for every result


def _is_plain_text(item: Any) -> bool:
    if type(item) is not dict:
        return False
    text: dict[str, Any] = item  # pyright: ignore[reportUnknownVariableType]  (parsed JSON)
    return text.keys() == _TEXT_KEYS and text["type"] == "text" and type(text["text"]) is str
