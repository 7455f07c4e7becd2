"""The proxy's configuration: one YAML (or JSON) file, overridable from the environment.

Server entries live under `mcpServers` and follow the convention people paste
between MCP clients (`command`/`args`/`env`/`cwd`, or `url`/`headers`), plus the
proxy's own per-upstream options. Precedence, highest first: explicit overrides
(command-line flags), `MCPSTORE_PROXY_*` environment variables, the file.

`${VAR}` in any string value is replaced by the environment variable `VAR`
(`${VAR:-default}` gives a fallback). Two variables always exist: `${PYTHON}`,
the interpreter running the proxy, and `${CONFIG_DIR}`, the config file's folder.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from mcpstore_proxy.auth.settings import AuthSettings
from mcpstore_proxy.errors import ConfigError

__all__ = ["DEFAULT_CONFIG_PATH", "ProxySettings", "ToolPinning", "UpstreamConfig", "load_settings"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("config/proxy.yaml")
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})
CONFIG_PATH_ENV = "MCPSTORE_PROXY_CONFIG"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TRANSPORT_ALIASES: dict[str, str] = {
    "stdio": "stdio",
    "sse": "sse",
    "http": "streamable-http",
    "streamable-http": "streamable-http",
    "streamable_http": "streamable-http",
    "streamablehttp": "streamable-http",
}
# Keys other MCP clients put in their mcpServers entries; accepted so pasted entries load unchanged.
_FOREIGN_KEYS = frozenset({"autoApprove", "alwaysAllow", "disabledTools", "description", "transportType"})

Transport = Literal["stdio", "streamable-http", "sse"]
SessionScope = Literal["connection", "principal"]
ToolPinning = Literal["off", "warn", "enforce"]
"""What a changed tool definition does (see `pins`): nothing; a warning; or it is withheld until approved."""


class UpstreamConfig(BaseModel):
    """One entry under `mcpServers`: how to reach an upstream MCP server, and how to proxy it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    command: str | None = None
    args: list[str] = Field(default_factory=list[str])
    env: dict[str, str] = Field(default_factory=dict[str, str])
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict[str, str])
    transport: Transport | None = Field(default=None, validation_alias="transport")

    session: Literal["isolated", "shared"] = "isolated"
    prefix: str | None = None
    call_timeout_seconds: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    enabled: bool = True
    include_tools: list[str] | None = None
    exclude_tools: list[str] = Field(default_factory=list[str])
    max_sessions: int | None = Field(default=None, gt=0)
    session_scope: SessionScope | None = None
    """This upstream's own `session_scope`; default: the global one."""
    tool_pinning: ToolPinning | None = None
    """This upstream's own `tool_pinning`; default: the global one."""

    @model_validator(mode="before")
    @classmethod
    def _accept_pasted_conventions(cls, data: Any) -> Any:
        """Map the spellings other MCP clients use (`type`, `disabled`, `timeout`) onto ours."""
        if not isinstance(data, dict):
            return data
        entry = dict(cast(dict[str, Any], data))
        kind = entry.pop("type", None)
        if kind is not None and "transport" not in entry:
            entry["transport"] = kind
        if isinstance(entry.get("transport"), str):
            raw = entry["transport"]
            entry["transport"] = _TRANSPORT_ALIASES.get(raw.lower().replace(" ", ""), raw)
        if "disabled" in entry:
            entry.setdefault("enabled", not entry.pop("disabled"))
        if "timeout" in entry:
            entry.setdefault("call_timeout_seconds", entry.pop("timeout"))
        return entry

    @model_validator(mode="after")
    def _check_reachable(self) -> UpstreamConfig:
        unknown = sorted(set(self.model_extra or {}) - _FOREIGN_KEYS)
        if unknown:
            raise ValueError(
                f"has unknown option(s) {', '.join(map(repr, unknown))}; see the README's config reference"
            )
        if self.command is None and self.url is None:
            raise ValueError("needs either 'command' (a stdio server) or 'url' (an HTTP server)")
        if self.command is not None and self.url is not None:
            raise ValueError("has both 'command' and 'url'; keep one: command for stdio, url for HTTP")
        if self.transport == "stdio" and self.command is None:
            raise ValueError("says transport 'stdio' but has no 'command'")
        if self.transport in ("streamable-http", "sse") and self.url is None:
            raise ValueError(f"says transport {self.transport!r} but has no 'url'")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
        return self

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        if value not in (None, "") and not _NAME.fullmatch(value):
            raise ValueError(f"prefix {value!r} may use only letters, digits, '_', '.' and '-' (at most 64)")
        return value

    @property
    def resolved_transport(self) -> Transport:
        """The transport, inferred when not given: a command is stdio, a URL ending in /sse is SSE."""
        if self.transport is not None:
            return self.transport
        if self.command is not None:
            return "stdio"
        assert self.url is not None
        return "sse" if self.url.rstrip("/").split("?")[0].endswith("/sse") else "streamable-http"


