"""A session's in-memory message channels, as the SDK's context streams behave, in a sixth of the memory.

Each session the SDK's transports serve or open (Streamable HTTP and legacy SSE, server and client) has two channels
between its transport and its dispatcher (messages in, messages out), made by
`mcp.shared._context_streams.create_context_streams`: anyio memory object streams, which carry each message with the
context it was sent in. An idle session has a task blocked receiving on each. anyio spends about 1.3 KiB making a
pair (its shared state and both ends are dataclasses, each with a dict) and about 2 KiB on each blocked receiver (an
anyio `Event` wrapping an asyncio one, a set of waiters, an item holder, an ordered dict entry): 8 KiB of the 60 KiB
of Python objects an idle session holds. Here a pair is three slotted objects, and a blocked receiver one future.

The behaviour is the SDK's: each message travels with `contextvars.copy_context()` taken at `send` (the receive end
exposes it as `last_context`), a send waits until a receiver takes the message (or the buffer has room), and closing
either end is seen by the other as anyio's streams report it (`EndOfStream`, `BrokenResourceError`; a closed end's
own use is `ClosedResourceError`). A message taken by a receiver whose task is cancelled before it resumes is put
back at the front, not lost. `compat.carry_session_messages_on` has the SDK's transports make these.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Final, Generic, Self, TypeVar

import anyio

__all__ = ["LeanContextStreams", "LeanReceiveStream", "LeanSendStream"]

T = TypeVar("T")

_Envelope = tuple[contextvars.Context, Any]
_TAKEN: Final = 0
"""A waiting sender's wake-up: its message was taken."""
_BROKEN: Final = 1
"""A waiting sender's wake-up: the receive end closed before taking its message."""
_WITHDRAWN: Final = 2
"""A waiting sender's wake-up: its own end closed before its message was taken."""


class _Channel:
    """What both ends share: buffered messages, blocked receivers (each a future) and senders, and which ends are
    open. The lists stay None until used: most channels only ever hand a message to a receiver already waiting."""

    __slots__ = ("buffer", "capacity", "receivers", "receiving", "senders", "sending")

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.buffer: list[_Envelope] | None = None
        self.receivers: list[asyncio.Future[_Envelope | None]] | None = None
        self.senders: list[tuple[asyncio.Future[int], _Envelope]] | None = None
        self.sending = True
        self.receiving = True

    def handed(self, envelope: _Envelope) -> bool:
        """Give `envelope` to the longest-waiting receiver still waiting; False if there is none."""
        receivers = self.receivers
        while receivers:
            receiver = receivers.pop(0)
            if not receiver.done():  # a cancelled receiver's future is cancelled with it
                receiver.set_result(envelope)
                return True
        return False

    def taken(self) -> _Envelope | None:
        """The next message without waiting: buffered first, then a blocked sender's (which is woken)."""
        if self.buffer:
            return self.buffer.pop(0)
        senders = self.senders
        if senders:
            sender, envelope = senders.pop(0)
            sender.set_result(_TAKEN)
            return envelope
        return None

    def put_back(self, envelope: _Envelope) -> None:
        """A message a cancelled receiver was given: to the next receiver, else the front of the buffer."""
        if self.receiving and not self.handed(envelope):
            if self.buffer is None:
                self.buffer = []
            self.buffer.insert(0, envelope)

    def wake_receivers(self) -> None:
        receivers, self.receivers = self.receivers, None
        for receiver in receivers or ():
            if not receiver.done():
                receiver.set_result(None)

    def wake_senders(self, why: int) -> None:
        senders, self.senders = self.senders, None
        for sender, _ in senders or ():
            if not sender.done():
                sender.set_result(why)


class _End:
    """What both ends have: their channel, whether they are closed, and `aclose` and use as an async context manager
    (closed on exit) over their own `close`."""

    __slots__ = ("_channel", "_closed")

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self._closed = False

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()


