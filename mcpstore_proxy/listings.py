"""A catalog's listings (`tools/list` and its kin), shaped for the wire once, for the SDK's handlers and the fast
lane alike.

Shaping a thousand tools as the SDK does (validation, then serialisation for the client's protocol version) costs
tens of milliseconds, and a catalog is replaced, never changed: so each catalog's listings are shaped the first
time one is asked for, per method and protocol version, and forgotten with the catalog. The SDK's handler chain
gets its own result back; the lane gets that result as JSON bytes, with only the request id left to splice in, and,
for a client that accepts gzip, as a gzip body deflated once (see `compressed`) with only the id left to append.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
from mcp import types
from mcp.server.context import HandlerResult
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from mcp_types import SERVER_INFO_META_KEY
from mcp_types.methods import serialize_server_result
from pydantic import BaseModel

from mcpstore_proxy.catalog import Catalog
from mcpstore_proxy.compressed import GZIP_MINIMUM_SIZE, GzipHead
from mcpstore_proxy.json_bytes import to_json

__all__ = ["LISTINGS", "ShapedListings", "WireListing", "listing_result"]

_RESULTS: Final[dict[str, Callable[[Catalog], BaseModel]]] = {
    "tools/list": lambda catalog: types.ListToolsResult(tools=catalog.tools),
    "prompts/list": lambda catalog: types.ListPromptsResult(prompts=catalog.prompts),
    "resources/list": lambda catalog: types.ListResourcesResult(resources=catalog.resources),
    "resources/templates/list": lambda catalog: types.ListResourceTemplatesResult(resource_templates=catalog.templates),
}
LISTINGS: Final = frozenset(_RESULTS)
"""The methods answered from the catalog a key sees, never by opening a session."""


def listing_result(method: str, catalog: Catalog) -> BaseModel:
    """What `method` (one of `LISTINGS`) answers from `catalog`, all of it (the proxy does not paginate)."""
    return _RESULTS[method](catalog)


class WireListing:
    """One listing's result on the wire: `json`, and `gzip_head`, the answer before its id deflated once."""

    __slots__ = ("_gzip_head", "json")

    def __init__(self, json: bytes) -> None:
        self.json = json
        self._gzip_head: GzipHead | None = None

    @property
    def gzip_head(self) -> GzipHead | None:
        """`{"jsonrpc":"2.0","result":<json>,"id":` deflated (the first time it is asked for); None where the
        listing is too small to be worth compressing."""
        if self._gzip_head is None and len(self.json) >= GZIP_MINIMUM_SIZE:
            self._gzip_head = GzipHead(b'{"jsonrpc":"2.0","result":' + self.json + b',"id":')
        return self._gzip_head

    def answer(self, request_id: str | int) -> bytes:
        """The JSON-RPC answer to the listing request `request_id`, in JSON."""
        return b'{"jsonrpc":"2.0","id":' + to_json(request_id) + b',"result":' + self.json + b"}"

    def gzipped_answer(self, request_id: str | int) -> bytes | None:
        """That answer as a gzip body (see `compressed`); None where the listing is too small to compress."""
        head = self.gzip_head
        return None if head is None else head.body(to_json(request_id) + b"}")


class ShapedListings:
    def __init__(self, server_info: Mapping[str, Any] | None = None) -> None:
        """`server_info`: the stamp a 2026-07-28 result carries in its `_meta` (the SDK's `server_info_stamp`)."""
        self._server_info = dict(server_info or {})
        self._results: weakref.WeakKeyDictionary[Catalog, dict[tuple[str, str], HandlerResult]] = (
            weakref.WeakKeyDictionary()
        )
        self._wire: weakref.WeakKeyDictionary[Catalog, dict[tuple[str, str], WireListing]] = weakref.WeakKeyDictionary()

    async def result(
        self, catalog: Catalog, method: str, version: str, shape: Callable[[], Awaitable[HandlerResult]]
    ) -> HandlerResult:
        """The SDK handler chain's result for a listing: `shape()` (the rest of that chain) the first time only."""
        shaped = self._results.setdefault(catalog, {})
        key = (method, version)
        if key not in shaped:
            shaped[key] = await shape()
        return shaped[key]

    def wire(self, catalog: Catalog, method: str, version: str) -> WireListing:
        """A listing's result as JSON, validated and sieved for `version` as the SDK shapes results (a 2026-07-28
        one stamped with the server's identity, as the SDK stamps it)."""
        shaped = self._wire.setdefault(catalog, {})
        key = (method, version)
        wire = shaped.get(key)
        if wire is None:
            result = listing_result(method, catalog).model_dump(by_alias=True, mode="json", exclude_none=True)
            result = serialize_server_result(method, version, result)
            if version in MODERN_PROTOCOL_VERSIONS:
                result.setdefault("resultType", "complete")
                result["_meta"] = {SERVER_INFO_META_KEY: self._server_info}  # a listing has no `_meta` of its own
            wire = shaped[key] = WireListing(orjson.dumps(result))
        return wire
