"""A session's lean message channels (`lean_channels`) behave as the SDK's context streams they stand in for.

Each behaviour is run against both: the SDK's `create_context_streams` (anyio memory object streams) and
`LeanContextStreams`, so a difference between them fails here by name.
"""

from __future__ import annotations

import asyncio
import contextvars
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from mcp.shared._context_streams import create_context_streams

from mcpstore_proxy.lean_channels import LeanContextStreams, LeanReceiveStream, LeanSendStream

pytestmark = pytest.mark.anyio

Streams = Callable[[float], tuple[Any, Any]]
_MAKERS: dict[str, Streams] = {
    "sdk": lambda size: create_context_streams[int](size),
    "lean": lambda size: LeanContextStreams[int](size),
}
_STREAM_FILES = ("mcpstore_proxy/lean_channels.py", "mcp/shared/_context_streams.py", "anyio/streams/memory.py")
_SENDER = contextvars.ContextVar[str]("sender", default="none")


async def _cancelled_once_blocked(operation: Callable[..., Awaitable[object]], *args: object) -> bool:
    """Start `operation` in a task, cancel it once every task is blocked; whether it was still blocked then."""
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await operation(*args)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
    return scope.cancelled_caught


@pytest.fixture(params=sorted(_MAKERS))
def streams(request: pytest.FixtureRequest) -> Streams:
    return _MAKERS[request.param]


async def test_a_message_reaches_a_waiting_receiver_with_the_context_it_was_sent_in(streams: Streams) -> None:
    send, receive = streams(0)
    received: list[tuple[int, str]] = []

    async def take() -> None:
        item = await receive.receive()
        context: contextvars.Context = receive.last_context
        received.append((item, context.run(_SENDER.get)))

    async with send, receive, anyio.create_task_group() as tasks:
        tasks.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        _SENDER.set("the sender")
        await send.send(7)
    assert received == [(7, "the sender")]


async def test_a_send_waits_until_a_receiver_takes_the_message_when_nothing_may_be_buffered(streams: Streams) -> None:
    send, receive = streams(0)
    sent = anyio.Event()

    async def give() -> None:
        await send.send(1)
        sent.set()

    async with send, receive, anyio.create_task_group() as tasks:
        tasks.start_soon(give)
        await anyio.wait_all_tasks_blocked()
        assert not sent.is_set()
        assert await receive.receive() == 1
        await sent.wait()


async def test_a_buffer_takes_as_many_messages_as_it_holds_without_a_receiver(streams: Streams) -> None:
    send, receive = streams(2)
    async with send, receive:
        await send.send(1)
        await send.send(2)
        blocked = await _cancelled_once_blocked(send.send, 3)  # full: waits for a receiver there will not be
        assert blocked
        assert [await receive.receive(), await receive.receive()] == [1, 2]


async def test_closing_the_send_end_ends_the_stream_after_what_was_buffered(streams: Streams) -> None:
    send, receive = streams(5)
    async with receive:
        async with send:
            for item in range(3):
                await send.send(item)
        assert [item async for item in receive] == [0, 1, 2]
        with pytest.raises(anyio.EndOfStream):
            await receive.receive()


async def test_a_receiver_blocked_when_the_send_end_closes_sees_the_end_of_the_stream(streams: Streams) -> None:
    send, receive = streams(0)
    ended: list[str] = []

    async def drain() -> None:
        async for _ in receive:
            ended.append("message")
        ended.append("end")

    async with receive, anyio.create_task_group() as tasks:
        tasks.start_soon(drain)
        await anyio.wait_all_tasks_blocked()
        await send.aclose()
    assert ended == ["end"]


async def test_a_sender_blocked_when_the_receive_end_closes_is_told_the_stream_is_broken(streams: Streams) -> None:
    send, receive = streams(0)
    outcomes: list[type[BaseException]] = []

    async def give() -> None:
        try:
            await send.send(1)
        except anyio.BrokenResourceError as error:
            outcomes.append(type(error))

    async with send:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(give)
            await anyio.wait_all_tasks_blocked()
            receive.close()
        assert outcomes == [anyio.BrokenResourceError]
        with pytest.raises(anyio.BrokenResourceError):
            await send.send(2)


async def test_an_end_used_after_it_was_closed_says_it_is_closed(streams: Streams) -> None:
    send, receive = streams(1)
    await send.aclose()
    await receive.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await send.send(1)
    with pytest.raises(anyio.ClosedResourceError):
        await receive.receive()


async def test_a_receiver_blocked_when_its_own_end_closes_says_it_is_closed(streams: Streams) -> None:
    send, receive = streams(0)
    outcomes: list[type[BaseException]] = []

    async def take() -> None:
        try:
            await receive.receive()
        except anyio.ClosedResourceError as error:
            outcomes.append(type(error))

    async with send, anyio.create_task_group() as tasks:
        tasks.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        receive.close()
    assert outcomes == [anyio.ClosedResourceError]


async def test_a_cancelled_send_withdraws_its_message(streams: Streams) -> None:
    send, receive = streams(0)
    async with send, receive:
        assert await _cancelled_once_blocked(send.send, 1)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send.send, 2)
            assert await receive.receive() == 2


async def test_a_cancelled_receive_leaves_the_next_message_to_the_next_receiver(streams: Streams) -> None:
    send, receive = streams(0)
    async with send, receive:
        assert await _cancelled_once_blocked(receive.receive)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send.send, 3)
            assert await receive.receive() == 3


async def test_a_message_given_to_a_receiver_cancelled_before_it_resumed_is_not_lost() -> None:
    send, receive = LeanContextStreams[int](0)
    async with send, receive:
        receiving = asyncio.ensure_future(receive.receive())
        await anyio.wait_all_tasks_blocked()
        await send.send(4)  # handed to the blocked receiver...
        receiving.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await receiving
        with anyio.fail_after(5):  # lost, it would never come
            assert await receive.receive() == 4


def test_a_pair_is_typed_by_subscript_and_its_ends_are_the_lean_ones() -> None:
    send, receive = LeanContextStreams[str](0)
    assert isinstance(send, LeanSendStream)
    assert isinstance(receive, LeanReceiveStream)
    receive.close()
    send.close()


async def test_a_pair_and_a_blocked_receiver_take_a_fraction_of_what_the_sdks_take() -> None:
    async def held(streams: Streams) -> int:
        """Bytes held by 20 pairs, each with a task blocked receiving on it, that the pairs themselves allocated."""
        tracemalloc.start(25)
        before = tracemalloc.take_snapshot()
        pairs = [streams(0) for _ in range(20)]
        grown: list[tracemalloc.StatisticDiff] = []
        async with anyio.create_task_group() as tasks:
            for _, receive in pairs:
                tasks.start_soon(receive.receive)
            await anyio.wait_all_tasks_blocked()
            grown = tracemalloc.take_snapshot().compare_to(before, "traceback")
            tracemalloc.stop()
            tasks.cancel_scope.cancel()
        for send, receive in pairs:
            send.close()
            receive.close()
        return sum(
            stat.size_diff for stat in grown if any(frame.filename.endswith(_STREAM_FILES) for frame in stat.traceback)
        )

    sdk, lean = await held(_MAKERS["sdk"]), await held(_MAKERS["lean"])
    assert lean * 5 < sdk, (lean, sdk)
