"""Prometheus metrics at `/metrics`, named after the OpenTelemetry MCP semantic conventions.

`ProxyMetrics` keeps its own `CollectorRegistry` (one per app, so that several
apps, or tests, in one process never collide), fed from three sources:

- each request: it is the observer of `operations`, so answering one costs
  two `perf_counter()` reads and one observation per leg in a lean histogram
  (`histograms`) of plain counts;
- each event: it subscribes to the engine's `EventLog` and counts spawns
  (with their duration), failed spawns, resets, refusals, timeouts, pinning
  events and reloads;
- the current state: sessions, warm pools, upstream states, client
  sessions, requests in flight and named sessions are read from the engine
  when Prometheus scrapes, so the hot path pays nothing for them.

Label values are bounded: upstream names, method names the proxy serves, tool
names found in the catalog, and small fixed sets (outcome, state, limit).
Never a session id, and a principal only with `metrics_per_principal: true`.

Who may read `/metrics` (`metrics_route`): where nothing proves anyone (no
`auth`, no `admin_token`, no `metrics_token`) and the proxy listens on
loopback only, anyone who reaches it, as for `/admin`; otherwise an admin
principal (the `admin_token`, or an admin of `auth`) or the `metrics_token`,
which opens nothing else. Host and Origin are checked as for `/admin`, so a
web page cannot read it through the user's browser.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcpstore_proxy.auth import bearer_token
from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import AuthenticationError, InvalidSessionKeyError, PermissionDeniedError
from mcpstore_proxy.events import OpsEvent
from mcpstore_proxy.gate import AuthGate
from mcpstore_proxy.histograms import LabelledHistogram
from mcpstore_proxy.operations import Operation, Outcome
from mcpstore_proxy.services import IsolatedService, ServiceState

__all__ = ["METRICS_PATH", "ProxyMetrics", "metrics_route"]

METRICS_PATH: Final = "/metrics"

OPERATION_BUCKETS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
"""The OpenTelemetry MCP semantic conventions' advice for `mcp.*.operation.duration`."""
SPAWN_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

Count = Callable[[], int]