class LeanSendStream(_End, Generic[T]):
    """The sending end: `send`, `close`/`aclose`, and use as an async context manager (closed on exit)."""

    __slots__ = ()

    async def send(self, item: T) -> None:
        await asyncio.sleep(0)  # a checkpoint, as anyio's
        if self._closed:
            raise anyio.ClosedResourceError
        channel = self._channel
        if not channel.receiving:
            raise anyio.BrokenResourceError
        envelope = (contextvars.copy_context(), item)
        if channel.handed(envelope):
            return
        if len(channel.buffer or ()) < channel.capacity:
            if channel.buffer is None:
                channel.buffer = []
            channel.buffer.append(envelope)
            return
        sender = asyncio.get_running_loop().create_future()
        if channel.senders is None:
            channel.senders = []
        channel.senders.append((sender, envelope))
        try:
            why = await sender
        except asyncio.CancelledError:
            if sender.cancelled():  # not taken: withdraw the message
                channel.senders = [waiting for waiting in channel.senders or () if waiting[0] is not sender] or None
            raise
        if why == _BROKEN:
            raise anyio.BrokenResourceError
        if why == _WITHDRAWN:
            raise anyio.ClosedResourceError

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            channel = self._channel
            channel.sending = False
            channel.wake_senders(_WITHDRAWN)
            channel.wake_receivers()


class LeanReceiveStream(_End, Generic[T]):
    """The receiving end: `receive`, async iteration, `last_context` (the context the last message was sent in),
    `close`/`aclose`, and use as an async context manager (closed on exit)."""

    __slots__ = ("last_context",)

    def __init__(self, channel: _Channel) -> None:
        super().__init__(channel)
        self.last_context: contextvars.Context | None = None

    async def receive(self) -> T:
        # Through `__anext__`, where an idle session's loop waits: a receiver of this kind (one request's stream)
        # waits a short while, and may take the frame more.
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise anyio.EndOfStream from None

    def __aiter__(self) -> LeanReceiveStream[T]:
        return self

    async def __anext__(self) -> T:
        # The whole receive here rather than awaiting `receive`: an idle session's loop waits here for its whole
        # life, and a coroutine frame less is 0.4 KiB less.
        await asyncio.sleep(0)  # a checkpoint, as anyio's
        try:
            envelope = self._next()
            if isinstance(envelope, asyncio.Future):
                try:
                    envelope = await envelope
                except asyncio.CancelledError:
                    self._cancelled(envelope)
                    raise
                if envelope is None:
                    envelope = self._after_wake_up()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        self.last_context, item = envelope
        return item

    def _next(self) -> _Envelope | asyncio.Future[_Envelope | None]:
        """The next message if one is ready, else a future for it (None when woken by a close)."""
        if self._closed:
            raise anyio.ClosedResourceError
        channel = self._channel
        envelope = channel.taken()
        if envelope is not None:
            return envelope
        if not channel.sending:
            raise anyio.EndOfStream
        receiver: asyncio.Future[_Envelope | None] = asyncio.get_running_loop().create_future()
        if channel.receivers is None:
            channel.receivers = []
        channel.receivers.append(receiver)
        return receiver

    def _cancelled(self, receiver: asyncio.Future[_Envelope | None]) -> None:
        channel = self._channel
        if not receiver.done():
            receiver.cancel()
        elif not receiver.cancelled() and (envelope := receiver.result()) is not None:
            channel.put_back(envelope)  # given a message, then cancelled before it could take it
        if channel.receivers:
            channel.receivers = [waiting for waiting in channel.receivers if waiting is not receiver] or None

    def _after_wake_up(self) -> _Envelope:
        """Woken by a close: what is left to take, else the error anyio's stream raises."""
        if self._closed:
            raise anyio.ClosedResourceError
        envelope = self._channel.taken()
        if envelope is None:
            raise anyio.EndOfStream
        return envelope

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            channel = self._channel
            channel.receiving = False
            channel.buffer = None
            channel.wake_senders(_BROKEN)
            channel.wake_receivers()


class LeanContextStreams(Generic[T]):
    """`LeanContextStreams[T](max_buffer_size)`: a connected (send, receive) pair, called as the SDK calls
    `create_context_streams`."""

    def __new__(cls, max_buffer_size: float = 0) -> tuple[LeanSendStream[T], LeanReceiveStream[T]]:
        channel = _Channel(max_buffer_size)
        return LeanSendStream(channel), LeanReceiveStream(channel)
