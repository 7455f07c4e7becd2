"""`HeldCall`: a tool call kept in flight until the test lets it finish, so a test can drain, reload or remove
an upstream while a call is still running.

The upstream's tool (the fixture's `ask`) asks the client to sample, and the client's sampling callback holds
its answer until `release()`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp import Client, types
from mcp.client.session import ClientRequestContext

from tests.conversation import structured


class HeldCall:
    """Pass `answer_once_released` as the client's `sampling_callback`, then hold a call with `in_flight`."""

    def __init__(self) -> None:
        self.asked = anyio.Event()
        self._released = anyio.Event()
        self.answers: list[Any] = []
        """The structured result of each held call that finished."""

    async def answer_once_released(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.asked.set()
        await self._released.wait()
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="answered"), model="m"
        )

    def release(self) -> None:
        """Lets the client answer, and so the held call finish."""
        self._released.set()

    @asynccontextmanager
    async def in_flight(self, client: Client, tool: str, timeout_seconds: float = 20) -> AsyncGenerator[None]:
        """Calls `tool` and enters once the upstream has asked the client; leaving waits for the call to end,
        so the block must `release()` it. The whole block is bounded by `timeout_seconds`."""

        async def call() -> None:
            # Not `client.call_tool`: it would list the tools afterwards to check the result, and by then a
            # drained proxy has ended the session.
            request = types.CallToolRequest(
                params=types.CallToolRequestParams(name=tool, arguments={"prompt": "still there?"})
            )
            self.answers.append(structured(await client.session.send_request(request, types.CallToolResult)))

        with anyio.fail_after(timeout_seconds):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await self.asked.wait()
                yield
