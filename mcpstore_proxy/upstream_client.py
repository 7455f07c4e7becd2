"""The proxy's own MCP client for an upstream session: what the SDK's `ClientSession` did for it, in one task and a
few slots.

The SDK's `ClientSession` keeps, for each session's whole life, two task groups (its own and its dispatcher's), a
task reading the session's stream, and tables for what the proxy never uses (tool output validation, listen
routes, notification bindings): about 6 KiB of an idle session's memory. The proxy writes its requests and reads
their answers itself already (`DirectRequests`). `LeanClient` does the rest:

- the handshake: `initialize`, declaring what the session's client declared (sampling, elicitation, roots) as the
  SDK's client declares it, refusing a protocol version it does not speak, then `notifications/initialized`;
- while its block runs, one task reads the session's stream: it hands each notification to the relay in a task of
  its own (as the SDK does, so that a slow client holds up no other message), reports progress to the request that
  asked for it, answers `ping`, puts the upstream's questions (sampling, elicitation, roots) to the relay in tasks
  of their own and answers with what the client said (or the SDK's refusal, for what the client did not declare),
  and cancels a question the upstream withdraws (`notifications/cancelled`).

It runs the sessions `DirectRequests` can write for (an upstream over stdio, or in memory) while nothing is traced
(`session_clients` picks the client of each session).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Final, Protocol, Self

import anyio
from mcp import types
from mcp.client.session import IncomingMessage
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.message import SessionMessage
from mcp_types import methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import ValidationError

from mcpstore_proxy.__about__ import __version__
from mcpstore_proxy.client_capabilities import ClientCapability
from mcpstore_proxy.compat import ReadStream, in_a_trace, with_trace_context
from mcpstore_proxy.direct_requests import DirectRequests

__all__ = ["CLIENT_INFO", "LeanClient", "Question", "Questions"]

logger = logging.getLogger(__name__)

CLIENT_INFO: Final = types.Implementation(name="mcpstore-proxy", version=__version__)
"""How the proxy names itself to its upstreams."""
_CLOSE_SECONDS: Final = 5.0
"""How long leaving the block waits for its tasks, once cancelled, to end."""

Question = types.CreateMessageRequest | types.ElicitRequest | types.ListRootsRequest
"""What an upstream may ask the session's client."""

_UNDECLARED: Final[dict[type[Question], tuple[ClientCapability, str]]] = {
    types.CreateMessageRequest: ("sampling", "Sampling not supported"),
    types.ElicitRequest: ("elicitation", "Elicitation not supported"),
    types.ListRootsRequest: ("roots", "List roots not supported"),
}
"""The capability each question needs, and the SDK client's refusal when it was not declared."""


class Questions(Protocol):
    """Where what the upstream says goes (the session's `SessionRelay`)."""

    async def on_message(self, message: IncomingMessage) -> None: ...

    async def answer(self, question: Question) -> types.ClientResult | types.ErrorData: ...


def declared_capabilities(declared: frozenset[ClientCapability]) -> types.ClientCapabilities:
    """The capabilities the SDK's client declares for these callbacks (see `ClientSession._build_capabilities`)."""
    return types.ClientCapabilities(
        sampling=types.SamplingCapability() if "sampling" in declared else None,
        elicitation=(
            types.ElicitationCapability(form=types.FormElicitationCapability(), url=types.UrlElicitationCapability())
            if "elicitation" in declared
            else None
        ),
        roots=types.RootsCapability(list_changed=True) if "roots" in declared else None,
    )


