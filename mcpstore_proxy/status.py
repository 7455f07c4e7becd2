"""What operators see of a service: `check`'s table, `/healthz`, the admin API and the SDK share one shape.

`status_report` is the proxy's state in detail, for operators: `/admin/status` returns it as JSON, and the status
page (`/status`) and `mcpstore-proxy status` render it. Besides each upstream's `ServiceInfo`, it lists the
client sessions each isolated upstream holds (`ClientSessionInfo`: whose, of which kind, how old, how long idle),
named by their short hash only, and the recent resets, refusals, timeouts and failed spawns (`events`).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel

from mcpstore_proxy.events import EventKind, OpsEvent
from mcpstore_proxy.services import IsolatedService, ServiceState, UpstreamService

if TYPE_CHECKING:
    from mcpstore_proxy.engine import ProxyEngine

__all__ = ["ClientSessionInfo", "ServiceInfo", "WarmPoolInfo", "client_sessions", "service_info", "status_report"]

REPORTED_EVENTS: Final[frozenset[EventKind]] = frozenset({"reset", "refusal", "timeout", "spawn_failed"})
_EVENTS_SHOWN: Final = 50


class WarmPoolInfo(BaseModel):
    """An isolated upstream's warm pool: its spares ready, and how many it keeps (`warm_sessions`)."""

    ready: int
    target: int
    backoff_seconds: float | None = None
    """While its spares die soon after they start (a crash loop): how long it waits before it starts more."""


class ServiceInfo(BaseModel):
    """One service as `check`, `/healthz`, the admin API and the SDK see it."""

    name: str
    agent_id: str | None
    """The agent whose own service it is; None for the store's (everyone's)."""
    transport: str
    session_mode: str
    state: str
    tool_count: int
    client_sessions: int
    error: str | None
    detail: str | None = None
    """What only operators see: the failure's detail, such as the upstream's last words on stderr."""
    from_config: bool
    warm_pool: WarmPoolInfo | None = None
    """The warm pool, for operators, of an upstream that keeps one."""


def service_info(scope: str, service: UpstreamService, *, from_config: bool, for_operator: bool) -> ServiceInfo:
    """The status of `service`, which belongs to `scope` (`""` for the store); `detail` only `for_operator`."""
    failed = service.error is not None and service.state is ServiceState.FAILED
    pool = service.warm_pool if for_operator else None
    backoff: float | None = None
    if isinstance(service, IsolatedService) and service.pool.warm.is_refill_waiting:
        backoff = service.pool.warm.refill_delay_seconds
    return ServiceInfo(
        name=service.name,
        agent_id=scope or None,
        transport=service.config.resolved_transport,
        session_mode=service.config.session,
        state=service.state.value,
        tool_count=len(service.visible("tools")),
        client_sessions=service.client_sessions,
        error=service.error.message if failed and service.error is not None else None,
        detail=service.error.detail if failed and for_operator and service.error is not None else None,
        from_config=from_config,
        warm_pool=WarmPoolInfo(ready=pool[0], target=pool[1], backoff_seconds=backoff) if pool is not None else None,
    )


class ClientSessionInfo(BaseModel):
    """A session that one session key holds with an isolated upstream, as operators see it."""

    session: str
    """The key's short hash (`#3fa2c1d0e9`), never its id or name."""
    kind: str
    """`connection`, `explicit`, `principal` or `ephemeral` (see `keys`)."""
    agent: str | None
    principal: str
    state: str
    """`starting`, `ready` or `closing`."""
    age_seconds: float
    idle_seconds: float
    """0 while a call is in flight."""
    calls_in_flight: int


def client_sessions(service: UpstreamService) -> list[ClientSessionInfo]:
    """The sessions clients hold with `service`, oldest first (none for a shared upstream: its one session is
    everyone's)."""
    if not isinstance(service, IsolatedService):
        return []
    now = time.monotonic()  # as `UpstreamSession` keeps its times
    infos = [
        ClientSessionInfo(
            session=f"#{key.fingerprint}",
            kind=key.kind,
            agent=key.agent or None,
            principal=key.principal,
            state="closing" if session.is_closing else "ready" if session.is_ready else "starting",
            age_seconds=round(now - session.started_at, 1),
            idle_seconds=0.0 if session.calls_in_flight else round(now - session.last_used, 1),
            calls_in_flight=session.calls_in_flight,
        )
        for key, session in service.pool.sessions.items()
    ]
    return sorted(infos, key=lambda info: -info.age_seconds)


def status_report(
    engine: ProxyEngine,
    *,
    is_draining: bool,
    requests_in_flight: int,
    fast_lane_calls: int = 0,
    fast_lane_streams: int = 0,
    legacy_lane: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The proxy's state in detail, for operators (`/admin/status`, the status page, `mcpstore-proxy status`)."""
    upstreams: dict[str, Any] = {}
    for scope, service in engine.registry.by_scope():
        info = engine.status_of(scope, service)
        upstreams[f"{scope}/{service.name}" if scope else service.name] = {
            "state": info.state,
            "tools": info.tool_count,
            "sessions": info.client_sessions,
            "error": info.error,
            "detail": info.detail,
            **({"warm_pool": info.warm_pool.model_dump(exclude_none=True)} if info.warm_pool else {}),
            "transport": info.transport,
            "session_mode": info.session_mode,
            "clients": [client.model_dump() for client in client_sessions(service)],
        }
    return {
        "status": "draining" if is_draining else "ok",
        "requests_in_flight": requests_in_flight,
        "fast_lane_calls": fast_lane_calls,
        "fast_lane_streams": fast_lane_streams,
        "legacy_lane_calls": legacy_lane[0],
        "legacy_lane_listings": legacy_lane[1],
        "upstreams": upstreams,
        "events": [_event(event) for event in engine.events.recent(REPORTED_EVENTS)[:_EVENTS_SHOWN]],
        "time": _utc(engine.clock.now()),
    }


def _event(event: OpsEvent) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "at": _utc(event.at),
        "upstream": event.upstream,
        "session": event.session,
        "principal": event.principal,
        "reason": event.reason,
        "labels": dict(event.labels),
    }


def _utc(epoch_seconds: float) -> str:
    return dt.datetime.fromtimestamp(epoch_seconds, dt.UTC).isoformat(timespec="seconds")
