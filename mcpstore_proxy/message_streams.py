"""What makes one of the proxy's own objects a stream the SDK's `ClientSession` can read or write.

The SDK reads a transport's messages through its `ReadStream` protocol (`receive`, `aclose`, iteration that ends
at `anyio.EndOfStream`, `async with`) and writes them through `WriteStream` (`send`, `aclose`, `async with`). A
subclass of `MessageReadStream` writes `receive` and `aclose`; one of `MessageWriteStream`, `send` and `aclose`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

import anyio
from mcp.shared.message import SessionMessage

__all__ = ["MessageReadStream", "MessageWriteStream"]


class _ClosedOnExit(ABC):
    __slots__ = ()  # so that a subclass with slots of its own has no `__dict__`: one per idle session's stream

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> bool | None:
        await self.aclose()
        return None


class MessageReadStream(_ClosedOnExit):
    __slots__ = ()

    @abstractmethod
    async def receive(self) -> SessionMessage | Exception:
        """The next message, or an error to report; raises `anyio.EndOfStream` once there are no more."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class MessageWriteStream(_ClosedOnExit):
    __slots__ = ()

    @abstractmethod
    async def send(self, item: SessionMessage, /) -> None: ...
