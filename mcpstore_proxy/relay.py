"""Where an upstream's own messages go: to the downstream client that owns the upstream session.

Upstreams start messages of their own: log entries, progress, resource updates,
change notices, and requests back to the client (sampling, elicitation, roots).
`SessionRelay` delivers each one to a downstream client:

- to the request stream of the most recent call in flight on that session, so
  a log entry or a sampling request is tied to the call that caused it;
- with no call in flight, to the connection that used the session last;
- with neither, requests are refused with an error and notifications dropped.

Resource updates and list changes concern the session, not a call, so they go
to the owning connection's own stream. A shared upstream's single session is
used by every client: whoever has a call in flight on it is asked, else
whoever called last.

Ordering: the session's client hands each upstream notification to its own task. A call
whose result arrives right after a notification waits (briefly) until every
forward that started before it has been delivered, so a client sees a call's
log entries and progress before its result.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

import anyio
from mcp import MCPError, types
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp.shared.dispatcher import ProgressFnT
from pydantic import BaseModel

from mcpstore_proxy.outstanding import Outstanding

__all__ = ["ClientCall", "ClientChannel", "ListKind", "SessionRelay"]

logger = logging.getLogger(__name__)

_ResultT = TypeVar("_ResultT", bound=BaseModel)
_DRAIN_SECONDS: Final = 2.0

ListKind = str
"""A listing: "tools", "prompts", "resources" or "templates" (resource templates)."""

_LIST_CHANGED: Final[dict[type[BaseModel], ListKind]] = {
    types.ToolListChangedNotification: "tools",
    types.PromptListChangedNotification: "prompts",
    types.ResourceListChangedNotification: "resources",
}


class ClientChannel(Protocol):
    """A way to reach one downstream client: one request's own stream, or its connection's standalone stream."""

    @property
    def capabilities(self) -> types.ClientCapabilities | None: ...

    @property
    def accepts_requests(self) -> bool:
        """Whether server-to-client requests can be sent here (never to a 2026-07-28 client)."""
        ...

    async def notify(self, notification: types.ServerNotification) -> None: ...

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT: ...


@dataclass(eq=False, slots=True)
class ClientCall:
    """A downstream request in flight on an upstream session."""

    stream: ClientChannel
    """The request's own stream: what the upstream says during the call goes here."""
    connection: ClientChannel | None
    """Where what the session says outside a call goes: the client's connection, or for a 2026-07-28 client its
    key's listen streams (see `Downstream.connection_channel`); None until `ProxyServer.call_tool` resolves the key
    of a 2026-07-28 call from the fast lane."""
    progress: ProgressFnT | None = None
    """Reports progress under the caller's own token; `None` when the caller asked for none."""