class LeanClient:
    """An upstream session's client side, on `read_stream` and `requests` (see the module docstring)."""

    __slots__ = (
        "_declared",
        "_in_flight",
        "_on_end",
        "_questions",
        "_read",
        "_reader",
        "_requests",
        "_tasks",
        "initialize_result",
    )

    def __init__(
        self,
        read_stream: ReadStream[SessionMessage | Exception],
        requests: DirectRequests,
        questions: Questions,
        declared: frozenset[ClientCapability],
        on_end: Callable[[], None],
    ) -> None:
        self._read = read_stream
        self._requests = requests
        self._questions = questions
        self._declared = declared
        self._on_end = on_end
        """Called once reading ends, however it ended."""
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        """The tasks forwarding what the upstream said, while they run (made at the first)."""
        self._in_flight: dict[types.RequestId, asyncio.Task[None]] | None = None
        """The upstream's questions being answered, by id (made at the first)."""
        self.initialize_result: types.InitializeResult | None = None

    def __repr__(self) -> str:
        state = "ready" if self.initialize_result else "starting"
        return f"<LeanClient {state}, {len(self._tasks or ())} forwards in flight>"

    @property
    def server_capabilities(self) -> types.ServerCapabilities | None:
        return self.initialize_result.capabilities if self.initialize_result else None

    async def __aenter__(self) -> Self:
        self._reader = asyncio.get_running_loop().create_task(self._read_all(), name="upstream reader")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        tasks = [self._reader, *(self._tasks or ())] if self._reader is not None else list(self._tasks or ())
        for task in tasks:
            task.cancel()
        with anyio.move_on_after(_CLOSE_SECONDS, shield=True):
            await asyncio.wait(tasks)

    async def initialize(
        self, client_info: types.Implementation = CLIENT_INFO, *, timeout: float = math.inf
    ) -> types.InitializeResult:
        """The handshake (bounded by its caller: an upstream session's start has its own deadline).

        Raises:
            MCPError: the upstream's error, or the session ended first.
            TimeoutError: no answer within `timeout` seconds.
            RuntimeError: the upstream speaks no protocol version of the handshake era.
            pydantic.ValidationError: its answer is not an `initialize` result.
        """
        params = types.InitializeRequestParams(
            protocol_version=LATEST_HANDSHAKE_VERSION,
            capabilities=declared_capabilities(self._declared),
            client_info=client_info,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)
        raw = await self._requests.request("initialize", params, timeout=timeout)
        result = types.InitializeResult.model_validate(raw, by_name=False)
        if result.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise RuntimeError(f"Unsupported protocol version from the server: {result.protocol_version}")
        self.initialize_result = result
        await self._requests.notify("notifications/initialized", None)
        return result

    def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        typed: Callable[[], types.ClientRequest],
        *,
        timeout: float,
        progress: ProgressFnT | None,
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """The raw result of `method` with `params`, under the proxy's own id (see `session_clients.SessionClient`;
        `typed` is for the SDK's client, not needed here). `DirectRequests`' own coroutine, not one awaiting it:
        a frame less per call."""
        if in_a_trace():  # passed on, as the SDK's client passes it (nothing records a span: tracing is off)
            params = with_trace_context(params)
        return self._requests.request(method, params, timeout=timeout, on_progress=progress)

    async def fetch(self, request: types.ClientRequest) -> dict[str, Any]:
        data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
        return await self._requests.request(data["method"], data.get("params"), timeout=math.inf)

    async def notify(self, notification: types.ClientNotification) -> None:
        data = notification.model_dump(by_alias=True, mode="json", exclude_none=True)
        await self._requests.notify(data["method"], data.get("params"))

    def adopt(self, result: types.InitializeResult) -> None:
        """Keep `result`, an answer equal to the one it got, in its place (see
        `session_clients.share_initialize_result`)."""
        self.initialize_result = result

    @property
    def _version(self) -> str:
        return self.initialize_result.protocol_version if self.initialize_result else LATEST_HANDSHAKE_VERSION

    async def _read_all(self) -> None:
        try:
            async for item in self._read:
                if isinstance(item, Exception):
                    logger.debug("upstream stream fault: %r", item)  # a line that did not parse; the next may
                    continue
                message = item.message  # taken now: the stream empties the item when asked for the next
                if isinstance(message, types.JSONRPCNotification):
                    self._notified(message.method, message.params)
                elif isinstance(message, types.JSONRPCRequest):
                    self._asked(message)
                else:  # answers to the proxy's requests were taken off the stream before it
                    logger.debug("dropped an answer to no request of ours (id %r)", message.id)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        except Exception:  # the boundary: a bug here ends this session, never the task that owns it
            logger.exception("reading an upstream session failed; ending it")
        finally:
            self._on_end()

    def _notified(self, method: str, params: Mapping[str, Any] | None) -> None:
        if method == "notifications/cancelled":
            withdrawn = params.get("requestId") if params else None
            if isinstance(withdrawn, str | int) and self._in_flight is not None:
                task = self._in_flight.get(withdrawn)
                if task is not None:
                    task.cancel()  # the upstream expects no answer to it
            return
        if method == "notifications/progress":
            self._progressed(params or {})
            return
        try:
            notification = methods.parse_server_notification(method, self._version, params)
        except KeyError:
            logger.debug("dropped %r: not defined at %s", method, self._version)
            return
        except ValidationError:
            logger.warning("Failed to validate notification: %s", method, exc_info=True)
            return
        self._spawn(self._questions.on_message(notification))  # pyright: ignore[reportArgumentType]

    def _progressed(self, params: Mapping[str, Any]) -> None:
        token, progress = params.get("progressToken"), params.get("progress")
        report = self._requests.progress_of(token)
        if report is None or type(progress) not in (int, float):
            return
        total, message = params.get("total"), params.get("message")
        self._spawn(
            report(
                float(progress),  # pyright: ignore[reportArgumentType]
                float(total) if type(total) in (int, float) else None,  # pyright: ignore[reportArgumentType]
                message if isinstance(message, str) else None,
            )
        )

    def _asked(self, request: types.JSONRPCRequest) -> None:
        task = self._spawn(self._answered(request))
        if self._in_flight is None:
            self._in_flight = {}
        self._in_flight[request.id] = task

    async def _answered(self, request: types.JSONRPCRequest) -> None:
        try:
            try:
                answer = await self._answer(request.method, request.params)
            except Exception:  # the upstream waits for an answer: it gets one, as the SDK's dispatcher gives one
                logger.exception("answering %s from an upstream failed", request.method)
                answer = types.ErrorData(code=types.INTERNAL_ERROR, message=f"answering {request.method} failed")
            if isinstance(answer, types.ErrorData):
                await self._requests.answer(request.id, error=answer)
            else:
                await self._requests.answer(request.id, result=answer)
        finally:
            in_flight = self._in_flight
            if in_flight is not None:
                in_flight.pop(request.id, None)
                if not in_flight:
                    self._in_flight = None  # an empty dict is 0.1 KiB, for each idle session

    async def _answer(self, method: str, params: Mapping[str, Any] | None) -> dict[str, Any] | types.ErrorData:
        try:
            request = methods.parse_server_request(method, self._version, params)
        except KeyError:
            return types.ErrorData(code=types.METHOD_NOT_FOUND, message="Method not found", data=method)
        except ValidationError as error:
            return types.ErrorData(code=types.INVALID_PARAMS, message=f"Invalid params for {method}: {error}")
        if isinstance(request, types.PingRequest):
            return {}
        if not isinstance(request, Question):
            return types.ErrorData(code=types.METHOD_NOT_FOUND, message="Method not found", data=method)
        capability, refusal = _UNDECLARED[type(request)]
        if capability not in self._declared:
            return types.ErrorData(code=types.INVALID_REQUEST, message=refusal)
        answer = await self._questions.answer(request)
        if isinstance(answer, types.ErrorData):
            return answer
        return answer.model_dump(by_alias=True, mode="json", exclude_none=True)

    def _spawn(self, work: Coroutine[Any, Any, None] | Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(_contained(work))
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        tasks = self._tasks
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                self._tasks = None  # an empty set is 0.2 KiB, for each idle session


async def _contained(work: Awaitable[None]) -> None:
    """`work`, whose failure is logged here: a forward's task is nobody's child to raise into."""
    try:
        await work
    except Exception:
        logger.exception("forwarding what an upstream said failed")
