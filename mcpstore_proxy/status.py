"""What operators see of a service: `check`'s table, `/healthz`, the admin API and the SDK share one shape."""

from __future__ import annotations

from pydantic import BaseModel

from mcpstore_proxy.services import ServiceState, UpstreamService

__all__ = ["ServiceInfo", "WarmPoolInfo", "service_info"]


class WarmPoolInfo(BaseModel):
    """An isolated upstream's warm pool: its spares ready, and how many it keeps (`warm_sessions`)."""

    ready: int
    target: int


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
        warm_pool=WarmPoolInfo(ready=pool[0], target=pool[1]) if pool is not None else None,
    )