class ProxySettings(BaseSettings):
    """Everything the proxy reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="MCPSTORE_PROXY_",
        env_nested_delimiter="__",
        env_prefix_target="all",
        extra="forbid",
        populate_by_name=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    session_idle_timeout_seconds: float = Field(default=1800.0, gt=0, allow_inf_nan=False)
    max_sessions_per_upstream: int = Field(default=32, gt=0)
    max_downstream_sessions: int = Field(default=1000, gt=0)
    max_named_sessions_per_client: int = Field(default=16, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    session_header: str = "X-MCPStore-Session"
    session_argument: str = "session_id"
    session_argument_alias: str = "mcpstore_session_id"
    """Where a tool that declares its own `session_argument` takes the proxy's session name instead."""
    upstream_start_timeout_seconds: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    startup_wait_seconds: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    admin_token: str | None = None
    auth: AuthSettings | None = None
    session_scope: SessionScope = "connection"
    api_service_urls: list[str] = Field(default_factory=list[str])
    allow_stdio_services_via_api: bool = False
    runtime_services_file: Path | None = None
    tool_pinning: ToolPinning = "warn"
    tool_pins_file: Path | None = None
    allowed_hosts: list[str] = Field(default_factory=list[str])
    allowed_origins: list[str] = Field(default_factory=list[str])
    mcp_servers: dict[str, UpstreamConfig] = Field(default_factory=dict[str, UpstreamConfig], alias="mcpServers")
    _config_path: Path | None = PrivateAttr(default=None)

    @property
    def config_path(self) -> Path | None:
        """The file these settings were loaded from."""
        return self._config_path

    @model_validator(mode="before")
    @classmethod
    def _merge_server_spellings(cls, data: Any) -> Any:
        """Fold `MCPSTORE_PROXY_MCP_SERVERS__*` (field-name spelling) over the file's `mcpServers`."""
        if not isinstance(data, dict):
            return data
        merged = dict(cast(dict[str, Any], data))
        if "mcp_servers" in merged and "mcpServers" in merged:
            merged["mcpServers"] = _deep_merge(merged["mcpServers"], merged.pop("mcp_servers"))
        return merged

    @field_validator("mcp_servers")
    @classmethod
    def _check_server_names(cls, servers: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        for name in servers:
            if not _NAME.fullmatch(name):
                raise ValueError(f"server name {name!r} may use only letters, digits, '_', '.' and '-' (at most 64)")
        return servers

    @field_validator("session_argument", "session_argument_alias")
    @classmethod
    def _check_argument(cls, value: str, info: ValidationInfo) -> str:
        if not value.isidentifier():
            raise ValueError(f"{info.field_name} {value!r} must be a plain identifier such as 'session_id'")
        return value

    @field_validator("session_header")
    @classmethod
    def _check_header(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]+", value):
            raise ValueError(f"session_header {value!r} must be a header name such as 'X-MCPStore-Session'")
        return value

    @property
    def runtime_services_path(self) -> Path | None:
        """Where services added at run time are saved: `runtime_services_file`, else beside the config file."""
        if self.runtime_services_file is not None:
            return self.runtime_services_file
        if self._config_path is None:
            return None
        return self._config_path.with_name(f"{self._config_path.stem}.runtime-services.json")

    @property
    def tool_pins_path(self) -> Path | None:
        """Where tool pins are kept: `tool_pins_file`, else beside the config file (None: in memory only)."""
        if self.tool_pins_file is not None:
            return self.tool_pins_file
        if self._config_path is None:
            return None
        return self._config_path.with_name(f"{self._config_path.stem}.tool-pins.json")

    @property
    def binds_loopback(self) -> bool:
        """Whether `serve` binds only this machine: 127.0.0.1, ::1 or localhost (not the rest of 127.0.0.0/8)."""
        return self.host in LOOPBACK_ADDRESSES

    @property
    def is_open_locally(self) -> bool:
        """Loopback without `auth`: the one setting where being on this machine is the only gate."""
        return self.binds_loopback and self.auth is None

    @property
    def enabled_servers(self) -> dict[str, UpstreamConfig]:
        return {name: server for name, server in self.mcp_servers.items() if server.enabled}


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged: dict[str, Any] = dict(cast(dict[str, Any], base))
        for key, value in cast(dict[str, Any], override).items():
            merged[key] = _deep_merge(merged.get(key), value)
        return merged
    return override


def is_valid_name(name: str) -> bool:
    """Whether `name` can be a server key (and so a tool prefix): 1 to 64 of `[A-Za-z0-9_.-]`."""
    return bool(_NAME.fullmatch(name))


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string inside `value`."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda match: _lookup(match, variables), value)
    if isinstance(value, list):
        return [interpolate(item, variables) for item in cast(list[Any], value)]
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in cast(dict[str, Any], value).items()}
    return value


