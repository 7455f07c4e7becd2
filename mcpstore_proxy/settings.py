"""The proxy's settings as pydantic models: `ProxySettings`, and an `UpstreamConfig` for each server entry.

A server entry follows the convention people paste between MCP clients (`command`/`args`/`env`/`cwd`, or
`url`/`headers`, `type`), plus the proxy's own per-upstream options; the spellings other clients use (`type`,
`disabled`, `timeout`, `disabledTools`) map onto the proxy's, and the keys only a client acts on are accepted and
ignored. A validation error reads as one line: `describe_validation_error`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcpstore_proxy.auth.settings import AuthSettings

__all__ = [
    "CLIENT_ONLY_KEYS",
    "FOREIGN_KEYS",
    "LOOPBACK_ADDRESSES",
    "ProxySettings",
    "SessionScope",
    "ToolPinning",
    "Transport",
    "UpstreamConfig",
    "describe_validation_error",
    "detail_message",
    "did_you_mean",
    "is_valid_name",
]

LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TRANSPORT_ALIASES: dict[str, str] = {
    "stdio": "stdio",
    "sse": "sse",
    "http": "streamable-http",
    "streamable-http": "streamable-http",
    "streamable_http": "streamable-http",
    "streamablehttp": "streamable-http",
}
# Keys other MCP clients write into server entries, beyond those `_accept_pasted_conventions` maps onto ours
# (`type`, `transportType`, `disabled`, `timeout`, `disabledTools`) and `envFile`, which a file's loader reads.
# A description is dropped quietly; a client-only behaviour is ignored, and `config_files` says why.
_DESCRIPTIVE_KEYS = frozenset({"description", "gallery", "version"})
_NO_APPROVALS = (
    "the proxy does not approve tool calls; the client connected to the proxy asks before it calls the proxy's tools"
)
_NO_SIGN_IN = "the proxy does not sign in to upstreams; put a token in 'headers'"
CLIENT_ONLY_KEYS: Final[Mapping[str, str]] = {
    "autoApprove": _NO_APPROVALS,
    "alwaysAllow": _NO_APPROVALS,
    "dev": "VS Code's dev mode (watch and debug) has no meaning to the proxy",
    "sandboxEnabled": "the proxy does not sandbox upstreams",
    "sandbox": "the proxy does not sandbox upstreams",
    "oauth": _NO_SIGN_IN,
    "auth": _NO_SIGN_IN,
    "headersHelper": "the proxy runs no header helper; put the headers in 'headers'",
}
FOREIGN_KEYS = _DESCRIPTIVE_KEYS | CLIENT_ONLY_KEYS.keys()

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
    warm_sessions: int = Field(default=0, ge=0)
    """Started sessions an isolated upstream keeps ready for new keys (the warm pool)."""
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
        legacy_kind = entry.pop("transportType", None)  # Cline's spelling
        if "transport" not in entry and (kind or legacy_kind) is not None:
            entry["transport"] = kind if kind is not None else legacy_kind
        if isinstance(entry.get("transport"), str):
            raw = entry["transport"]
            entry["transport"] = _TRANSPORT_ALIASES.get(raw.lower().replace(" ", ""), raw)
        if "disabled" in entry:
            entry.setdefault("enabled", not entry.pop("disabled"))
        if "timeout" in entry:
            entry.setdefault("call_timeout_seconds", entry.pop("timeout"))
        if "disabledTools" in entry:
            tools: Any = entry.pop("disabledTools")
            if not isinstance(tools, list) or not all(isinstance(tool, str) for tool in cast(list[Any], tools)):
                raise ValueError("disabledTools must be a list of tool names")
            excluded: Any = entry.get("exclude_tools", [])
            if isinstance(excluded, list):
                names = cast(list[str], tools)
                entry["exclude_tools"] = [*cast(list[Any], excluded), *map(_literal_pattern, names)]
        if isinstance(entry.get("env"), dict):
            # VS Code writes numbers, and null for "unset"; people write numbers and booleans in env and args.
            env = cast(dict[Any, Any], entry["env"])
            entry["env"] = {key: _as_text(value) for key, value in env.items() if value is not None}
        if isinstance(entry.get("args"), list):
            entry["args"] = [_as_text(value) for value in cast(list[Any], entry["args"])]
        return entry

    @model_validator(mode="after")
    def _check_reachable(self) -> UpstreamConfig:
        unknown = sorted(set(self.model_extra or {}) - FOREIGN_KEYS)
        if unknown:
            named = ", ".join(f"{key!r}{did_you_mean(key, _UPSTREAM_OPTIONS)}" for key in unknown)
            raise ValueError(f"has unknown option(s) {named}; see the README's config reference")
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
        if self.warm_sessions and self.session == "shared":
            raise ValueError(
                f"has warm_sessions: {self.warm_sessions}, but a shared upstream's one session is always warm; "
                "remove warm_sessions, or set session: isolated"
            )
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
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per line (time, level, event, upstream, principal, session, duration_ms)."""
    metrics_token: str | None = Field(default=None, min_length=16)
    """A bearer token that may read `/metrics` (besides the admin token and admin principals)."""
    metrics_per_principal: bool = False
    """Label call metrics with the principal (unbounded with many users; off by default)."""
    tracing: bool = False
    """OpenTelemetry spans for each forwarded operation (needs `pip install "mcpstore-proxy[otel]"`)."""
    watch_config: bool = False
    """Reload the config file when it changes (as on SIGHUP and `POST /admin/reload`)."""
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
        return self._given_or_beside_config(self.runtime_services_file, "runtime-services.json")

    @property
    def tool_pins_path(self) -> Path | None:
        """Where tool pins are kept: `tool_pins_file`, else beside the config file (None: in memory only)."""
        return self._given_or_beside_config(self.tool_pins_file, "tool-pins.json")

    def _given_or_beside_config(self, given: Path | None, suffix: str) -> Path | None:
        """`given`, else `<config stem>.<suffix>` beside the config file, else None (no config file)."""
        if given is not None:
            return given
        if self._config_path is None:
            return None
        return self._config_path.with_name(f"{self._config_path.stem}.{suffix}")

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


_UPSTREAM_OPTIONS: Final = (*UpstreamConfig.model_fields, "type", "disabled", "timeout", "envFile")


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


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """` (did you mean 'name'?)` for the name in `known` closest to a mistyped `key`, or nothing."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _literal_pattern(name: str) -> str:
    """A tool name as a pattern for `exclude_tools` that matches that name only."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _as_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


def describe_validation_error(error: ValidationError) -> str:
    """One line naming the first bad field and what it needs; a count of any others."""
    details = error.errors()
    first = _describe_detail(details[0])
    more = len(details) - 1
    return first if more == 0 else f"{first} (and {more} more problem{'s' if more > 1 else ''})"


def _describe_detail(detail: ErrorDetails) -> str:
    location = ".".join(str(part) for part in detail["loc"] if not str(part).startswith("function-"))
    location = location.replace("mcp_servers", "mcpServers")
    message = detail_message(detail)
    return f"{location}: {message}" if location else message


def detail_message(detail: ErrorDetails) -> str:
    """What one of pydantic's errors says is wrong, without its location."""
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        return "is not a known option; see the README's config reference"
    if detail["type"] == "missing":
        return "is required"
    if "input" in detail and detail["type"] not in ("value_error", "assertion_error"):
        return f"{message} (got {detail['input']!r})"
    return message
