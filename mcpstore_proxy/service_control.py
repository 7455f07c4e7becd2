"""The service operations behind the SDK and the admin API: add, update, remove, restart and wait.

Everything is scoped by agent (`""` is the store's scope). Adding a service is
idempotent, so that a script can run again where services persist: the same
entry under a name taken in the same scope is a no-op, a different one is
refused (replace it with `update_services`). Every entry is validated and
checked against the policy before anything starts. An unknown service name is
answered with the closest real ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pydantic import ValidationError

from mcpstore_proxy.config import UpstreamConfig, describe_validation_error
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import ConfigError, PermissionDeniedError, UnknownServiceError, did_you_mean
from mcpstore_proxy.keys import STORE_SCOPE, checked_agent
from mcpstore_proxy.principals import LOCAL, Principal
from mcpstore_proxy.registry import ServicePolicy
from mcpstore_proxy.services import UpstreamService
from mcpstore_proxy.status import ServiceInfo

__all__ = ["ServiceControl", "service_entries"]


def service_entries(payload: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`{"name": ..., <entry>}` or `{"mcpServers": {...}}` as `{name: entry}`.

    Raises:
        ConfigError: neither shape, or a service without a name.
    """
    servers = payload.get("mcpServers")
    if isinstance(servers, Mapping):
        return {
            str(name): dict(cast(Mapping[str, Any], entry)) for name, entry in cast(Mapping[str, Any], servers).items()
        }
    entry = dict(payload)
    name = entry.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(
            "a service needs a 'name' (for example {'name': 'browser', 'url': 'http://127.0.0.1:8931/sse'}), "
            "or pass {'mcpServers': {...}}"
        )
    return {name: entry}


