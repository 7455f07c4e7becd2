"""The two kinds of upstream service, behind one interface (`UpstreamService`):

- `IsolatedService`: every session key gets a session of its own (the default);
- `SharedService`: one session serves every client.

`create_service` picks the kind from the upstream's config.
"""

from __future__ import annotations

from mcpstore_proxy.config import UpstreamConfig
from mcpstore_proxy.services.base import CATALOG_KEY, LISTING_KINDS, ServiceContext, ServiceState, UpstreamService
from mcpstore_proxy.services.isolated import IsolatedService
from mcpstore_proxy.services.shared import SharedService

__all__ = [
    "CATALOG_KEY",
    "LISTING_KINDS",
    "IsolatedService",
    "ServiceContext",
    "ServiceState",
    "SharedService",
    "UpstreamService",
    "create_service",
]


def create_service(
    name: str, config: UpstreamConfig, *, context: ServiceContext, cap: int, hides_start_detail: bool = False
) -> UpstreamService:
    """The service for `config`; `hides_start_detail` keeps why a start failed from clients (see `upstream`)."""
    prefix = config.prefix if config.prefix is not None else name
    if config.session == "shared":
        return SharedService(name, config, prefix=prefix, context=context, hides_start_detail=hides_start_detail)
    return IsolatedService(
        name,
        config,
        prefix=prefix,
        context=context,
        cap=config.max_sessions or cap,
        hides_start_detail=hides_start_detail,
    )
