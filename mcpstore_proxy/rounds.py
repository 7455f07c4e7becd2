"""Multi-round requests (2026-07-28): an upstream's questions put to a sessionless client, and its answers fed back.

Upstreams speak the handshake era, where a server asks its client mid-call
(sampling, elicitation, roots). A 2026-07-28 client cannot be asked: instead
the request it sent is answered with an `input_required` result listing the
questions (`inputRequests`) and a `requestState`, and the client sends the
same request again with its `inputResponses` and that state.

An `Exchange` bridges the two: the upstream call runs on in the background
(owned by `InputRounds`) while its questions wait; each round of the client's
request attaches to it, answers what it can, and waits for the next outcome:
more questions, the result, or an error. Questions that arrive together are
put together. A question is named by the upstream's
`_meta["io.mcpstore/inputKey"]` where it gives one, else `<kind>-<n>`.

`requestState` is the exchange's id and round, sealed with an HMAC bound to
the principal: a tampered, replayed or foreign state is refused (-32602). An
exchange whose client does not come back within `ANSWER_SECONDS` is cancelled
upstream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast

import anyio
import anyio.abc
from mcp import MCPError, types
from mcp.server.streamable_http import REQUEST_CANCELLED
from pydantic import BaseModel, ValidationError

from mcpstore_proxy.clock import SYSTEM_CLOCK, Clock
from mcpstore_proxy.relay import ClientChannel

__all__ = ["ANSWER_SECONDS", "INPUT_KEY_META", "Exchange", "InputRounds", "RoundChannel", "Unaskable"]

logger = logging.getLogger(__name__)

_ResultT = TypeVar("_ResultT", bound=BaseModel)

INPUT_KEY_META: Final = "io.mcpstore/inputKey"
"""`_meta` key by which a handshake-era upstream may name its question for a 2026-07-28 client."""
ANSWER_SECONDS: Final = 300.0
"""How long an exchange waits for its client's next round before it is cancelled upstream."""
_BATCH_SECONDS: Final = 0.025
"""Questions asked within this long of one another go to the client together."""
_KINDS: Final = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}

Outcome = dict[str, Any]
Start = Callable[["RoundChannel"], Awaitable[Outcome]]


@dataclass(eq=False)
class _Question:
    key: str
    request: types.ServerRequest
    result_type: type[BaseModel]
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: BaseModel | None = None

    def wire(self) -> dict[str, Any]:
        dumped = self.request.model_dump(by_alias=True, mode="json", exclude_none=True)
        params = cast(dict[str, Any], dumped.get("params") or {})
        meta = cast(dict[str, Any], params.get("_meta") or {})
        meta.pop(INPUT_KEY_META, None)
        if not meta:
            params.pop("_meta", None)
        return {"method": dumped["method"], "params": params}

    def accept(self, value: Any) -> None:
        """Take the client's answer; raises ValidationError when it is not one."""
        self.answer = self.result_type.model_validate(value)
        self.answered.set()


class _ModernChannel(ABC):
    """A 2026-07-28 request's client as the relay sees it: it takes questions (by rounds, or refusing them) but
    declares only what its current request's stream declares, and hears what that stream hears."""

    @property
    @abstractmethod
    def _stream(self) -> ClientChannel | None: ...

    @property
    def capabilities(self) -> types.ClientCapabilities | None:
        stream = self._stream
        return stream.capabilities if stream is not None else None

    @property
    def accepts_requests(self) -> bool:
        return True

    @property
    def is_modern(self) -> bool:
        return True

    async def notify(self, notification: types.ServerNotification) -> None:
        stream = self._stream
        if stream is not None:
            await stream.notify(notification)