def _lookup(match: re.Match[str], variables: Mapping[str, str]) -> str:
    name, default = match.group(1), match.group(2)
    if name in variables:
        return variables[name]
    if default is not None:
        return default
    raise ConfigError(f"${{{name}}} is not set; export {name} or write ${{{name}:-default}} in the config")


def _interpolation_variables(config_path: Path) -> dict[str, str]:
    return {"PYTHON": sys.executable, "CONFIG_DIR": str(config_path.resolve().parent), **os.environ}


class _InterpolatingYamlSource(YamlConfigSettingsSource):
    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        return _interpolated(Path(str(file_path)), super()._read_file(file_path))


class _InterpolatingJsonSource(JsonConfigSettingsSource):
    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        return _interpolated(Path(str(file_path)), super()._read_file(file_path))


def _interpolated(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping with an 'mcpServers' key")
    return cast(dict[str, Any], interpolate(data, _interpolation_variables(path)))


def load_settings(path: Path | None = None, **overrides: Any) -> ProxySettings:
    """Load the config file at `path` (default: $MCPSTORE_PROXY_CONFIG, then config/proxy.yaml).

    Raises:
        ConfigError: the file is missing, unreadable, or fails validation; the
            message names the file, the field and the fix.
    """
    config_path = _resolve_path(path)
    file_source = _InterpolatingJsonSource if config_path.suffix == ".json" else _InterpolatingYamlSource

    class _LoadedSettings(ProxySettings):
        def model_post_init(self, context: Any, /) -> None:
            super().model_post_init(context)
            self._config_path = config_path

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if file_source is _InterpolatingJsonSource:
                return (init_settings, env_settings, _InterpolatingJsonSource(settings_cls, json_file=config_path))
            return (init_settings, env_settings, _InterpolatingYamlSource(settings_cls, yaml_file=config_path))

    try:
        settings = _LoadedSettings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        raise ConfigError(f"{config_path}: {describe_validation_error(error)}") from None
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error.message}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_path}: is not valid YAML: {_yaml_problem(error)}") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{config_path}: cannot be read: {error}") from None
    return settings


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


def _resolve_path(path: Path | None) -> Path:
    if path is None:
        from_env = os.environ.get(CONFIG_PATH_ENV)
        path = Path(from_env) if from_env else DEFAULT_CONFIG_PATH
    if not path.is_file():
        raise ConfigError(
            f"config file '{path}' not found (pass --config PATH, or set {CONFIG_PATH_ENV}, "
            "or run from the project folder that holds config/proxy.yaml)"
        )
    return path


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first bad field and what it needs; a count of any others."""
    details = error.errors()
    first = _describe_detail(details[0])
    more = len(details) - 1
    return first if more == 0 else f"{first} (and {more} more problem{'s' if more > 1 else ''})"


def _describe_detail(detail: ErrorDetails) -> str:
    location = ".".join(str(part) for part in detail["loc"] if not str(part).startswith("function-after"))
    location = location.replace("mcp_servers", "mcpServers")
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        message = "is not a known option; see the README's config reference"
    elif detail["type"] == "missing":
        message = "is required"
    elif "input" in detail and detail["type"] not in ("value_error", "assertion_error"):
        message = f"{message} (got {detail['input']!r})"
    return f"{location}: {message}" if location else message
