"""What an upstream asks a handshake-era client during a call in the fast lane, put on the call's own answer.

The question goes out as an event on the call's stream under an id of the lane's own (`mcpstore-N`); the client
answers with a POST the lane takes (`deliver`), matched to questions outstanding in that session only. A question
given up (the upstream withdrew it, or the call ended) is withdrawn from the client with `notifications/cancelled`.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import anyio
from mcp import MCPError, types
from mcp.server.connection import Connection
from pydantic import BaseModel, ValidationError

from mcpstore_proxy.downstream import NOTIFY_SECONDS
from mcpstore_proxy.lane_wire import AnswerStream, CallAnswer

__all__ = ["LaneQuestions"]

_ResultT = TypeVar("_ResultT", bound=BaseModel)
_OWN_ID_PREFIX: Final = "mcpstore-"


class LaneQuestions:
    """The lane's questions to clients awaiting their answers, by session and our id."""

    def __init__(self) -> None:
        self._asked: dict[tuple[str, str], _Asked] = {}
        self._ids = itertools.count(1)

    def stream(self, answer: CallAnswer, connection: Connection, session_id: str) -> AnswerStream:
        """The client behind a handshake-era call, heard and asked on the call's answer."""
        return _AskingStream(self, answer, connection, session_id)

    def deliver(self, session_id: str, message: dict[str, Any]) -> bool:
        """Whether `message` answers a question outstanding in the session (and was handed to it)."""
        request_id = message.get("id")
        if not isinstance(request_id, str) or not request_id.startswith(_OWN_ID_PREFIX):
            return False
        asked = self._asked.get((session_id, request_id))
        if asked is None or ("result" not in message and "error" not in message):
            return False
        asked.reply = message
        asked.answered.set()
        return True

    async def ask(
        self,
        session_id: str,
        answer: CallAnswer,
        connection: Connection,
        request: types.ServerRequest,
        result_type: type[_ResultT],
    ) -> _ResultT:
        """Send `request` to the client on a call's stream and wait for its answer (a POST the lane takes); if
        the wait is cancelled (the upstream withdrew its question, or the call ended), tell the client so."""
        request_id = f"{_OWN_ID_PREFIX}{next(self._ids)}"
        asked = self._asked[session_id, request_id] = _Asked()
        try:
            wire = request.model_dump(by_alias=True, mode="json", exclude_none=True)
            if not await answer.event({"jsonrpc": "2.0", "id": request_id, **wire}):
                raise MCPError(code=types.INTERNAL_ERROR, message="the call was answered before its client was asked")
            await asked.answered.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(NOTIFY_SECONDS):
                await _withdraw(request_id, answer, connection)
            raise
        finally:
            self._asked.pop((session_id, request_id), None)
        reply = asked.reply
        error = reply.get("error")
        if error is not None:
            try:
                raise MCPError.from_error_data(types.ErrorData.model_validate(error))
            except ValidationError:
                message = "the client answered with a malformed error"
                raise MCPError(code=types.INTERNAL_ERROR, message=message) from None
        try:
            return result_type.model_validate(reply.get("result"))
        except ValidationError as invalid:
            raise MCPError(code=types.INVALID_PARAMS, message=f"the client's answer was malformed: {invalid}") from None


async def _withdraw(request_id: str, answer: CallAnswer, connection: Connection) -> None:
    """Tell the client a question is withdrawn: on the call's stream, or, once the call was answered, its
    connection's own stream."""
    params = {"requestId": request_id, "reason": "the upstream withdrew its request"}
    if not await answer.event({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}):
        with contextlib.suppress(MCPError, anyio.BrokenResourceError, anyio.ClosedResourceError):  # a client gone
            await connection.notify("notifications/cancelled", params)


@dataclass(eq=False, slots=True)
class _Asked:
    answered: anyio.Event = field(default_factory=anyio.Event)
    reply: dict[str, Any] = field(default_factory=dict[str, Any])


class _AskingStream(AnswerStream):
    """The client behind a handshake-era call in the lane, which may be asked on the call's answer too."""

    __slots__ = ("_questions", "_session_id")

    def __init__(self, questions: LaneQuestions, answer: CallAnswer, connection: Connection, session_id: str) -> None:
        super().__init__(answer, connection)
        self._questions = questions
        self._session_id = session_id

    @property
    def accepts_requests(self) -> bool:
        return True

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        return await self._questions.ask(self._session_id, self._answer, self._connection, request, result_type)