class ProxyMetrics:
    """The metrics of one app over one engine; `render()` is what `/metrics` answers."""

    def __init__(self, engine: ProxyEngine, *, downstream_sessions: Count, requests_in_flight: Count) -> None:
        self.registry = CollectorRegistry()
        self._per_principal = engine.settings.metrics_per_principal
        server_labels = ["mcp_method_name", "gen_ai_tool_name", "upstream", "outcome"]
        self._server = LabelledHistogram(
            "mcp_server_operation_duration_seconds",
            "How long the proxy took to answer a client's request (OpenTelemetry mcp.server.operation.duration).",
            [*server_labels, "principal"] if self._per_principal else server_labels,
            OPERATION_BUCKETS,
        )
        self._client = LabelledHistogram(
            "mcp_client_operation_duration_seconds",
            "How long an upstream took to answer a request the proxy forwarded (mcp.client.operation.duration).",
            ["mcp_method_name", "upstream", "outcome"],
            OPERATION_BUCKETS,
        )
        self.registry.register(self._server)
        self.registry.register(self._client)
        self._events = _EventCounters(self.registry)
        engine.events.subscribe(self._events.count)
        self.registry.register(_StateCollector(engine, downstream_sessions, requests_in_flight))

    def __repr__(self) -> str:
        return f"<ProxyMetrics {len(self._server)} server series, {len(self._client)} client series>"

    # The hot path (`operations.OperationObserver`).

    def operation_answered(self, operation: Operation, seconds: float) -> None:
        labels = (operation.method, operation.tool, operation.upstream, operation.outcome)
        self._server.observe((*labels, operation.principal) if self._per_principal else labels, seconds)

    def upstream_answered(self, method: str, upstream: str, outcome: Outcome, seconds: float) -> None:
        self._client.observe((method, upstream, outcome), seconds)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _EventCounters:
    """The engine's events, counted by kind (see `events`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.spawns = Counter(
            "mcpstore_upstream_spawns",
            "Upstream sessions started (processes or HTTP sessions).",
            ["upstream"],
            registry=registry,
        )
        self.spawn_seconds = Histogram(
            "mcpstore_upstream_spawn_duration_seconds",
            "How long an upstream session took to start, up to the end of its handshake.",
            ["upstream"],
            registry=registry,
            buckets=SPAWN_BUCKETS,
        )
        self.spawn_failures = Counter(
            "mcpstore_upstream_spawn_failures",
            "Upstream sessions that failed to start.",
            ["upstream"],
            registry=registry,
        )
        self.resets = Counter(
            "mcpstore_session_resets",
            "Clients told that their state with an upstream was reset (its session went away or was replaced).",
            ["upstream"],
            registry=registry,
        )
        self.refusals = Counter(
            "mcpstore_refusals",
            "Requests or sessions refused by a limit: max_sessions_per_upstream, max_named_sessions_per_client, "
            "max_downstream_sessions, or shutting_down.",
            ["limit"],
            registry=registry,
        )
        self.timeouts = Counter(
            "mcpstore_upstream_timeouts",
            "Upstream requests cancelled at their call_timeout_seconds.",
            ["upstream"],
            registry=registry,
        )
        self.pinning = Counter(
            "mcpstore_tool_pinning_events",
            "Tool definitions that changed since they were approved (action: changed, withheld) or were approved.",
            ["upstream", "action"],
            registry=registry,
        )
        self.reloads = Counter(
            "mcpstore_config_reloads", "Config reloads, applied or refused.", ["outcome"], registry=registry
        )

    def count(self, event: OpsEvent) -> None:
        upstream = event.upstream or ""
        match event.kind:
            case "spawn":
                self.spawns.labels(upstream).inc()
                if event.seconds is not None:
                    self.spawn_seconds.labels(upstream).observe(event.seconds)
            case "spawn_failed":
                self.spawn_failures.labels(upstream).inc()
            case "reset":
                self.resets.labels(upstream).inc()
            case "refusal":
                self.refusals.labels(event.labels.get("limit", "other")).inc()
            case "timeout":
                self.timeouts.labels(upstream).inc()
            case "pinning":
                self.pinning.labels(upstream, event.labels.get("action", "changed")).inc()
            case "reload":
                self.reloads.labels(event.labels.get("outcome", "")).inc()


class _StateCollector(Collector):
    """Gauges read from the engine when Prometheus scrapes."""

    def __init__(self, engine: ProxyEngine, downstream_sessions: Count, requests_in_flight: Count) -> None:
        self._engine = engine
        self._downstream_sessions = downstream_sessions
        self._requests_in_flight = requests_in_flight

    def collect(self) -> Iterable[Metric]:
        labels = ["upstream", "agent", "state"]
        states = GaugeMetricFamily(
            "mcpstore_upstream_state", "1 for each upstream's current state, else 0.", labels=labels
        )
        sessions = GaugeMetricFamily(
            "mcpstore_upstream_sessions",
            "Client sessions with each isolated upstream, by state (starting, ready).",
            labels=labels,
        )
        spares = GaugeMetricFamily(
            "mcpstore_warm_pool_sessions",
            "Warm-pool spares of each upstream, by state (starting, ready).",
            labels=labels,
        )
        targets = GaugeMetricFamily(
            "mcpstore_warm_pool_target", "How many spares each upstream keeps (warm_sessions).", labels=labels[:2]
        )
        for scope, service in self._engine.registry.by_scope():
            where = [service.name, scope]
            for state in ServiceState:
                states.add_metric([*where, state.value], 1 if service.state is state else 0)
            if isinstance(service, IsolatedService):
                _add_by_readiness(sessions, where, [s.is_ready for s in service.pool.sessions.values()])
                warm = service.pool.warm
                if warm.target:
                    _add_by_readiness(spares, where, [s.is_ready for s in warm.spares if not s.is_closing])
                    targets.add_metric(where, warm.target)
        yield from (states, sessions, spares, targets)
        yield GaugeMetricFamily(
            "mcpstore_downstream_sessions",
            "Client sessions open with the proxy (Streamable HTTP and legacy SSE).",
            value=self._downstream_sessions(),
        )
        yield GaugeMetricFamily(
            "mcpstore_requests_in_flight", "Client requests being forwarded now.", value=self._requests_in_flight()
        )
        yield GaugeMetricFamily(
            "mcpstore_named_sessions",
            "Named sessions open (they outlive connections).",
            value=len(list(self._engine.records)),
        )


def _add_by_readiness(family: GaugeMetricFamily, where: Sequence[str], readiness: Sequence[bool]) -> None:
    ready = sum(readiness)
    family.add_metric([*where, "starting"], len(readiness) - ready)
    family.add_metric([*where, "ready"], ready)


def metrics_route(
    metrics: ProxyMetrics, settings: ProxySettings, security: TransportSecuritySettings, gate: AuthGate
) -> Route:
    """`GET /metrics`, for whoever may read it (see the module docstring)."""
    checks = TransportSecurityMiddleware(security)
    token_digest = hashlib.sha256(settings.metrics_token.encode()).digest() if settings.metrics_token else None
    is_open = (
        settings.binds_loopback
        and not gate.authenticator.is_on
        and settings.admin_token is None
        and settings.metrics_token is None
    )

    def is_metrics_token(token: str | None) -> bool:
        return (
            token is not None
            and token_digest is not None
            and hmac.compare_digest(hashlib.sha256(token.encode()).digest(), token_digest)
        )

    async def endpoint(request: Request) -> Response:
        refused = await checks.validate_request(request, is_post=False)
        if refused is not None:
            return refused
        if is_open or is_metrics_token(bearer_token(request.headers.get("authorization"))):
            return metrics.render()
        try:
            principal = await gate.admit(request.scope)
            if principal.is_admin:
                return metrics.render()
            if not gate.authenticator.is_on:
                raise AuthenticationError(
                    "send 'Authorization: Bearer <metrics_token>' (or the admin token) to read /metrics",
                    reason="invalid_token" if request.headers.get("authorization") else None,
                )
            raise PermissionDeniedError(f"{principal} is not an admin; /metrics is for admins and the metrics_token")
        except (AuthenticationError, PermissionDeniedError, InvalidSessionKeyError) as error:
            return gate.refusal(error)

    return Route(METRICS_PATH, endpoint=endpoint, methods=["GET"])
