"""What operators see of a service: `check`'s table, `/healthz`, the admin API and the SDK share one shape."""

from __future__ import annotations

from pydantic import BaseModel

from mcpstore_proxy.services import ServiceState, UpstreamService

__all__ = ["ServiceInfo", "service_info"]


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


def service_info(scope: str, service: UpstreamService, *, from_config: bool, for_operator: bool) -> ServiceInfo:
    """The status of `service`, which belongs to `scope` (`""` for the store); `detail` only `for_operator`."""
    failed = service.error is not None and service.state is ServiceState.FAILED
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
    )
