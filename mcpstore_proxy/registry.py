"""Which services exist, in which scope, and which of them were added at run time (and so are saved).

Scopes. Services from the config, and services added to the store at run time,
are seen by everyone (the store's scope, `""`); a service added for an agent is
seen by that agent only. A name is unique where it could be seen: a store
service's name is taken in every scope.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from mcpstore_proxy.config import ProxySettings, UpstreamConfig, is_valid_name
from mcpstore_proxy.errors import ConfigError, ProxyError, UnknownServiceError
from mcpstore_proxy.keys import STORE_SCOPE
from mcpstore_proxy.persistence import RuntimeServices
from mcpstore_proxy.services import UpstreamService

__all__ = ["ServiceRegistry"]

logger = logging.getLogger(__name__)

ServiceFactory = Callable[[str, UpstreamConfig], UpstreamService]


class ServiceRegistry:
    """The services of every scope; adding one builds it with `create`, and the caller starts it."""

    def __init__(self, settings: ProxySettings, create: ServiceFactory) -> None:
        self._settings = settings
        self._create = create
        self._scopes: dict[str, dict[str, UpstreamService]] = {STORE_SCOPE: {}}
        self._runtime = RuntimeServices(settings.runtime_services_path)
        for name, config in settings.enabled_servers.items():
            self._scopes[STORE_SCOPE][name] = create(name, config)

    def __repr__(self) -> str:
        return f"<ServiceRegistry {sum(1 for _ in self)} services in {len(self._scopes)} scopes>"

    def __iter__(self) -> Iterator[UpstreamService]:
        return iter([service for services in self._scopes.values() for service in services.values()])

    @property
    def scopes(self) -> list[str]:
        return list(self._scopes)

    def by_scope(self) -> Iterator[tuple[str, UpstreamService]]:
        """Every service with the scope it belongs to."""
        for scope, services in list(self._scopes.items()):
            for service in list(services.values()):
                yield scope, service

    def configured(self) -> list[UpstreamService]:
        return list(self._scopes[STORE_SCOPE].values())

    def services(self, agent: str = STORE_SCOPE) -> list[UpstreamService]:
        """Every service the scope sees: the store's (config first), then the agent's own."""
        own = list(self._scopes.get(agent, {}).values()) if agent != STORE_SCOPE else []
        return [*self._scopes[STORE_SCOPE].values(), *own]

    def has_own(self, agent: str) -> bool:
        return agent != STORE_SCOPE and bool(self._scopes.get(agent))

    def service(self, agent: str, name: str) -> UpstreamService:
        """Raises UnknownServiceError when the scope sees no service called `name`."""
        service = self._scopes.get(agent, {}).get(name) or self._scopes[STORE_SCOPE].get(name)
        if service is None:
            known = ", ".join(repr(s.name) for s in self.services(agent)) or "none"
            raise UnknownServiceError(f"no service named {name!r} here (services: {known}); add it with add_service")
        return service

    def scope_of(self, agent: str, name: str) -> str:
        """Which scope the service `name`, as `agent` sees it, belongs to: the agent's own, or the store's."""
        return agent if agent != STORE_SCOPE and name in self._scopes.get(agent, {}) else STORE_SCOPE

    def is_from_config(self, scope: str, name: str) -> bool:
        return scope == STORE_SCOPE and name in self._settings.enabled_servers

    def add(self, agent: str, name: str, config: UpstreamConfig, *, save: bool = True) -> UpstreamService:
        """Build a service seen by `agent` only (or by everyone, for the store), and save it unless told not to.

        Raises:
            ConfigError: the name is malformed, or already taken where this scope would see it.
        """
        if not is_valid_name(name):
            raise ConfigError(f"service name {name!r} may use only letters, digits, '_', '.' and '-' (at most 64)")
        taken = name in self._scopes[STORE_SCOPE] or name in self._scopes.get(agent, {})
        if agent == STORE_SCOPE:
            taken = taken or any(name in services for services in self._scopes.values())
        if taken:
            raise ConfigError(f"a service named {name!r} already exists; remove it first, or pick another name")
        service = self._create(name, config)
        self._scopes.setdefault(agent, {})[name] = service
        if save:
            self._runtime.put(agent, name, config.model_dump(exclude_defaults=True))
        logger.info("added service '%s'%s", name, f" for agent '{agent}'" if agent else "")
        return service

    def remove(self, agent: str, name: str) -> UpstreamService:
        """Forget a service added at run time (and its saved entry); the caller closes it.

        Raises:
            UnknownServiceError: the scope sees no such service.
            ConfigError: it comes from the config file.
        """
        service = self.service(agent, name)
        scope = self.scope_of(agent, name)
        if self.is_from_config(scope, name):
            raise ConfigError(f"service {name!r} comes from the config file; remove it there and restart the proxy")
        del self._scopes[scope][name]
        self._runtime.remove(scope, name)
        return service

    def restore(self) -> list[UpstreamService]:
        """Build the services saved by earlier runs; an entry that no longer loads is skipped with a warning."""
        restored: list[UpstreamService] = []
        for scope, entries in self._runtime.load().items():
            for name, entry in entries.items():
                service = self._restore(scope, name, entry)
                if service is not None:
                    restored.append(service)
        return restored

    def _restore(self, scope: str, name: str, entry: Mapping[str, Any]) -> UpstreamService | None:
        try:
            return self.add(scope, name, UpstreamConfig.model_validate(entry), save=False)
        except (ProxyError, ValueError) as error:
            logger.warning("skipped the saved service '%s' (scope %r): %s", name, scope or "store", error)
            return None