class Unaskable(_ModernChannel):
    """The client of a 2026-07-28 request that declared nothing an upstream could ask of it, which therefore runs
    without rounds: in the request's own task, which the client hanging up cancels, and with no task of its own.

    As for a round, a question is refused naming the capability it needs (`MISSING_REQUIRED_CLIENT_CAPABILITY`),
    so the client can declare it and ask again: the relay checks the declaration before it asks."""

    def __init__(self, stream: ClientChannel) -> None:
        self._request_stream = stream

    @property
    def _stream(self) -> ClientChannel:
        return self._request_stream

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        raise MCPError(types.INTERNAL_ERROR, f"{request.method} cannot be put to a client that declared nothing")


class RoundChannel(_ModernChannel):
    """The client of an exchange: whichever round of its request is current."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    @property
    def _stream(self) -> ClientChannel | None:
        return self._exchange.stream

    async def request(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        return await self._exchange.ask(request, result_type)


class Exchange:
    """One client request of the 2026-07-28 era whose upstream call asks questions, across its rounds."""

    def __init__(self, rounds: InputRounds, principal: str, presupplied: Mapping[str, Any], clock: Clock) -> None:
        self.id = secrets.token_urlsafe(16)
        self.principal = principal
        self.round = 0
        self.stream: ClientChannel | None = None
        self.channel = RoundChannel(self)
        self._rounds = rounds
        self._presupplied = dict(presupplied)
        self._questions: dict[str, _Question] = {}
        self._counts: dict[str, int] = {}
        self._changed = anyio.Event()
        self._outcome: Outcome | None = None
        self._error: BaseException | None = None
        self._done = False
        self._clock = clock
        self._deadline = clock.now() + ANSWER_SECONDS
        self._scope: anyio.CancelScope | None = None
        self._is_abandoned = False

    async def run(self, start: Start) -> None:
        """Run the upstream call to its end, or until its client has not come back for `ANSWER_SECONDS`, or has
        abandoned it (owned by `InputRounds`); never raises."""
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            if self._is_abandoned:
                tg.cancel_scope.cancel()

            async def expire() -> None:
                while (left := self._deadline - self._clock.now()) > 0:
                    await self._clock.sleep(left)
                tg.cancel_scope.cancel()

            tg.start_soon(expire)
            try:
                self._outcome = await start(self.channel)
            except Exception as error:  # noqa: BLE001  # handed to whichever round waits for the outcome
                self._error = error
            tg.cancel_scope.cancel()
        if self._is_abandoned:
            logger.debug("a 2026-07-28 client left before its request's first outcome; cancelled it upstream")
            self._error = MCPError(REQUEST_CANCELLED, "the client left; the request was cancelled upstream")
        elif self._outcome is None and self._error is None:
            logger.info(
                "a 2026-07-28 client did not come back with its answers within %g s; cancelled its request upstream",
                ANSWER_SECONDS,
            )
            self._error = MCPError(
                types.INVALID_REQUEST,
                f"the client did not send the answers to this request's questions within {ANSWER_SECONDS:g} s; "
                "the request was cancelled upstream (send it again without requestState)",
            )
        self._done = True
        self._changed.set()
        self._rounds.forget(self)

    def abandon(self) -> None:
        """Its client left before the first round's outcome: nobody holds a state to come back with, so the
        call is cancelled upstream. (A later round's client may send its request again with the state it holds:
        that exchange waits out `ANSWER_SECONDS` instead.)"""
        self._is_abandoned = True
        if self._scope is not None:
            self._scope.cancel()

    def attach(self, stream: ClientChannel, responses: Mapping[str, Any]) -> None:
        """Make `stream` the current round and apply its answers.

        Raises:
            MCPError: an answer to a question asked is not a valid result for it (-32602).
        """
        self.stream = stream
        self._deadline = self._clock.now() + ANSWER_SECONDS
        for key, question in self._questions.items():
            if question.answered.is_set() or key not in responses:
                continue
            try:
                question.accept(responses[key])
            except ValidationError as error:
                raise MCPError(
                    types.INVALID_PARAMS,
                    f"inputResponses[{key!r}] is not a valid answer to {question.request.method}: "
                    f"{error.errors()[0]['msg']}",
                ) from None

    async def ask(self, request: types.ServerRequest, result_type: type[_ResultT]) -> _ResultT:
        """Put one upstream question to the client, and wait for its answer from a later round."""
        question = _Question(self._key_for(request), request, result_type)
        self._questions[question.key] = question
        if question.key in self._presupplied:
            # Answers sent with a first round, before any question (the client knew them): used if valid.
            with suppress(ValidationError):
                question.accept(self._presupplied.pop(question.key))
        if not question.answered.is_set():
            self._changed.set()
        await question.answered.wait()
        return cast(_ResultT, question.answer)

    async def next_outcome(self) -> Outcome:
        """The result, or the questions still open as an `input_required` result; raises the call's error."""
        while True:
            if self._done:
                if self._error is not None:
                    raise self._error
                assert self._outcome is not None
                return self._outcome
            if self._open():
                await self._settle()
                if self._open() and not self._done:
                    self.round += 1
                    return {
                        "resultType": "input_required",
                        "inputRequests": {question.key: question.wire() for question in self._open()},
                        "requestState": self._rounds.seal(self),
                    }
                continue
            await self._changed.wait()
            self._changed = anyio.Event()

    def _open(self) -> list[_Question]:
        return [question for question in self._questions.values() if not question.answered.is_set()]

    async def _settle(self) -> None:
        """Let questions that come together arrive together."""
        while True:
            self._changed = anyio.Event()
            with anyio.move_on_after(_BATCH_SECONDS) as waited:
                await self._changed.wait()
            if waited.cancelled_caught or self._done:
                return

    def _key_for(self, request: types.ServerRequest) -> str:
        meta = request.params.meta if request.params is not None else None
        named = meta.get(INPUT_KEY_META) if isinstance(meta, Mapping) else None
        if isinstance(named, str) and named and named not in self._questions:
            return named
        kind = _KINDS.get(request.method, "input")
        while True:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            key = f"{kind}-{self._counts[kind]}"
            if key not in self._questions:
                return key


