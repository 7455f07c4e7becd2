"""Frame a Streamable HTTP answer by its first event: plain JSON when that event is the answer, SSE otherwise.

The SDK answers every request POST with a Server-Sent Events stream (sse_starlette's `EventSourceResponse`: a task
group with a pinger, a disconnect listener, a shutdown listener and the data sender), although the stream almost
always carries one event, the result. The spec lets a server answer a POST with either framing. `FirstEventResponse`
takes the SDK's place (installed by `compat.frame_answers_by_first_event`): it starts the SDK's data sender, waits
for the request's first event and, when that is the JSON-RPC result or error, answers `application/json` with it
in one body (the answer to a cancelled request keeps the stream). Anything else first (progress, a log entry, a
request to the client, a priming event) opens the ordinary SSE stream, which carries that event and everything
after it. GETs, replays and clients that do not accept JSON get the ordinary stream untouched.

The JSON path never reads the request's `receive`: a client that hangs up while waiting is noticed by
`hangup.unless_client_hangs_up`, which cancels the forward, and the answer then goes nowhere.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, cast

import anyio
import pydantic_core
from mcp.server.streamable_http import REQUEST_CANCELLED, check_accept_headers
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

__all__ = ["FirstEventResponse"]

DataSender = Callable[[], Coroutine[Any, Any, None]]

# Headers that only mean something on an event stream; a JSON answer drops them.
_STREAM_ONLY_HEADERS = frozenset({"cache-control", "connection", "content-type", "x-accel-buffering"})

# The head of a message as the SDK writes it (`model_dump_json`: compact, fields in declaration order): jsonrpc, then
# the id (absent from a notification), then result, error (whose code comes first) or method. Reading the head alone
# spares parsing a whole (possibly large) result; a message written otherwise is parsed in full.
_MESSAGE_HEAD = re.compile(
    r'\{"jsonrpc":"2\.0",(?:"id":(?:-?\d+|"(?:[^"\\]|\\.)*"),)?"(?:(?P<result>result)"|error":\{"code":(?P<code>-?\d+)[,}]|method")'
)


class FirstEventResponse:
    """An ASGI response with `EventSourceResponse`'s constructor, answering a POST in JSON when it can."""

    def __init__(
        self,
        content: AsyncIterable[Any],
        *,
        data_sender_callable: DataSender | None = None,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        self._content = content
        self._data_sender = data_sender_callable
        self._headers = dict(headers or {})
        self._options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        data_sender = self._data_sender
        if data_sender is None or not _may_answer_in_json(scope):
            await self._stream(self._content, data_sender)(scope, receive, send)
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(data_sender)
            events = aiter(self._content)
            first = await anext(events, None)
            if first is not None and _is_answer(first):
                await self._answer_in_json(first["data"], send)
                return  # the data sender stops by itself after the answer
            # Same teardown as `EventSourceResponse` running the sender itself: the stream ends, then it is cancelled.
            rest = _empty() if first is None else _starting_with(first, events)
            await self._stream(rest, None)(scope, receive, send)
            tg.cancel_scope.cancel()

    def _stream(self, content: AsyncIterable[Any], data_sender: DataSender | None) -> EventSourceResponse:
        return EventSourceResponse(
            content=content,
            data_sender_callable=data_sender,
            headers=self._headers,
            **self._options,
        )

    async def _answer_in_json(self, data: str, send: Send) -> None:
        body = data.encode()
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self._headers.items()
            if name.lower() not in _STREAM_ONLY_HEADERS
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _may_answer_in_json(scope: Scope) -> bool:
    """A request POST whose client accepts JSON (a GET is the standalone stream; HEAD never streams)."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    accepts_json, _ = check_accept_headers(Request(scope))
    return accepts_json


def _is_answer(event: Any) -> bool:
    """Whether an SSE event of the SDK's (`{"event", "data", "id"?}`) carries a JSON-RPC result or error."""
    if not isinstance(event, dict):
        return False
    data = event.get("data")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if not isinstance(data, str) or not data:
        return False
    head = _MESSAGE_HEAD.match(data)
    if head is not None:
        if head["result"] is not None:
            return True
        return head["code"] is not None and _is_not_cancellation(int(head["code"]))
    try:
        message = pydantic_core.from_json(data)
    except ValueError:  # not ours to judge: the stream carries it as it is
        return False
    if not isinstance(message, dict) or "method" in message:
        return False
    if "result" in message:
        return True
    error: object = message.get("error")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if not isinstance(error, dict):
        return False
    return _is_not_cancellation(cast("dict[str, object]", error).get("code"))


def _is_not_cancellation(code: object) -> bool:
    # The answer to a request its client cancelled keeps the stream: that client has stopped reading, and the
    # SDK's Python client (2.3) raises from its exit when a JSON body for such a request still arrives.
    return code != REQUEST_CANCELLED


async def _starting_with(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for event in rest:
        yield event


async def _empty() -> AsyncIterator[Any]:
    return
    yield
