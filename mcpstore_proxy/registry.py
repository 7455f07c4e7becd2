"""Which services exist, in which scope, and which of them were added at run time (and so are saved).

Scopes. Services from the config, and services added to the store at run time,
are seen by everyone (the store's scope, `""`); a service added for an agent is
seen by that agent only. A name is unique where it could be seen: a store
service's name is taken in every scope.

The config file's own services change only when the file is reloaded
(`add_configured`, `remove_configured`); the API and the SDK may not remove them.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mcpstore_proxy.config import ProxySettings, UpstreamConfig, is_valid_name
from mcpstore_proxy.errors import ConfigError, ProxyError, UnknownServiceError
from mcpstore_proxy.keys import STORE_SCOPE
from mcpstore_proxy.persistence import ORIGIN_KEY, RuntimeServices
from mcpstore_proxy.services import UpstreamService

__all__ = ["Origin", "ServicePolicy", "ServiceRegistry"]

logger = logging.getLogger(__name__)

Origin = Literal["config", "api", "sdk"]
"""Where a service comes from: the config file, or added at run time by the admin API (checked again on every
restore, and telling clients no more than "could not connect" when it fails) or by the operator's own SDK."""
ServiceFactory = Callable[[str, UpstreamConfig, Origin], UpstreamService]


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """Which services a caller may add: the operator's own process (the embedded SDK) anything; the admin API
    command (stdio) services only when the config allows it, and URL services only where the config lists them."""

    allows_stdio: bool = True
    url_patterns: tuple[str, ...] | None = None
    """Shell-style patterns a URL service must match; None allows any URL."""

    def check(self, name: str, config: UpstreamConfig) -> None:
        """Raises ConfigError naming the setting when the caller may not add this service."""
        if config.command is not None and not self.allows_stdio:
            raise ConfigError(
                f"service {name!r} runs a command; adding command (stdio) services through the admin API is off "
                "(set allow_stdio_services_via_api: true in the proxy's config, or add it to mcpServers there)"
            )
        listed = self.url_patterns is None or any(fnmatch.fnmatchcase(config.url or "", p) for p in self.url_patterns)
        if config.url is not None and not listed:
            raise ConfigError(
                f"service {name!r}: url {config.url!r} is not among the URLs the admin API may add "
                "(list a pattern for it in api_service_urls in the proxy's config)"
            )

    @classmethod
    def for_api(cls, settings: ProxySettings) -> ServicePolicy:
        """What the admin API may add under `settings`: any URL only where being local is the only gate."""
        url_patterns = None if settings.is_open_locally else tuple(settings.api_service_urls)
        return cls(allows_stdio=settings.allow_stdio_services_via_api, url_patterns=url_patterns)


class ServiceRegistry:
    """The services of every scope; adding one builds it with `create`, and the caller starts it."""

    def __init__(self, settings: ProxySettings, create: ServiceFactory) -> None:
        self._create = create
        self._scopes: dict[str, dict[str, UpstreamService]] = {STORE_SCOPE: {}}
        self._runtime = RuntimeServices(settings.runtime_services_path)
        self._from_config: set[str] = set()
        for name, config in settings.enabled_servers.items():
            self.add_configured(name, config)

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

    def check_config_name(self, name: str) -> None:
        """Raises ConfigError when a service added at run time (the API's or the SDK's) is called `name`, which the
        config file's service of that name would then take from it."""
        for scope, service in self.by_scope():
            if service.name == name and not self.is_from_config(scope, name):
                where = "the store" if scope == STORE_SCOPE else f"agent {scope!r}"
                raise ConfigError(
                    f"mcpServers.{name}: a service named {name!r} was added at run time (for {where}); remove it "
                    "there first, or name this one differently"
                )

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
        return scope == STORE_SCOPE and name in self._from_config

    def add_configured(self, name: str, config: UpstreamConfig) -> UpstreamService:
        """Build a service of the config file (never saved: the file is where it lives); the caller starts it.

        Raises:
            ConfigError: the name is taken by a service added at run time.
        """
        self.check_config_name(name)
        service = self._create(name, config, "config")
        self._scopes[STORE_SCOPE][name] = service
        self._from_config.add(name)
        return service

    def remove_configured(self, name: str) -> UpstreamService:
        """Forget a service of the config file; the caller closes it."""
        self._from_config.discard(name)
        return self._scopes[STORE_SCOPE].pop(name)

    def add(
        self, agent: str, name: str, config: UpstreamConfig, *, origin: Origin = "sdk", save: bool = True
    ) -> UpstreamService:
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
        service = self._create(name, config, origin)
        self._scopes.setdefault(agent, {})[name] = service
        if save:
            self._runtime.put(agent, name, config.model_dump(exclude_defaults=True), origin=origin)
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
            raise ConfigError(
                f"service {name!r} comes from the config file; remove it there and reload the config "
                "(SIGHUP or POST /admin/reload)"
            )
        del self._scopes[scope][name]
        self._runtime.remove(scope, name)
        return service

    def restore(self, api_policy: ServicePolicy) -> list[UpstreamService]:
        """Build the services saved by earlier runs. One added through the admin API must pass today's rules
        (`api_policy`) again; one that does not, or no longer loads, is skipped with a warning (and kept saved)."""
        restored: list[UpstreamService] = []
        for scope, entries in self._runtime.load().items():
            for name, entry in entries.items():
                service = self._restore(scope, name, entry, api_policy)
                if service is not None:
                    restored.append(service)
        return restored

    def _restore(
        self, scope: str, name: str, saved: Mapping[str, Any], api_policy: ServicePolicy
    ) -> UpstreamService | None:
        entry = dict(saved)
        origin = entry.pop(ORIGIN_KEY, "api")
        try:
            config = UpstreamConfig.model_validate(entry)
            if origin != "sdk":
                api_policy.check(name, config)
            return self.add(scope, name, config, origin="sdk" if origin == "sdk" else "api", save=False)
        except (ProxyError, ValueError) as error:
            logger.warning("skipped the saved service '%s' (scope %r): %s", name, scope or "store", error)
            return None
