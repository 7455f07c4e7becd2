"""What every configured upstream has in common: a catalog session kept alive with retries, and a state.

`UpstreamService.maintain` is the upstream's owner task. Started with the
proxy (or when the service is added), it holds the upstream's *catalog
session*, which answers the listings (tools, prompts, resources, templates)
for the catalog, so that listing never spawns a client's session; its
list-changed notices refresh the catalog for every client, and so does a
call that the upstream rejected for its arguments (`tools_may_have_changed`:
a tool may have changed without a notice). It never raises
into its parent: any failure becomes the state `failed`, with the reason in
`error`, one log line, and a retry after a backoff (1 s, doubling to 60 s).

States: `starting` → `ready`; `ready` → `restarting` when the upstream goes
away; `failed` while waiting to retry; `stopped` once removed or shut down.
`restart()` and `close()` are safe in every state, and neither waits for a
start to finish: a start in progress is cancelled. `retire()` is the gentle
close (a reload's): it takes no new calls, lets those in flight finish within a
grace period (see `in_flight`), then closes. A service that replaces another
(`succeed`) keeps its predecessor's listings until it lists its own, and warns
the keys that held sessions with it that their state was reset.

How clients' requests reach the upstream is what tells the two kinds apart
(see `shared` and `isolated`).
"""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import anyio
from mcp import MCPError, types

from mcpstore_proxy.backoff import Backoff
from mcpstore_proxy.client_capabilities import ClientCapability
from mcpstore_proxy.clock import SYSTEM_CLOCK, Clock
from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.errors import UpstreamError, UpstreamStartError, UpstreamStoppedError, first_line
from mcpstore_proxy.events import EventLog
from mcpstore_proxy.in_flight import CallsInFlight
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.logs import log_fields
from mcpstore_proxy.pool import PoolHooks, Spawner
from mcpstore_proxy.relay import ClientCall, ListKind, SessionRelay
from mcpstore_proxy.transports import TransportFactory
from mcpstore_proxy.upstream import EndReason, UpstreamSession
from mcpstore_proxy.upstream_listings import Listing
from mcpstore_proxy.warm_pool import TaskStarter

__all__ = ["CATALOG_KEY", "LISTING_KINDS", "ServiceContext", "ServiceState", "UpstreamService"]

logger = logging.getLogger(__name__)

LISTING_KINDS: Final[tuple[ListKind, ...]] = ("tools", "prompts", "resources", "templates")
_STABLE_AFTER_SECONDS: Final = 30.0
_RESTARTED: Final = "the upstream was restarted"
_T = TypeVar("_T")

CATALOG_KEY: Final = SessionKey("connection", "catalog")
"""Stands for "no particular client" when asking the engine how a URI is exposed."""


class ServiceState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """What every service gets from the engine that runs it."""

    start_timeout_seconds: float
    hooks: PoolHooks
    transports: TransportFactory
    spawn: Spawner
    """Starts an upstream session's owner task in the engine's task group."""
    start_task: TaskStarter
    """Starts any other background task there (a warm pool's wait before it refills)."""
    on_catalog_changed: Callable[[], None]
    events: EventLog = field(default_factory=EventLog)
    """Where spawns, resets, refusals and timeouts are recorded (the engine's)."""
    clock: Clock = SYSTEM_CLOCK
    """The engine's wall clock (tests move it by hand)."""


