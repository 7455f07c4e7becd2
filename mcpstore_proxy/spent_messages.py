"""A session's read stream that lets go of each message once its reader asks for the next.

The SDK's dispatcher reads a session's messages in a loop (`async for item in read_stream`) and hands each
message's parts (the JSON-RPC message, its metadata, the context it was sent in) to the handler it starts; the
loop's variables then keep the last `SessionMessage` and its context until the next message arrives, which for an
idle session is never. For a downstream Streamable HTTP session, that message's metadata is the HTTP request that
carried it (Starlette's `Request`: its scope and headers, its body, uvicorn's response cycle): about 6 KiB per
idle session, kept by a local variable. A `ReleasingReadStream` empties
the message it gave out last (its `message` a shared placeholder, its `metadata` None) and drops its context when
the reader asks for the next one: by then the dispatcher has handed the parts on and uses nothing else of it.

It stands between the SDK's dispatcher and an upstream session's stream (`UpstreamSession`, when the SDK's client
runs it). Only where the dispatcher reads the stream itself: `Server.run` (a legacy SSE session's loop) reads it in
a relay task of its own, which asks for the next message before the dispatcher has handled the one it relayed. A
downstream Streamable HTTP session has no read loop at all (see `taskless_sessions`).
"""

from __future__ import annotations

import contextvars
from typing import Final

import anyio
from mcp.shared.message import SessionMessage
from mcp.types import JSONRPCNotification

from mcpstore_proxy.compat import MessageStream, take_last_context
from mcpstore_proxy.message_streams import MessageReadStream

__all__ = ["SPENT", "ReleasingReadStream"]

SPENT: Final = JSONRPCNotification(jsonrpc="2.0", method="notifications/mcpstore/spent")
"""What a message given out is left holding once its reader asked for the next one (never sent anywhere)."""


class ReleasingReadStream(MessageReadStream):
    """`inner`'s messages and its `last_context` unchanged, each message emptied (see the module docstring) once the
    next one is asked for."""

    __slots__ = ("_inner", "_last", "last_context")

    def __init__(self, inner: MessageStream) -> None:
        self._inner = inner
        self._last: SessionMessage | None = None
        self.last_context: contextvars.Context | None = None
        """The context `inner`'s last message was sent in (the SDK's context streams carry one), until the next is
        asked for."""

    async def receive(self) -> SessionMessage | Exception:
        self._let_go()
        return self._given(await self._inner.receive())

    async def __anext__(self) -> SessionMessage | Exception:
        # What the SDK's dispatcher awaits, written out rather than awaiting `receive`: an idle session's loop
        # waits here for its whole life, and a coroutine frame less is 0.4 KiB less.
        self._let_go()
        try:
            item = await self._inner.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        return self._given(item)

    def _let_go(self) -> None:
        last = self._last
        if last is not None:
            self._last = None
            last.message = SPENT
            last.metadata = None
        self.last_context = None

    def _given(self, item: SessionMessage | Exception) -> SessionMessage | Exception:
        self.last_context = take_last_context(self._inner)
        if isinstance(item, SessionMessage):
            self._last = item
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()
