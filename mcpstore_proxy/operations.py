"""The operation being answered, as the metrics and the tracing see it.

`ObservedOperations` is a server middleware (the outermost): for each request
a client sends, it opens an `Operation` in a context variable, which every
task the request starts inherits. Routing notes what the request reached
(`note_tool`, `note_upstream`), and each upstream session times its own leg
(`upstream_leg`). When the request is answered, its observer (the app's
metrics, `metrics`) hears of it once, and its span (`tracing`), if any, ends.
Without an observer and without tracing, the middleware is not installed, and
the notes find no operation: the proxy pays one context-variable read each.

Label values stay bounded: a method the proxy does not serve counts as
`other`, and a tool is named only once routing found it in the catalog.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

__all__ = [
    "SERVED_METHODS",
    "ObservedOperations",
    "Operation",
    "OperationObserver",
    "OperationTracer",
    "Outcome",
    "note_tool",
    "note_upstream",
    "operation_in_progress",
    "upstream_leg",
]

Context = ServerRequestContext[Any, Any]
Outcome = Literal["ok", "error", "cancelled"]

SERVED_METHODS: Final = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "logging/setLevel",
        "subscriptions/listen",
    }
)
"""The methods a metric names; any other counts as `other` (a client may send any string)."""


class OperationObserver(Protocol):
    def operation_answered(self, operation: Operation, seconds: float) -> None:
        """One request was answered (or failed, or was cancelled: `operation.outcome`) after `seconds`."""
        ...

    def upstream_answered(self, method: str, upstream: str, outcome: Outcome, seconds: float) -> None:
        """One request to an upstream, on behalf of some operation, was answered after `seconds`."""
        ...


class OperationTracer(Protocol):
    def span(self, ctx: Context, operation: Operation) -> AbstractContextManager[None]:
        """A span around the answer to the request of `ctx`, current while it runs."""
        ...


@dataclass(slots=True, eq=False)
class Operation:
    """One request from a client, while it is answered."""

    method: str
    principal: str
    """The principal's name where metrics name principals, else ""."""
    observer: OperationObserver | None
    tool: str = ""
    """The exposed tool a tools/call reached ("" until routing found it)."""
    upstream: str = ""
    """The upstream the request was forwarded to ("" if none)."""
    was_cancelled: bool = False
    """Its upstream leg was cancelled (the client hung up, or the proxy shut down)."""
    answered: Outcome = "error"
    """How its answer says it ended, once it has: an exception leaves it an error (see `outcome`)."""

    @property
    def outcome(self) -> Outcome:
        """How it ended: cancelled if its upstream leg was (whatever the client was told then), else as answered."""
        return "cancelled" if self.was_cancelled else self.answered

    @outcome.setter
    def outcome(self, value: Outcome) -> None:
        self.answered = value


_CURRENT: ContextVar[Operation | None] = ContextVar("mcpstore_proxy.operation", default=None)


def note_tool(name: str) -> None:
    """The operation's tools/call reached the exposed tool `name`."""
    operation = _CURRENT.get()
    if operation is not None:
        operation.tool = name


def note_upstream(name: str) -> None:
    """The operation is forwarded to the upstream `name`."""
    operation = _CURRENT.get()
    if operation is not None:
        operation.upstream = name


class upstream_leg:  # noqa: N801  # used as a function; a class, as a generator costs more per call
    """Time one request to an upstream for the operation in progress. The block may set `outcome` ("error" for a
    tool's error result); an exception makes it an error, a cancellation cancelled."""

    __slots__ = ("_method", "_operation", "_started", "_upstream", "outcome")

    def __init__(self, method: str, upstream: str) -> None:
        self._method = method
        self._upstream = upstream
        self._operation: Operation | None = None
        """The operation it is timed for, when that has an observer."""
        self._started = 0.0
        self.outcome: Outcome = "ok"

    def __enter__(self) -> upstream_leg:
        operation = _CURRENT.get()
        if operation is not None and operation.observer is not None:
            self._operation = operation
            self._started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        operation = self._operation
        if operation is None or operation.observer is None:
            return
        if kind is not None:
            if issubclass(kind, anyio.get_cancelled_exc_class()):
                self.outcome = "cancelled"
                operation.was_cancelled = True
            else:
                self.outcome = "error"
        operation.observer.upstream_answered(
            self._method, self._upstream, self.outcome, time.perf_counter() - self._started
        )


class operation_in_progress:  # noqa: N801  # used as a function; a class, as a generator costs more per call
    """A request being answered: current while the block runs (so routing can note what it reached), heard of by
    the observer once, when the block ends."""

    __slots__ = ("_observer", "_operation", "_started", "_token")

    def __init__(self, method: str, principal: str, observer: OperationObserver | None) -> None:
        self._operation = Operation(method if method in SERVED_METHODS else "other", principal, observer)
        self._observer = observer
        self._token: Token[Operation | None] | None = None
        self._started = 0.0

    def __enter__(self) -> Operation:
        self._token = _CURRENT.set(self._operation)
        self._started = time.perf_counter()
        return self._operation

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
        if self._observer is not None:
            self._observer.operation_answered(self._operation, time.perf_counter() - self._started)


class ObservedOperations:
    """The server middleware that opens an `Operation` for each request (see the module docstring)."""

    def __init__(
        self,
        observer: OperationObserver | None,
        tracer: OperationTracer | None,
        principal_of: Callable[[Context], str] | None = None,
    ) -> None:
        self._observer = observer
        self._tracer = tracer
        self._principal_of = principal_of

    async def __call__(self, ctx: Context, call_next: CallNext) -> HandlerResult:
        if ctx.request_id is None:
            return await call_next(ctx)  # a notification: no answer to time
        principal = self._principal_of(ctx) if self._principal_of is not None else ""
        with operation_in_progress(ctx.method, principal, self._observer) as operation:
            if self._tracer is None:
                return await _answer(ctx, call_next, operation)
            with self._tracer.span(ctx, operation):
                return await _answer(ctx, call_next, operation)


async def _answer(ctx: Context, call_next: CallNext, operation: Operation) -> HandlerResult:
    try:
        result = await call_next(ctx)
        operation.outcome = "error" if is_tool_error(result) else "ok"
        return result
    except anyio.get_cancelled_exc_class():
        operation.outcome = "cancelled"
        raise


def is_tool_error(result: HandlerResult) -> bool:
    """Whether a result is a tool's error result (`isError: true`), which OpenTelemetry counts as an error."""
    if isinstance(result, dict):
        return result.get("isError") is True
    return getattr(result, "is_error", None) is True