class UpstreamService(ABC):
    """A configured upstream: its state, what it offers, and the sessions clients hold with it."""

    def __init__(
        self, name: str, config: UpstreamConfig, *, prefix: str, context: ServiceContext, hides_start_detail: bool
    ) -> None:
        self.name = name
        self.hides_start_detail = hides_start_detail
        self.config = config
        self.prefix = prefix
        self.state = ServiceState.STARTING
        self.error: UpstreamError | None = None
        self.listings: dict[ListKind, Listing] = {}
        self.capabilities: types.ServerCapabilities | None = None
        self.first_attempt_done = anyio.Event()
        """Set once the first start has succeeded or failed (or the service stopped first)."""
        self._context = context
        self._hooks = context.hooks
        self._start_timeout_seconds = context.start_timeout_seconds
        self._on_catalog_changed = context.on_catalog_changed
        self._catalog: UpstreamSession | None = None
        self._wake = anyio.Event()
        self._retry_now = anyio.Event()
        self._state_changed = anyio.Event()
        self._is_closing = False
        self._restart_now = False
        self._should_relist_tools = False
        self._calls = CallsInFlight(name, context.clock)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.state.value}>"

    @property
    def is_up(self) -> bool:
        return self.state in (ServiceState.READY, ServiceState.RESTARTING)

    @property
    def is_closing(self) -> bool:
        return self._is_closing

    def visible(self, kind: ListKind) -> Listing:
        """What the catalog lists of `kind`: nothing while the upstream is down."""
        return self.listings.get(kind, []) if self.is_up else []

    # The owner task.

    async def maintain(self) -> None:
        """Keep the catalog session up until `close()`: start, list, follow changes, restart on loss.

        Never raises (but for cancellation): a failure becomes the state `failed` and a retry.
        """
        backoff = Backoff()
        try:
            while not self._is_closing:
                if self._restart_now:
                    self._restart_now = False
                    self.error = None
                    backoff.reset()
                    logger.info("restarting upstream '%s' as asked", self.name)
                self._retry_now = anyio.Event()  # a restart asked before this start is honoured by it
                started = anyio.current_time()
                session = self._new_catalog_session()
                self._catalog = session
                self._announce_state()
                try:
                    await self._keep(session)
                except Exception as error:  # the boundary: no fault here may reach the engine
                    logger.exception("upstream '%s': unexpected fault in its catalog session", self.name)
                    self.error = UpstreamError(self.name, f"upstream '{self.name}' failed: {first_line(error)}")
                if self._is_closing:
                    return
                if anyio.current_time() - started >= _STABLE_AFTER_SECONDS:
                    backoff.reset()
                if self._restart_now:
                    continue
                delay = backoff.next()
                if session.end_reason is EndReason.LOST and self.state is ServiceState.READY:
                    reason = self._reason(session)
                    logger.warning(
                        "upstream '%s' went away (%s); restarting it",
                        self.name,
                        reason,
                        extra=log_fields(upstream=self.name, error=reason),
                    )
                    self._set_state(ServiceState.RESTARTING)
                else:
                    self.error = self.error or session.failure or UpstreamStartError(self.name, self._reason(session))
                    logger.warning(
                        "%s; retrying in %g s",
                        self.error.described,
                        delay,
                        extra=log_fields(upstream=self.name, error=self.error.message),
                    )
                    self._set_state(ServiceState.FAILED)
                self.first_attempt_done.set()
                await self._pause(delay)
        finally:
            self._catalog = None
            self._set_state(ServiceState.STOPPED)
            self.first_attempt_done.set()

    async def _keep(self, session: UpstreamSession) -> None:
        """Run one catalog session until it ends or is asked to."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            try:
                await self._serve_catalog(session)
            finally:
                session.close_soon(_RESTARTED if self._restart_now else "the upstream's catalog session ended")

    async def _pause(self, seconds: float) -> None:
        """Wait out a retry delay, or less if a restart or close asks for it sooner."""
        with anyio.move_on_after(seconds):
            await self._retry_now.wait()
        self._retry_now = anyio.Event()

    def _new_catalog_session(self) -> UpstreamSession:
        relay = SessionRelay(self.name, exposed_uri=lambda uri: self._hooks.exposed_uri(CATALOG_KEY, self.name, uri))
        relay.on_list_changed = self._list_changed
        relay.announces_list_changes = False  # the engine tells every client when the catalog changes
        self._prepare_catalog_relay(relay)
        return UpstreamSession(
            self.name,
            self.config,
            start_timeout_seconds=self._start_timeout_seconds,
            relay=relay,
            declared=self._catalog_declares,
            label="the catalog",
            on_end=lambda _: self._wake.set(),
            transports=self._context.transports,
            hides_start_detail=self.hides_start_detail,
            events=self._context.events,
        )

    async def _serve_catalog(self, session: UpstreamSession) -> None:
        try:
            await self._refresh(session, LISTING_KINDS)
        except UpstreamError as error:
            self.error = error
            return
        self.error = None
        self.capabilities = session.server_capabilities
        self._became_ready()
        self._set_state(ServiceState.READY)
        self.first_attempt_done.set()
        logger.info("upstream '%s' is ready with %d tools", self.name, len(self.listings.get("tools", [])))
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if session.has_ended or session.is_closing or self._is_closing:
                return
            if self._should_relist_tools:
                self._should_relist_tools = False
                try:
                    await self._refresh(session, ("tools",))
                except (UpstreamError, MCPError) as error:
                    logger.warning("upstream '%s': could not list its tools again: %s", self.name, first_line(error))

    async def _list_changed(self, kind: ListKind) -> None:
        session = self._catalog
        if session is None or session.is_closing:
            return
        try:
            await self._refresh(session, ("resources", "templates") if kind == "resources" else (kind,))
        except UpstreamError as error:
            logger.warning("%s", error.described)

    async def _refresh(self, session: UpstreamSession, kinds: tuple[ListKind, ...]) -> None:
        """Re-read `kinds` from the catalog session, once it is up (its start has its own deadline); the listing
        is bounded by the start timeout too."""
        await session.client()
        listings: dict[ListKind, Listing] = {}
        pending: ListKind | None = None
        with anyio.move_on_after(self._start_timeout_seconds):
            for pending in kinds:
                listings[pending] = await session.list_all(pending)
        if len(listings) < len(kinds):
            raise UpstreamStartError(
                self.name,
                f"upstream '{self.name}' did not list its {pending} within {self._start_timeout_seconds:g} s "
                f"(raise upstream_start_timeout_seconds, or check mcpServers.{self.name})",
            )
        if any(self.listings.get(kind) != listing for kind, listing in listings.items()):
            self.listings.update(listings)
            self._on_catalog_changed()

    def _set_state(self, state: ServiceState) -> None:
        was_up = self.is_up
        self.state = state
        self._announce_state()
        if self.is_up != was_up:
            self._on_catalog_changed()

    def _announce_state(self) -> None:
        self._state_changed.set()
        self._state_changed = anyio.Event()

    def _reason(self, session: UpstreamSession) -> str:
        return session.failure.described if session.failure else f"upstream '{self.name}' closed the connection"

    # Operations.

    async def state_changed(self) -> None:
        """Wait for the next change of `state` (or of the catalog session)."""
        await self._state_changed.wait()

    def tools_may_have_changed(self) -> None:
        """The upstream rejected a call's arguments (INVALID_PARAMS): have the catalog session list its tools
        again soon, in its owner task, once however many calls were rejected meanwhile."""
        self._should_relist_tools = True
        self._wake.set()

    async def refresh_catalog(self) -> None:
        """Read every listing again from the catalog session."""
        session = self._catalog
        if session is not None and session.is_ready:
            await self._refresh(session, LISTING_KINDS)

    async def restart(self) -> None:
        """Close every session with this upstream and start it afresh, at once (a start in progress is cut short).

        On return the state already says so (`restarting` while its tools stay listed, else `starting`), so a
        `wait_service` that follows waits for the fresh start.
        """
        if self._is_closing:
            return
        self._restart_now = True
        self._set_state(ServiceState.RESTARTING if self.is_up else ServiceState.STARTING)
        # The session to close is the one current now: once the retry loop wakes, the current one is the fresh one.
        catalog = self._catalog
        if catalog is not None:
            catalog.close_soon(_RESTARTED)
        self._retry_now.set()
        await self._reset_sessions(_RESTARTED)
        if catalog is not None:
            await catalog.aclose(_RESTARTED)

    async def close(self, reason: str = "it was removed") -> None:
        """Close every client session, then stop the catalog session (and `maintain`); requests fail with
        `reason`."""
        self._is_closing = True
        self._retry_now.set()
        self._wake.set()
        await self._close_sessions(reason)
        catalog = self._catalog
        if catalog is not None:
            await catalog.aclose(reason)

    async def retire(self, grace_seconds: float, reason: str) -> None:
        """Take no new calls, give those in flight up to `grace_seconds` to finish, then close (the rest fail
        with `reason`)."""
        await self._calls.stop_taking(grace_seconds, reason)
        await self.close(reason)

    def succeed(self, predecessor: UpstreamService) -> None:
        """Take over from `predecessor`, which this service (not started yet) replaces: its listings stand while
        this one starts, and each key that held a session with it hears on its next call that its state was
        reset."""
        if predecessor.is_up:
            self.listings = dict(predecessor.listings)
            self.state = ServiceState.RESTARTING
        self.warn_on_next_call(predecessor.held_keys())

    def _stopped_error(self) -> UpstreamStoppedError:
        return UpstreamStoppedError(self.name, f"upstream '{self.name}' is stopped", was_sent=False)

    # What the two kinds of upstream do differently.

    @property
    @abstractmethod
    def _catalog_declares(self) -> frozenset[ClientCapability]:
        """The client capabilities the catalog session declares upstream."""

    def _prepare_catalog_relay(self, relay: SessionRelay) -> None:
        """Adjust how the catalog session's own messages are routed (by default, not at all)."""
        return

    def _became_ready(self) -> None:
        """The catalog session is up (again); by default nothing follows."""
        return

    @property
    @abstractmethod
    def client_sessions(self) -> int:
        """How many client sessions this upstream holds."""

    @property
    def warm_pool(self) -> tuple[int, int] | None:
        """Its warm pool's spares ready and their target (`warm_sessions`), when it keeps one."""
        return None

    @property
    def calls_in_flight(self) -> int:
        return len(self._calls)

    async def run(
        self, key: SessionKey, call: ClientCall | None, operation: Callable[[UpstreamSession], Awaitable[_T]]
    ) -> _T:
        """Run `operation` in the session that `key` holds with this upstream.

        Raises:
            UpstreamStoppedError: the service is retiring (`retire`) and takes no new calls.
        """
        with self._calls:
            return await self._run(key, call, operation)

    @abstractmethod
    def _run(
        self, key: SessionKey, call: ClientCall | None, operation: Callable[[UpstreamSession], Awaitable[_T]]
    ) -> Awaitable[_T]:
        """Run `operation` in the session that `key` holds with this upstream (what `run` counts)."""

    @abstractmethod
    def held_keys(self) -> set[SessionKey]:
        """The named and connection keys that hold state with this upstream now."""

    @abstractmethod
    def warn_on_next_call(self, keys: set[SessionKey]) -> None:
        """Have each of `keys` warned on its next call that its state with this upstream was reset."""

    @abstractmethod
    async def open(self, key: SessionKey) -> UpstreamSession:
        """The session `key` holds with this upstream, started now if it has none; waits until it is ready.

        Raises:
            UpstreamError: the upstream could not be started.
        """

    @abstractmethod
    def session_of(self, key: SessionKey) -> UpstreamSession | None:
        """The session `key` holds with this upstream, if it has one (a shared upstream's, for anyone)."""

    @abstractmethod
    def own_session(self, key: SessionKey) -> UpstreamSession | None:
        """The session that `key` alone holds with this upstream (never a shared one)."""

    @abstractmethod
    async def subscribe(self, key: SessionKey, call: ClientCall | None, uri: str, *, subscribe: bool) -> None:
        """Forward a resource (un)subscription."""

    @abstractmethod
    async def set_logging_level(self, key: SessionKey, level: types.LoggingLevel) -> None:
        """Forward a client's `logging/setLevel` to the session(s) it concerns."""

    @abstractmethod
    async def end_session(self, key: SessionKey) -> None:
        """Forget `key`: close the session it alone holds (bounded)."""

    @abstractmethod
    async def _reset_sessions(self, reason: str) -> None:
        """Close every client session; later requests open fresh ones."""

    @abstractmethod
    async def _close_sessions(self, reason: str) -> None:
        """Close every client session and take no new ones."""
