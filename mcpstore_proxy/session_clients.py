"""The client an upstream session runs on, behind one interface: the proxy's own (`upstream_client.LeanClient`), or
the SDK's `ClientSession` (`SdkClient`).

`session_client` picks it: the proxy's own wherever `DirectRequests` can write the session's messages (an upstream
over stdio, or in memory) and nothing is traced; the SDK's for an upstream over HTTP or SSE, whose transport needs
the headers the SDK's client adds to each request, and under `tracing: true`, whose client spans the SDK opens.
Either answers `request` (a call or any request with its wire form, the raw result back), `fetch` (a listing's
page), `notify`, and keeps its upstream's `initialize` answer, the copy every session of that upstream shares
(`share_initialize_result`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, Protocol, Self

import anyio
from mcp import ClientSession, types
from mcp.shared.dispatcher import ProgressFnT
from pydantic import RootModel

from mcpstore_proxy.client_capabilities import ClientCapability
from mcpstore_proxy.compat import WriteStream, in_a_trace, is_tracing
from mcpstore_proxy.direct_requests import DirectRequests
from mcpstore_proxy.interned import Interned
from mcpstore_proxy.relay import SessionRelay
from mcpstore_proxy.transports import SessionReadStream
from mcpstore_proxy.upstream_client import CLIENT_INFO, LeanClient

__all__ = ["SdkClient", "SessionClient", "session_client", "share_initialize_result"]

_INITIALIZE_RESULTS: Final = Interned[types.InitializeResult](64)
"""The upstreams' `initialize` answers, each kept once however many sessions got it (see `interned`)."""


class SessionClient(Protocol):
    """What an upstream session asks of its client once it is ready."""

    @property
    def initialize_result(self) -> types.InitializeResult | None: ...

    @property
    def server_capabilities(self) -> types.ServerCapabilities | None: ...

    def adopt(self, result: types.InitializeResult) -> None: ...

    def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        typed: Callable[[], types.ClientRequest],
        *,
        timeout: float,
        progress: ProgressFnT | None,
    ) -> Awaitable[dict[str, Any]]:
        """The raw result of `method` with `params` (`typed()` builds its model, where the SDK's client sends it).

        Raises:
            MCPError: the upstream's error, or the session ended.
            TimeoutError: no answer within `timeout` seconds (the request is cancelled upstream).
        """
        ...

    async def fetch(self, request: types.ClientRequest) -> dict[str, Any]:
        """The raw result of `request`, with no deadline of its own (a listing's page)."""
        ...

    async def notify(self, notification: types.ClientNotification) -> None: ...


class _RawResult(RootModel[dict[str, Any]]):
    """A result exactly as the upstream sent it: every field kept, nothing re-validated."""


class SdkClient:
    """The SDK's `ClientSession` as a `SessionClient`; over stdio, what wants no progress reports and is not traced
    still goes out through `direct`."""

    __slots__ = ("_direct", "_session")

    def __init__(self, session: ClientSession, direct: DirectRequests | None) -> None:
        self._session = session
        self._direct = direct

    @property
    def initialize_result(self) -> types.InitializeResult | None:
        return self._session.initialize_result

    @property
    def server_capabilities(self) -> types.ServerCapabilities | None:
        return self._session.server_capabilities

    def adopt(self, result: types.InitializeResult) -> None:
        self._session.adopt(result)  # public, and sends nothing: the negotiated state, from an equal answer

    async def __aenter__(self) -> Self:
        await self._session.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._session.__aexit__(exc_type, exc, tb)

    async def initialize(self) -> None:
        await self._session.initialize()

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        typed: Callable[[], types.ClientRequest],
        *,
        timeout: float,
        progress: ProgressFnT | None,
    ) -> dict[str, Any]:
        # A traced call goes through the SDK's client, which opens its span and passes the trace on.
        if self._direct is not None and progress is None and not in_a_trace():
            return await self._direct.request(method, params, timeout=timeout)
        with anyio.fail_after(timeout):
            return (await self._session.send_request(typed(), _RawResult, progress_callback=progress)).root

    async def fetch(self, request: types.ClientRequest) -> dict[str, Any]:
        return (await self._session.send_request(request, _RawResult)).root

    async def notify(self, notification: types.ClientNotification) -> None:
        await self._session.send_notification(notification)


def session_client(
    read_stream: SessionReadStream,
    write_stream: WriteStream[Any],
    direct: DirectRequests | None,
    relay: SessionRelay,
    declared: frozenset[ClientCapability],
    on_end: Callable[[], None],
) -> LeanClient | SdkClient:
    """The client for a session on these streams (see the module docstring); `declared`, what its downstream
    client declared (sampling, elicitation, roots), is declared upstream in turn."""
    if direct is not None and not is_tracing():
        return LeanClient(read_stream, direct, relay, declared, on_end)
    session = ClientSession(
        read_stream,
        write_stream,
        message_handler=relay.on_message,
        sampling_callback=relay.sampling if "sampling" in declared else None,
        elicitation_callback=relay.elicitation if "elicitation" in declared else None,
        list_roots_callback=relay.list_roots if "roots" in declared else None,
        client_info=CLIENT_INFO,
    )
    return SdkClient(session, direct)


def share_initialize_result(client: SessionClient) -> None:
    """Have `client` keep the copy of its upstream's answer to `initialize` that other sessions keep (in a frame
    of its own: the session's serving frame lives as long as the session, and must not hold its own copy)."""
    result = client.initialize_result
    assert result is not None  # initialized
    shared = _INITIALIZE_RESULTS.get(result)
    if shared is not result:
        client.adopt(shared)