class ServiceControl:
    """Service operations over a running engine, for one principal.

    Adding, removing and restarting the store's own services needs an admin principal; an agent's, a principal
    granted that agent. `policy` says which services may be added at all.
    """

    def __init__(
        self, engine: ProxyEngine, *, policy: ServicePolicy, principal: Principal = LOCAL, shows_details: bool = True
    ) -> None:
        self.engine = engine
        self.principal = principal
        self._policy = policy
        self._shows_details = shows_details

    def _check_manages(self, agent: str) -> str:
        """The agent scope, once the principal is known to manage its services.

        Raises:
            PermissionDeniedError: the store's services need an admin; an agent's, a principal granted the agent.
        """
        agent = self._check_uses(agent)
        if agent == STORE_SCOPE and not self.principal.is_admin:
            raise PermissionDeniedError(
                f"{self.principal} may not change the store's services, which every client sees; an admin may, "
                "or add the service for an agent scope you are granted (?agent=ID)"
            )
        return agent

    def _check_uses(self, agent: str) -> str:
        agent = checked_agent(agent)
        if not self.principal.may_use_agent(agent):
            hint = did_you_mean(agent, self.principal.agents or ())
            raise PermissionDeniedError(f"{self.principal} may not use agent '{agent}'{hint}; ask for it to be granted")
        return agent

    # Services.

    async def add_services(self, agent: str, payload: Mapping[str, Any]) -> list[ServiceInfo]:
        """Add each service of `payload`; one already there with the same entry, in this scope, is left as it is.

        Raises:
            ConfigError: a bad entry, one the policy refuses, or a name taken by a different entry or another scope
                (nothing is added then).
        """
        agent = self._check_manages(agent)
        configs = self._configs(payload)
        new = {name: config for name, config in configs.items() if not self._is_already_there(agent, name, config)}
        origin = "sdk" if self.principal is LOCAL else "api"
        for name, config in new.items():
            await self.engine.add_service(agent, name, config, origin=origin)
        return [self._service_info(agent, name) for name in configs]

    async def update_services(self, agent: str, payload: Mapping[str, Any]) -> list[ServiceInfo]:
        """Replace each service of `payload` with its new entry (an unchanged one is left running as it is).

        Raises:
            UnknownServiceError: the scope sees no such service.
            ConfigError: a bad entry, one the policy refuses, or a service from the config file.
        """
        agent = self._check_uses(agent)
        configs = self._configs(payload)
        changed: dict[str, UpstreamConfig] = {}
        for name, config in configs.items():
            scope, service = self._checked_service(agent, name)
            self._check_manages(scope)
            if service.config == config:
                continue
            if self.engine.registry.is_from_config(scope, name):
                raise ConfigError(
                    f"service {name!r} comes from the config file; change it there and reload the config "
                    "(SIGHUP or POST /admin/reload)"
                )
            changed[name] = config
        origin = "sdk" if self.principal is LOCAL else "api"
        for name, config in changed.items():
            await self.engine.replace_service(agent, name, config, origin=origin)
        return [self._service_info(agent, name) for name in configs]

    async def remove_service(self, agent: str, name: str) -> None:
        agent = self._check_uses(agent)
        scope, _ = self._checked_service(agent, name)
        self._check_manages(scope)
        await self.engine.remove_service(agent, name)

    async def restart_service(self, agent: str, name: str) -> ServiceInfo:
        agent = self._check_uses(agent)
        scope, _ = self._checked_service(agent, name)
        self._check_manages(scope)
        await self.engine.restart_service(agent, name)
        return self._service_info(agent, name)

    async def wait_service(self, agent: str, name: str, timeout_seconds: float) -> ServiceInfo:
        agent = self._check_uses(agent)
        self._checked_service(agent, name)
        await self.engine.wait_service(agent, name, timeout_seconds)
        return self._service_info(agent, name)

    async def list_services(self, agent: str) -> list[ServiceInfo]:
        agent = self._check_uses(agent)
        return [self._service_info(agent, service.name) for service in self.engine.services(agent)]

    async def service_status(self, agent: str, name: str) -> ServiceInfo:
        return self._service_info(self._check_uses(agent), name)

    def _service_info(self, agent: str, name: str) -> ServiceInfo:
        scope, service = self._checked_service(agent, name)
        return self.engine.status_of(scope, service, for_operator=self._shows_details)

    def _checked_service(self, agent: str, name: str) -> tuple[str, UpstreamService]:
        """The scope the service `name` belongs to, as `agent` sees it, and the service.

        Raises:
            UnknownServiceError: the scope sees no such service (naming the closest ones it does see).
        """
        try:
            return self.engine.scope_of(agent, name), self.engine.service(agent, name)
        except UnknownServiceError as error:
            hint = did_you_mean(name, [service.name for service in self.engine.services(agent)])
            if not hint:
                raise
            raise UnknownServiceError(f"no service named {name!r} here{hint} ({error.message})") from None

    def _configs(self, payload: Mapping[str, Any]) -> dict[str, UpstreamConfig]:
        """The payload's entries, each validated and allowed by the policy.

        Raises:
            ConfigError: naming the service and what is wrong with its entry.
        """
        configs: dict[str, UpstreamConfig] = {}
        for name, entry in service_entries(payload).items():
            try:
                config = UpstreamConfig.model_validate(entry)
            except ValidationError as error:
                raise ConfigError(f"service {name!r}: {describe_validation_error(error)}") from None
            self._policy.check(name, config)
            configs[name] = config
        return configs

    def _is_already_there(self, agent: str, name: str, config: UpstreamConfig) -> bool:
        """Whether `agent`'s scope already holds this very service (so adding it again changes nothing).

        Raises:
            ConfigError: `name` is taken where the service would be seen, by a different entry or in another scope.
        """
        for scope, service in self.engine.registry.by_scope():
            is_seen_there = agent == STORE_SCOPE or scope in (STORE_SCOPE, agent)
            if service.name != name or not is_seen_there:
                continue
            if scope != agent:
                # Across scopes the entries are never compared: that would tell whether a guess at another
                # scope's entry (its URL, its secrets) is right.
                where = "the store's scope, which every agent sees" if scope == STORE_SCOPE else f"agent {scope!r}"
                raise ConfigError(f"a service named {name!r} already exists in {where}; add yours under another name")
            if service.config == config:
                return True
            differs = _differing_fields(service.config, config)
            if self.engine.registry.is_from_config(scope, name):
                raise ConfigError(
                    f"a service named {name!r} already exists in the config file with a different entry "
                    f"(differs in {differs}); change it there, or add yours under another name"
                )
            raise ConfigError(
                f"a service named {name!r} already exists with a different entry (differs in {differs}); "
                f"replace it with update_service({name!r}, entry), or remove_service({name!r}) first"
            )
        return False


def _differing_fields(old: UpstreamConfig, new: UpstreamConfig) -> str:
    """The names (never the values: they may be secrets) of the fields where two entries differ."""
    before, after = old.model_dump(), new.model_dump()
    return ", ".join(field for field in {**before, **after} if before.get(field) != after.get(field)) or "nothing"