class InputRounds:
    """The exchanges in progress, each owned by this object's task group for as long as it runs."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._exchanges: dict[str, Exchange] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncGenerator[InputRounds]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def run(
        self,
        *,
        principal: str,
        stream: ClientChannel,
        input_responses: Mapping[str, Any] | None,
        request_state: str | None,
        start: Start,
    ) -> Outcome:
        """One round of a 2026-07-28 request: a new exchange, or the next round of the one its state names."""
        if request_state is not None:
            exchange = self._resume(request_state, principal)
        else:
            if self._tg is None:
                raise MCPError(types.INTERNAL_ERROR, "the proxy is not serving multi-round requests (shutting down)")
            exchange = Exchange(self, principal, input_responses or {}, self._clock)
            self._exchanges[exchange.id] = exchange
            self._tg.start_soon(exchange.run, start)
        exchange.attach(stream, input_responses or {})
        try:
            return await exchange.next_outcome()
        except anyio.get_cancelled_exc_class():
            if request_state is None and exchange.round == 0:
                exchange.abandon()
            raise

    def seal(self, exchange: Exchange) -> str:
        body = f"{exchange.id}.{exchange.round}"
        return f"{body}.{self._mac(body, exchange.principal)}"

    def forget(self, exchange: Exchange) -> None:
        self._exchanges.pop(exchange.id, None)

    def _resume(self, state: str, principal: str) -> Exchange:
        exchange_id, _, rest = state.partition(".")
        round_text, _, mac = rest.partition(".")
        if not hmac.compare_digest(mac, self._mac(f"{exchange_id}.{round_text}", principal)):
            raise MCPError(types.INVALID_PARAMS, "requestState failed its integrity check; send it back unchanged")
        exchange = self._exchanges.get(exchange_id)
        if exchange is None or str(exchange.round) != round_text:
            raise MCPError(
                types.INVALID_PARAMS,
                "requestState names a round that is over (answered, expired or cancelled); "
                "send the request again without requestState",
            )
        return exchange

    def _mac(self, body: str, principal: str) -> str:
        digest = hmac.new(self._secret, f"{body}|{principal}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
