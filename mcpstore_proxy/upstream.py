"""One live MCP session with one upstream server, owned by one task.

The SDK's transports and clients hold task groups, so the task that enters
them must be the task that exits them. `UpstreamSession.run` is that owner:
it connects, performs the 2025-11-25 handshake, publishes the ready client,
and then waits until it is asked to close or the upstream goes away. Any other
task may issue requests on the ready session at once. The client is the
proxy's own for an upstream over stdio (or in memory) while nothing is
traced, else the SDK's (see `session_clients`).

A session ends for one of three reasons, recorded in `end_reason`:
`closed` (we asked, saying why: restart, removal, shutdown, the end of its
key), `lost` (the upstream's stream ended: a crash or exit), or `failed` (it
never came up). `on_end` fires once, whichever it was. A request that meets a
closed session fails with `UpstreamStoppedError`, which says whether the
request had been sent; one that had not may safely run on a fresh session.
Why a start failed is worded in `start_failures`.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

import anyio
from mcp import MCPError, types

from mcpstore_proxy.client_capabilities import ClientCapability
from mcpstore_proxy.compat import spans_only_when_traced
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.direct_requests import DirectRequests
from mcpstore_proxy.errors import (
    UpstreamClosedError,
    UpstreamError,
    UpstreamStartError,
    UpstreamStoppedError,
    UpstreamTimeoutError,
)
from mcpstore_proxy.events import EventLog
from mcpstore_proxy.latch import Latch
from mcpstore_proxy.logs import log_fields
from mcpstore_proxy.operations import upstream_leg
from mcpstore_proxy.relay import ClientCall, ListKind, SessionRelay
from mcpstore_proxy.session_clients import SessionClient, session_client, share_initialize_result
from mcpstore_proxy.start_failures import start_error, start_failure, stderr_detail
from mcpstore_proxy.transports import (
    SessionReadStream,
    StderrTail,
    TransportEvents,
    TransportFactory,
    open_transport,
)
from mcpstore_proxy.upstream_listings import Listing, list_every

__all__ = ["EndReason", "UpstreamSession"]

logger = logging.getLogger(__name__)

_CLOSE_TIMEOUT_SECONDS: Final = 10.0


def _describe(method: str, params: Mapping[str, Any] | None) -> str:
    name = (params.get("name") or params.get("uri")) if params else None
    return f"{method} {name!r}" if name else method


class EndReason(enum.Enum):
    CLOSED = "closed"
    LOST = "lost"
    FAILED = "failed"


class UpstreamSession:
    """A persistent MCP session with one upstream, created on demand and reused until it ends."""

    def __init__(
        self,
        upstream: str,
        config: UpstreamConfig,
        *,
        start_timeout_seconds: float,
        relay: SessionRelay,
        declared: frozenset[ClientCapability] = frozenset(),
        label: str = "",
        on_end: Callable[[UpstreamSession], None] | None = None,
        transports: TransportFactory = open_transport,
        hides_start_detail: bool = False,
        events: EventLog | None = None,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self.relay = relay
        self.declared = declared
        """The client capabilities this session declares upstream: those its downstream client declared."""
        self.label = label
        """Whose session this is, as logs may show it (never a session id in clear)."""
        self.server_capabilities: types.ServerCapabilities | None = None
        self.listings: dict[ListKind, Listing] = {}
        """This session's own listings, once it announced a change; the catalog's stand in until then."""
        self.end_reason: EndReason | None = None
        self.failure: UpstreamError | None = None
        self.started_at = time.monotonic()
        """When it was made (`time.monotonic()`, cheaper per call than the event loop's clock), for its age on the
        status page; `last_used` likewise."""
        self.last_used = self.started_at
        self.calls_in_flight = 0
        self.stderr = StderrTail(upstream)
        self._start_timeout_seconds = start_timeout_seconds
        self._on_end = on_end
        self._transports = transports
        self._events = events
        """Where its start, failed start and timeouts are recorded (the engine's, for operators)."""
        self.hides_start_detail = hides_start_detail
        """Whether a failed start tells clients only that it could not connect (the rest goes to `detail`)."""
        self._close_reason = "it was closed"
        self._client: SessionClient | None = None
        self._direct: DirectRequests | None = None
        """Sends the proxy's own requests on a stdio upstream (see `direct_requests`); failed when the session ends."""
        self._ready = Latch()
        self._stop = Latch()
        self._ended = Latch()
        self._is_http_session_expired = False
        self._start_scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        state = self.end_reason.value if self.end_reason else ("ready" if self._client else "starting")
        return f"<UpstreamSession {self.upstream}{' for ' + self.label if self.label else ''} {state}>"

    @property
    def has_ended(self) -> bool:
        return self._ended.is_set()

    @property
    def is_closing(self) -> bool:
        """Asked to close, or its upstream is gone: no new call should start on it."""
        return self._stop.is_set()

    @property
    def is_ready(self) -> bool:
        return self._client is not None

    async def run(self) -> None:
        """Own the upstream connection until `close_soon()` or until the upstream goes away.

        Never raises (but for cancellation): a failure is recorded in `failure`,
        so one broken upstream cannot take down the task group that runs it.
        """
        try:
            await self._connect_and_serve()
        except UpstreamError as error:
            self._fail(error)
        except Exception as error:  # noqa: BLE001  # any transport fault is this upstream's failure, not ours
            self._fail(self._start_failure(error))
        finally:
            self._client = None
            if self._direct is not None:
                self._direct.close()
                self._direct = None
            if self.end_reason is None:
                self.end_reason = EndReason.LOST if self._ready.is_set() else EndReason.FAILED
            if self.failure is None and self.end_reason is not EndReason.CLOSED:
                self.failure = self._lost_error() if self._ready.is_set() else self._start_failure(None)
            self._ready.set()
            self._ended.set()
            if self.end_reason is EndReason.FAILED and self._events is not None:
                reason = self.failure.message if self.failure is not None else ""
                self._events.record("spawn_failed", upstream=self.upstream, session=self.label or None, reason=reason)
            if self._on_end is not None:
                try:
                    self._on_end(self)
                except Exception:  # the boundary: what follows an end (a pool's refill) must not reach the task group
                    logger.exception("upstream '%s': could not handle the end of %s", self.upstream, self.label)

    async def _connect_and_serve(self) -> None:
        spans_only_when_traced()
        with anyio.CancelScope() as start_scope:
            # Only the start is bounded: the deadline is lifted once the handshake is done.
            start_scope.deadline = anyio.current_time() + self._start_timeout_seconds
            self._start_scope = start_scope
            if self._stop.is_set():
                start_scope.cancel()
            events = TransportEvents(self.stderr, self._mark_http_session_expired)
            async with self._transports(self.upstream, self.config, events) as (read_stream, write_stream):
                # Only over stdio: an HTTP upstream's transport needs the per-request headers the SDK adds.
                direct = DirectRequests(write_stream) if self.config.resolved_transport == "stdio" else None
                observed = SessionReadStream(read_stream, self._stop.set, direct)
                client = session_client(observed, write_stream, direct, self.relay, self.declared, self._stop.set)
                async with client:
                    await client.initialize()  # bounded by the start's deadline
                    share_initialize_result(client)
                    if self._events is not None:
                        seconds = time.monotonic() - self.started_at
                        self._events.record(
                            "spawn", upstream=self.upstream, session=self.label or None, seconds=seconds
                        )
                    self.server_capabilities = client.server_capabilities
                    start_scope.deadline = math.inf
                    self._client = client
                    self._direct = direct
                    self._ready.set()
                    await self._stop.wait()
                    if self.end_reason is None and observed.has_ended:
                        self.end_reason = EndReason.LOST
        if start_scope.cancelled_caught and self.end_reason is not EndReason.CLOSED:
            raise start_error(
                self.upstream,
                f"did not finish starting within {self._start_timeout_seconds:g} s "
                f"(raise upstream_start_timeout_seconds, or check mcpServers.{self.upstream})",
                self.stderr,
                hides_detail=self.hides_start_detail,
            )

    async def client(self) -> SessionClient:
        """The ready session, waiting for the start if needed.

        Raises:
            UpstreamStoppedError: the session was closed before it could be used (the request was not sent).
            UpstreamError: the upstream failed to start, or is gone.
        """
        if self._client is not None:
            return self._client  # ready: waiting on the set event would still cost a trip through the loop
        await self._ready.wait()
        if self._client is not None:
            return self._client
        if self.end_reason is EndReason.CLOSED or self.failure is None:
            raise self._stopped(was_sent=False)
        raise self.failure

    async def request(self, request: types.ClientRequest, call: ClientCall | None = None) -> dict[str, Any]:
        """Send `request` upstream for `call` and return the raw result, every field the upstream sent intact.

        While it is in flight, what the upstream starts (log entries, progress, sampling, ...) goes to `call`.
        """
        data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
        return await self._send(data["method"], data.get("params"), call, lambda: request)

    def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None, call: ClientCall | None = None
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """Call the tool `name` for `call` (see `request`)."""
        forwarded = dict(arguments or {})

        def typed() -> types.ClientRequest:
            return types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=forwarded))

        return self._send("tools/call", {"name": name, "arguments": forwarded}, call, typed)

    async def _send(
        self,
        method: str,
        params: dict[str, Any] | None,
        call: ClientCall | None,
        typed: Callable[[], types.ClientRequest],
    ) -> dict[str, Any]:
        """`request`, given the request's wire form; `typed()` builds its model where the SDK's client sends it."""
        client = self._client if self._client is not None else await self.client()
        self.calls_in_flight += 1
        relay = self.relay
        if call is not None:
            relay.call_began(call)  # what the upstream says meanwhile goes to `call`
        answered = False
        try:
            # Our own deadline, not the SDK's read timeout: an upstream may answer with its own timeout error,
            # and that must reach the client unchanged. Abandoning the request cancels it upstream.
            timeout = self.config.call_timeout_seconds
            with upstream_leg(method, self.upstream) as leg:
                progress = relay.progress_for(call)
                result = await client.request(method, params, typed, timeout=timeout, progress=progress)
                answered = True
                if result.get("isError") is True:
                    leg.outcome = "error"
            return result
        except TimeoutError:
            what = _describe(method, params)
            logger.warning(
                "upstream '%s' did not answer %s for %s within %g s; cancelled it upstream",
                self.upstream,
                what,
                self.label or "the catalog",
                self.config.call_timeout_seconds,
                extra=log_fields(upstream=self.upstream, duration_seconds=self.config.call_timeout_seconds),
            )
            if self._events is not None:
                self._events.record(
                    "timeout",
                    upstream=self.upstream,
                    session=self.label or None,
                    reason=f"{what} took over {self.config.call_timeout_seconds:g} s",
                )
            raise UpstreamTimeoutError(
                self.upstream,
                f"upstream '{self.upstream}' did not answer {what} within "
                f"{self.config.call_timeout_seconds:g} s (raise mcpServers.{self.upstream}.call_timeout_seconds "
                "if it needs longer)",
            ) from None
        except MCPError as error:
            raise self._translate(error, _describe(method, params)) from None
        finally:
            self.calls_in_flight -= 1
            self.last_used = time.monotonic()
            if call is not None:
                catching_up = relay.call_ended(call, answered=answered)
                if catching_up is not None:  # the upstream's messages to it go out before its result
                    await catching_up

    async def notify(self, notification: types.ClientNotification) -> None:
        client = await self.client()
        await client.notify(notification)

    async def set_logging_level(self, level: types.LoggingLevel) -> None:
        """Forward a client's `logging/setLevel`, when this upstream has logging at all."""
        if self.server_capabilities is None or self.server_capabilities.logging is None:
            return
        await self.request(types.SetLevelRequest(params=types.SetLevelRequestParams(level=level)))

    async def list_all(self, kind: ListKind) -> Listing:
        """Every item of one listing (following pagination); empty when the upstream lacks the capability."""
        client = await self.client()
        try:
            return await list_every(client.fetch, self.server_capabilities, kind)
        except MCPError as error:
            raise self._translate(error, f"listing {kind}") from None

    def close_soon(self, reason: str = "it was closed") -> None:
        """Ask the owner task to close the session; returns at once. `reason` completes "... because <reason>"
        in the error of any request that meets the closed session."""
        if self.end_reason is None:
            self.end_reason = EndReason.CLOSED
            self._close_reason = reason
        self._stop.set()
        if self._start_scope is not None and not self._ready.is_set():
            self._start_scope.cancel()  # closing a session that is still starting must not wait for its start

    async def aclose(self, reason: str = "it was closed") -> None:
        """Close the session and wait (bounded) until its upstream is gone."""
        self.close_soon(reason)
        with anyio.move_on_after(_CLOSE_TIMEOUT_SECONDS, shield=True):
            await self._ended.wait()

    def _mark_http_session_expired(self) -> None:
        self._is_http_session_expired = True
        self.end_reason = self.end_reason or EndReason.LOST
        self._stop.set()

    def _fail(self, error: UpstreamError) -> None:
        if self.end_reason is None:
            self.end_reason = EndReason.LOST if self._ready.is_set() else EndReason.FAILED
        self.failure = error
        self._stop.set()

    def _translate(self, error: MCPError, what: str) -> Exception:
        if self._is_http_session_expired:
            # The HTTP upstream answered 404 for our session (it restarted, or expired it). The request
            # never ran, so a fresh session may safely run it again; whatever error the closing session
            # reported for it is beside the point.
            return UpstreamClosedError(
                self.upstream,
                f"upstream '{self.upstream}' no longer knows this session (HTTP 404); it was re-initialized",
                is_retryable=True,
            )
        if error.code == types.CONNECTION_CLOSED:
            self._stop.set()
            if self.end_reason is EndReason.CLOSED:
                return self._stopped(was_sent=True, during=what)
            return self._lost_error()
        return error

    def _stopped(self, *, was_sent: bool, during: str = "") -> UpstreamStoppedError:
        when = f" during {during}" if during else " before the request was sent"
        return UpstreamStoppedError(
            self.upstream,
            f"the session with upstream '{self.upstream}' was closed{when}, because {self._close_reason}",
            was_sent=was_sent,
        )

    def _lost_error(self) -> UpstreamClosedError:
        return UpstreamClosedError(
            self.upstream,
            f"upstream '{self.upstream}' closed the connection; the next call starts a fresh session",
            detail=stderr_detail(self.stderr),
        )

    def _start_failure(self, error: BaseException | None) -> UpstreamStartError:
        return start_failure(self.upstream, self.config, error, self.stderr, hides_detail=self.hides_start_detail)
