"""Downstream clients for `SessionRelay` tests: `Recorder`, a small real implementation of the relay's
`ClientChannel` protocol that writes what reaches it into a shared journal, and helpers that ask the relay
what an upstream would ask (sampling, elicitation, roots).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import anyio
from mcp import MCPError, types
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.shared.message import SessionMessage
from pydantic import BaseModel, FileUrl

from mcpstore_proxy.relay import ClientCall, SessionRelay

_ResultT = TypeVar("_ResultT", bound=BaseModel)

DECLARES_ALL: Final = types.ClientCapabilities(
    sampling=types.SamplingCapability(), elicitation=types.ElicitationCapability(), roots=types.RootsCapability()
)
ANSWERS: Final[Sequence[BaseModel]] = (
    types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="sampled"), model="m"),
    types.ElicitResult(action="accept", content={"name": "Ada"}),
    types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///work"))]),
)

Journal = list[tuple[str, str]]
"""(who, what) in the order things reached the clients."""


class Recorder:
    """A downstream client as the relay sees it: writes every notification and request it gets into `journal`,
    and answers requests from `ANSWERS` (or with `refusal`, if set)."""

    def __init__(
        self,
        name: str,
        journal: Journal,
        *,
        capabilities: types.ClientCapabilities | None = DECLARES_ALL,
        accepts_requests: bool = True,
    ) -> None:
        self.name = name
        self.journal = journal
        self.capabilities = capabilities
        self.accepts_requests = accepts_requests
        self.refusal: MCPError | None = None
        self.gate: anyio.Event | None = None
        """When set, a notification waits for it (after `entered`) before it counts as delivered."""
        self.entered = anyio.Event()

    def __repr__(self) -> str:
        return f"<Recorder {self.name}>"

    async def notify(self, notification: types.ServerNotification) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.journal.append((self.name, describe(notification)))

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        self.journal.append((self.name, request.method))
        if self.refusal is not None:
            raise self.refusal
        return next(answer for answer in ANSWERS if isinstance(answer, result_type))


def describe(notification: types.ServerNotification) -> str:
    if isinstance(notification, types.LoggingMessageNotification):
        return f"log {notification.params.data}"
    if isinstance(notification, types.ResourceUpdatedNotification):
        return f"updated {notification.params.uri}"
    return notification.method


def log(text: str) -> types.LoggingMessageNotification:
    return types.LoggingMessageNotification(params=types.LoggingMessageNotificationParams(level="info", data=text))


def sampling_params() -> types.CreateMessageRequestParams:
    message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text="hi"))
    return types.CreateMessageRequestParams(messages=[message], max_tokens=5)


@asynccontextmanager
async def upstream_context() -> AsyncGenerator[ClientRequestContext]:
    """The context the SDK passes the relay's callbacks (which the relay does not read)."""
    to_client, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](1)
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage](1)
    try:
        yield ClientRequestContext(session=ClientSession(from_server, to_server), request_id=1)
    finally:
        for stream in (to_client, from_server, to_server, from_client):
            stream.close()


async def ask(relay: SessionRelay, capability: str) -> BaseModel | types.ErrorData:
    async with upstream_context() as context:
        if capability == "sampling":
            return await relay.sampling(context, sampling_params())
        if capability == "elicitation":
            params = types.ElicitRequestFormParams(message="name?", requested_schema={"type": "object"})
            return await relay.elicitation(context, params)
        return await relay.list_roots(context)


def refusal_of(answer: BaseModel | types.ErrorData) -> str:
    assert isinstance(answer, types.ErrorData), f"expected a refusal, got {answer!r}"
    assert answer.code == types.INVALID_REQUEST
    return answer.message


@asynccontextmanager
async def serving(relay: SessionRelay, call: ClientCall) -> AsyncGenerator[None]:
    """A call in flight as an upstream session holds one: `call_began`, then `call_ended` (caught up with, when
    the block ended with its result)."""
    relay.call_began(call)
    answered = False
    try:
        yield
        answered = True
    finally:
        catching_up = relay.call_ended(call, answered=answered)
        if catching_up is not None:
            await catching_up
