"""What makes one of the proxy's own objects a read stream the SDK's `ClientSession` can read.

The SDK reads a transport's messages through its `ReadStream` protocol: `receive` and `aclose`, iteration (which
ends at `anyio.EndOfStream`) and `async with`. A subclass of `MessageReadStream` writes the first two.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

import anyio
from mcp.shared.message import SessionMessage

__all__ = ["MessageReadStream"]


class MessageReadStream(ABC):
    @abstractmethod
    async def receive(self) -> SessionMessage | Exception:
        """The next message, or an error to report; raises `anyio.EndOfStream` once there are no more."""

    @abstractmethod
    async def aclose(self) -> None: ...

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> bool | None:
        await self.aclose()
        return None