class SessionRelay:
    """Routes what one upstream session starts to the downstream client that owns it."""

    def __init__(self, upstream: str, *, exposed_uri: Callable[[str], str] | None = None) -> None:
        self.upstream = upstream
        self.owner: ClientChannel | None = None
        self.on_list_changed: Callable[[ListKind], Awaitable[None]] | None = None
        """Refreshes what the session lists; set by whoever keeps the listings."""
        self.on_resource_updated: Callable[[types.ResourceUpdatedNotification], Awaitable[None]] | None = None
        """Delivers a resource update (upstream URI) to its subscribers; without it, the owner gets it."""
        self.announces_list_changes = True
        """Tell the owner about list changes; off for catalog sessions, whose changes reach every client."""
        self._calls: list[ClientCall] = []
        self._exposed_uri = exposed_uri
        self._forwards = Outstanding()
        """The upstream's messages being forwarded to a client now; a call's result waits for them."""

    def __repr__(self) -> str:
        return f"<SessionRelay {self.upstream}: {len(self._calls)} calls in flight>"

    def call_began(self, call: ClientCall) -> None:
        """`call` is in flight: the upstream's messages go to it, until `call_ended`."""
        self._calls.append(call)
        if call.connection is not None:
            self.owner = call.connection

    def call_ended(self, call: ClientCall, *, answered: bool) -> Awaitable[None] | None:
        """`call` is over: None once it is, or, if `answered` while the upstream's messages to it are still being
        forwarded, what to await while they catch up (a bounded while) before the result goes out."""
        if answered and self._forwards:
            return self._caught_up(call)
        self._calls.remove(call)
        return None

    async def _caught_up(self, call: ClientCall) -> None:
        try:
            with anyio.move_on_after(_DRAIN_SECONDS):
                await self._forwards.none_left()
        finally:
            self._calls.remove(call)

    def progress_for(self, call: ClientCall | None) -> ProgressFnT | None:
        """The progress callback to give the upstream request, counted so the result waits for it."""
        if call is None or call.progress is None:
            return None
        report = call.progress

        async def forward(progress: float, total: float | None, message: str | None) -> None:
            with self._forwards:  # entered before the forward's first await
                await report(progress, total, message)

        return forward

    async def sampling(
        self, context: ClientRequestContext | None, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        result_type = (
            types.CreateMessageResultWithTools if params.tools or params.tool_choice else types.CreateMessageResult
        )
        return await self._ask(types.CreateMessageRequest(params=params), result_type, "sampling")

    async def elicitation(
        self, context: ClientRequestContext | None, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        return await self._ask(types.ElicitRequest(params=params), types.ElicitResult, "elicitation")

    async def list_roots(self, context: ClientRequestContext | None) -> types.ListRootsResult | types.ErrorData:
        return await self._ask(types.ListRootsRequest(), types.ListRootsResult, "roots")

    async def answer(
        self, question: types.CreateMessageRequest | types.ElicitRequest | types.ListRootsRequest
    ) -> types.ClientResult | types.ErrorData:
        """The client's answer to an upstream's question (the proxy's own client's way in; the SDK's client calls
        the three callbacks above)."""
        match question:
            case types.CreateMessageRequest(params=params):
                return await self.sampling(None, params)
            case types.ElicitRequest(params=params):
                return await self.elicitation(None, params)
            case types.ListRootsRequest():
                return await self.list_roots(None)

    async def on_message(self, message: IncomingMessage) -> None:
        """The upstream's notifications (the ClientSession's `message_handler`)."""
        if isinstance(message, (Exception, types.ProgressNotification)):
            return  # transport faults end the session elsewhere; progress goes through `progress_for`
        with self._forwards:  # entered before the forward's first await
            kind = _LIST_CHANGED.get(type(message))
            if kind is not None:
                if self.on_list_changed is not None:
                    await self.on_list_changed(kind)
                if self.announces_list_changes:
                    await self._notify_owner(message)
            elif isinstance(message, types.ResourceUpdatedNotification):
                if self.on_resource_updated is not None:
                    await self.on_resource_updated(message)
                else:
                    uri = self._exposed_uri(message.params.uri) if self._exposed_uri else message.params.uri
                    await self._notify_owner(
                        types.ResourceUpdatedNotification(params=message.params.model_copy(update={"uri": uri}))
                    )
            else:
                channel = self._target()
                if channel is None:
                    logger.debug("dropped %s from upstream '%s': no client owns its session", message, self.upstream)
                    return
                await channel.notify(message)

    async def _ask(
        self, request: types.ServerRequest, result_type: type[_ResultT], capability: str
    ) -> _ResultT | types.ErrorData:
        channel = self._target()
        if channel is None:
            return _refusal(f"upstream '{self.upstream}' asked for {capability}, but no client holds its session")
        if not channel.accepts_requests:
            return _refusal(
                f"upstream '{self.upstream}' asked for {capability}, but this session's client cannot be asked: "
                "it uses protocol 2026-07-28, which has no server-to-client requests (use the handshake era "
                "to answer sampling, elicitation and roots)"
            )
        if not _declares(channel.capabilities, capability):
            message = f"upstream '{self.upstream}' asked for {capability}, which this session's client did not declare"
            if getattr(channel, "is_modern", False):
                # 2026-07-28 names the missing capability, so the client can declare it and ask again.
                logger.info("%s", message)
                return types.ErrorData(
                    code=types.MISSING_REQUIRED_CLIENT_CAPABILITY,
                    message=message,
                    data={"requiredCapabilities": {capability: {}}},
                )
            return _refusal(message)
        # Not counted as a forward: the upstream waits for the answer anyway, and a question the client never
        # answers (a 2026-07-28 client that does not come back) must not hold up other calls' results.
        try:
            return await channel.request(request, result_type)
        except MCPError as error:
            return error.error

    def _target(self) -> ClientChannel | None:
        return self._calls[-1].stream if self._calls else self.owner

    async def _notify_owner(self, notification: types.ServerNotification) -> None:
        owner = self.owner or (self._calls[-1].connection if self._calls else None)
        if owner is None:
            logger.debug("dropped %s from upstream '%s': no client owns its session", notification, self.upstream)
            return
        await owner.notify(notification)


def _declares(capabilities: types.ClientCapabilities | None, capability: str) -> bool:
    if capabilities is None:
        return False
    return getattr(capabilities, capability, None) is not None


def _refusal(message: str) -> types.ErrorData:
    logger.info("%s", message)
    return types.ErrorData(code=types.INVALID_REQUEST, message=message)
