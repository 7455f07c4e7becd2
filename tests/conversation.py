"""What a test's MCP client says to the proxy and hears from it: requests sent without the SDK's deprecation
warnings, a sampling callback that answers, the stateful fixture's `chatter` as a client reads it, and a way back
to a client that must be sent nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp import Client, types
from mcp.client.context import ClientRequestContext
from mcp.shared.dispatcher import Outbound


def structured(result: types.CallToolResult) -> Any:
    """The `result` value of a tool's structured output, failing loudly on an error result."""
    assert not result.is_error, f"tool call failed: {result.content}"
    assert result.structured_content is not None, f"no structured content in {result}"
    return result.structured_content["result"]


async def set_log_level(client: Client, level: types.LoggingLevel) -> None:
    """`logging/setLevel`, without the SDK's deprecation warning for the 2026-07-28 era."""
    await client.session.send_request(
        types.SetLevelRequest(params=types.SetLevelRequestParams(level=level)), types.EmptyResult
    )


async def subscribe(client: Client, uri: str) -> None:
    """`resources/subscribe`, without the SDK's deprecation warning for the 2026-07-28 era."""
    await client.session.send_request(
        types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri)), types.EmptyResult
    )


async def unsubscribe(client: Client, uri: str) -> None:
    await client.session.send_request(
        types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri)), types.EmptyResult
    )


def text_of(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


def answering_sampling(
    asked: list[str], answer: str = "forty-two"
) -> Callable[[ClientRequestContext, types.CreateMessageRequestParams], Awaitable[types.CreateMessageResult]]:
    """A client's sampling callback that notes each question's text in `asked` and answers `answer`."""

    async def sampling(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        content = params.messages[0].content
        asked.append(content.text if isinstance(content, types.TextContent) else "?")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=answer), model="test-model"
        )

    return sampling


async def chatter_until_answered(
    next_message: Callable[[], Awaitable[dict[str, Any]]],
) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """What a raw client reads of the fixture's `chatter` call: each notification before the answer (its method,
    and its progress or log data), then the answer."""
    seen: list[tuple[str, Any]] = []
    while "id" not in (message := await next_message()):
        params = message["params"]
        seen.append((message["method"], params.get("progress", params.get("data"))))
    return seen, message


def chattered(tag: str, count: int) -> list[tuple[str, Any]]:
    """What `chatter` sends before its answer, at log level info and asked for progress: a log entry, then
    progress, per step."""
    return [
        entry
        for step in range(1, count + 1)
        for entry in (("notifications/message", f"{tag} {step}"), ("notifications/progress", step))
    ]


class NoClient(Outbound):
    """A connection's way back to its client, for a test that sends the client nothing (it fails if one is sent)."""

    async def send_raw_request(self, method: str, params: Any, opts: Any = None) -> dict[str, Any]:
        raise AssertionError("nothing is sent to the client")

    async def notify(self, method: str, params: Any, opts: Any = None) -> None:
        raise AssertionError("nothing is sent to the client")
