"""The proxy's configuration: one file, overridable from the environment, read as people already have it.

The file is the proxy's own YAML, or an MCP client's JSON as it is: Claude Desktop's
`claude_desktop_config.json`, Claude Code's `.mcp.json`, Cursor's `mcp.json`, VS Code's
`.vscode/mcp.json` (servers under `servers`, `inputs`, comments and trailing commas). Server
entries follow the convention people paste between MCP clients (`command`/`args`/`env`/`cwd`,
or `url`/`headers`, `type`), plus the proxy's own per-upstream options. Precedence, highest
first: explicit overrides (command-line flags), `MCPSTORE_PROXY_*` environment variables, the file.

Variables in any string: `${VAR}` and `${VAR:-default}` (Claude Code), `${env:VAR}` (Cursor,
VS Code), `${input:ID}` (VS Code; from `MCPSTORE_INPUT_<ID>`, else the variable `ID`, else the
input's `default`), `${workspaceFolder}`, `${workspaceFolderBasename}`, `${userHome}`,
`${pathSeparator}`, `${/}`, and the proxy's own `${PYTHON}` (its interpreter) and
`${CONFIG_DIR}` (the file's folder).

What the file says but the proxy cannot use is named once in a warning: a top-level key of a
JSON file that is not a proxy option, a client-only server key, a disabled server. What is
wrong is one `ConfigError` that lists every problem, each with its location and the fix: a
bad entry, an unset variable or input, and a server that would run this proxy on itself.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

import yaml
from dotenv import dotenv_values
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
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from mcpstore_proxy.auth.settings import AuthSettings
from mcpstore_proxy.errors import ConfigError

__all__ = ["DEFAULT_CONFIG_PATH", "ProxySettings", "ToolPinning", "UpstreamConfig", "load_settings"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("config/proxy.yaml")
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})
CONFIG_PATH_ENV = "MCPSTORE_PROXY_CONFIG"

INPUT_VARIABLE_PREFIX = "MCPSTORE_INPUT_"

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REFERENCE = re.compile(r"\$\{([^{}]*)\}")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
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
# A description is dropped quietly; a client-only behaviour is ignored, and a config file's loader says why.
_DESCRIPTIVE_KEYS = frozenset({"description", "gallery", "version"})
_NO_APPROVALS = (
    "the proxy does not approve tool calls; the client connected to the proxy asks before it calls the proxy's tools"
)
_NO_SIGN_IN = "the proxy does not sign in to upstreams; put a token in 'headers'"
_CLIENT_ONLY_KEYS: Final[Mapping[str, str]] = {
    "autoApprove": _NO_APPROVALS,
    "alwaysAllow": _NO_APPROVALS,
    "dev": "VS Code's dev mode (watch and debug) has no meaning to the proxy",
    "sandboxEnabled": "the proxy does not sandbox upstreams",
    "sandbox": "the proxy does not sandbox upstreams",
    "oauth": _NO_SIGN_IN,
    "auth": _NO_SIGN_IN,
    "headersHelper": "the proxy runs no header helper; put the headers in 'headers'",
}
_FOREIGN_KEYS = _DESCRIPTIVE_KEYS | _CLIENT_ONLY_KEYS.keys()

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
        unknown = sorted(set(self.model_extra or {}) - _FOREIGN_KEYS)
        if unknown:
            named = ", ".join(f"{key!r}{_suggestion(key, _UPSTREAM_OPTIONS)}" for key in unknown)
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


_UPSTREAM_OPTIONS: Final = (*UpstreamConfig.model_fields, "type", "disabled", "timeout", "envFile")
_PROXY_OPTIONS: Final = (*(name for name in ProxySettings.model_fields if name != "mcp_servers"), "inputs")
_PROXY_OPTION_KEYS: Final = frozenset(name.lower() for name in _PROXY_OPTIONS)  # keys match in any case
_SERVER_KEYS: Final = ("mcpServers", "servers", "mcp_servers")
_CLIENT_SUFFIXES: Final = (".json", ".jsonc")
_THIS_MACHINE: Final = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})
_PROXY_PATH: Final = re.compile(r"/(mcp|sse|messages|agents/[^/]+/mcp)")
_RUNS_UPSTREAMS: Final = frozenset({"serve", "stdio", "check"})
"""The subcommands that start upstreams: one that runs this proxy on its own config starts itself again."""


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


def input_variable(input_id: str) -> str:
    """The environment variable that gives VS Code's `${input:ID}` its value: `MCPSTORE_INPUT_` and the id in
    capitals, every character other than a letter or digit made `_` (`github-token` → MCPSTORE_INPUT_GITHUB_TOKEN)."""
    return INPUT_VARIABLE_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", input_id).upper()


def _suggestion(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _literal_pattern(name: str) -> str:
    """A tool name as a pattern for `exclude_tools` that matches that name only."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _as_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


@dataclass(frozen=True)
class _Problem:
    """One thing wrong with a config file, where it is (`("servers", "git", "command")`), and how to fix it."""

    location: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return f"{'.'.join(self.location)}: {self.message}" if self.location else self.message


@dataclass(frozen=True)
class _Input:
    """An entry of VS Code's `inputs`: what the user is asked for, which the proxy takes from the environment."""

    description: str | None
    default: str | None


class _ConfigFile:
    """One config file turned into the data of `ProxySettings`: the servers found under `servers` or `mcpServers`,
    every variable resolved, client-only keys set aside. It collects, instead of raising, every problem (to report
    them all at once) and every warning (to log once the file has loaded)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_client_file = path.suffix.lower() in _CLIENT_SUFFIXES
        """An MCP client's JSON, whose other top-level keys are that client's own; in the proxy's own YAML, a key
        it does not know is a typo."""
        self.servers_key = "mcpServers"
        self.problems: list[_Problem] = []
        self.warnings: list[str] = []
        self.renamed: dict[str, str] = {}
        """Served name → the name in the file, for a name other clients allow and the proxy does not."""
        self.unexpanded: set[tuple[str, ...]] = set()
        """The servers whose entries still hold an unset variable's `${…}` as written."""
        folder = path.resolve().parent
        # VS Code's and Cursor's project files live in .vscode/ or .cursor/ under the workspace folder.
        self._workspace = folder.parent if folder.name in (".vscode", ".cursor") else folder
        self._variables = {
            "PYTHON": sys.executable,
            "CONFIG_DIR": str(folder),
            "workspaceFolder": str(self._workspace),
            "workspaceFolderBasename": self._workspace.name,
            "userHome": str(Path.home()),
            "pathSeparator": os.sep,
            **os.environ,
        }
        self._inputs: dict[str, _Input] = {}
        self._keys: list[str] = []
        self._server_names: list[str] = []

    def read(self) -> dict[str, Any]:
        """The data for `ProxySettings`.

        Raises:
            ConfigError: the file cannot be read or parsed, or its top level is not a mapping.
        """
        document = self._parse()
        if document is None:
            return {}
        if not isinstance(document, dict):
            raise ConfigError(f"{self.path}: the top level must be a mapping with an 'mcpServers' key")
        top = {str(key): value for key, value in cast(dict[Any, Any], document).items()}
        self._keys = list(top)
        if "inputs" in top:
            self._read_inputs(top["inputs"])
        data: dict[str, Any] = {}
        for key, value in top.items():
            if key in _SERVER_KEYS or key == "inputs":
                continue
            if key.lower() in _PROXY_OPTION_KEYS:
                data[key] = self._resolve(value, (key,))
            elif self.is_client_file:
                self.warnings.append(
                    f"{self.path}: ignored the top-level key {key!r}: it is not a proxy option"
                    f"{_suggestion(key, _PROXY_OPTIONS)}"
                )
            else:
                hint = _suggestion(key, _PROXY_OPTIONS)
                self._problem((key,), f"is not a known option{hint}; see the README's config reference")
        present = [key for key in top if key in _SERVER_KEYS]
        if len(present) > 1:
            kinds = " and ".join(f"'{key}'{' (VS Code)' if key == 'servers' else ''}" for key in present)
            self._problem((), f"has both {kinds}; keep one of them, holding every server")
        elif present:
            self.servers_key = present[0]
            data["mcpServers"] = self._read_servers(top[present[0]])
        return data

    def _parse(self) -> Any:
        try:
            text = self.path.read_text(encoding="utf-8-sig")  # Windows editors may start a file with a BOM
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{self.path}: cannot be read: {error}") from None
        if self.is_client_file:
            try:
                return json.loads(_without_comments(text))
            except json.JSONDecodeError as error:
                where = f"line {error.lineno}, column {error.colno}"
                raise ConfigError(f"{self.path}: is not valid JSON: {error.msg} at {where}") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{self.path}: is not valid YAML: {_yaml_problem(error)}") from None

    def _read_inputs(self, inputs: Any) -> None:
        if not isinstance(inputs, list):
            self._problem(("inputs",), "must be a list of inputs, each with an 'id'")
            return
        for index, item in enumerate(cast(list[Any], inputs)):
            entry = cast(dict[str, Any], item) if isinstance(item, dict) else {}
            input_id, description, default = entry.get("id"), entry.get("description"), entry.get("default")
            if not isinstance(input_id, str) or not input_id:
                self._problem(("inputs", str(index)), "needs an 'id', the name that ${input:ID} refers to")
                continue
            self._inputs[input_id] = _Input(
                description if isinstance(description, str) else None, default if isinstance(default, str) else None
            )

    def _read_servers(self, servers: Any) -> Any:
        if not isinstance(servers, dict):
            return servers  # validation says what it should be
        entries: dict[str, Any] = {}
        for key, entry in cast(dict[Any, Any], servers).items():
            name = str(key)
            self._server_names.append(name)
            served = self._served_name(name)
            if served is None:
                continue
            if served in entries or (served != name and served in map(str, cast(dict[Any, Any], servers))):
                self._problem(
                    (self.servers_key, name), f"would be served as {served!r}, another server's name; rename one"
                )
                continue
            server = self._read_server(name, cast(dict[str, Any], entry)) if isinstance(entry, dict) else entry
            if server is not None or entry is None:  # a null entry stays, for validation to name
                entries[served] = server
        return entries

    def _served_name(self, name: str) -> str | None:
        if is_valid_name(name):
            return name
        rule = "may use only letters, digits, '_', '.' and '-'"
        if not self.is_client_file:
            self._problem((self.servers_key, name), f"server name {name!r} {rule} (at most 64)")
            return None
        served = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "_"
        self.renamed[served] = name
        self.warnings.append(f"{self.path}: the server {name!r} is served as {served!r} (a server name {rule})")
        return served

    def _read_server(self, name: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        """The entry to validate, or None to leave out (a disabled entry that is not valid as it stands)."""
        location = (self.servers_key, name)
        where = ".".join(location)
        server = dict(entry)
        disabled = "disabled: true" if server.get("disabled") is True else None
        disabled = disabled or ("enabled: false" if server.get("enabled") is False else None)
        for key in [key for key in server if key in _FOREIGN_KEYS]:
            value = server.pop(key)
            if key in _CLIENT_ONLY_KEYS and value and not disabled:
                self.warnings.append(f"{self.path}: ignored {where}.{key}: {_CLIENT_ONLY_KEYS[key]}")
        if disabled:
            self.warnings.append(f"{self.path}: skipped {where}: it is disabled ({disabled})")
            server.pop("envFile", None)
            # It never runs, so its variables need not be set, nor its entry be right: kept only as it stands.
            try:
                UpstreamConfig.model_validate(server)
            except ValidationError:
                return None
            return server
        server = cast(dict[str, Any], self._resolve(server, location))
        if "envFile" in server:
            server["env"] = self._with_env_file(server.pop("envFile"), server.get("env"), (*location, "envFile"))
        return server

    def _with_env_file(self, env_file: Any, env: Any, location: tuple[str, ...]) -> Any:
        """`env` over the NAME=value lines of `env_file` (relative to the workspace folder)."""
        if not isinstance(env_file, str):
            self._problem(location, "must be the path of a file of NAME=value lines")
            return env
        path = Path(env_file).expanduser()
        path = path if path.is_absolute() else self._workspace / path
        if not path.is_file():
            self._problem(location, f"file '{path}' not found; create it, or remove 'envFile'")
            return env
        values = {key: value for key, value in dotenv_values(path).items() if value is not None}
        if env is None:
            return values
        return {**values, **cast(dict[str, Any], env)} if isinstance(env, dict) else env

    def _resolve(self, value: Any, location: tuple[str, ...]) -> Any:
        """`value` with every variable in its strings replaced; an unresolved one stays as written, and is a
        problem."""
        if isinstance(value, str):
            return _REFERENCE.sub(lambda match: self._lookup(match, location), value)
        if isinstance(value, list):
            return [self._resolve(item, (*location, str(i))) for i, item in enumerate(cast(list[Any], value))]
        if isinstance(value, dict):
            return {
                key: self._resolve(item, (*location, str(key))) for key, item in cast(dict[Any, Any], value).items()
            }
        return value

    def _lookup(self, match: re.Match[str], location: tuple[str, ...]) -> str:
        written, inner = match.group(0), match.group(1)
        if inner.startswith("env:"):
            name = inner.removeprefix("env:")
            if name in os.environ:
                return os.environ[name]
            return self._unresolved(written, location, f"{written} is not set; export {name}")
        if inner.startswith("input:"):
            return self._input(inner.removeprefix("input:"), written, location)
        variable = _VARIABLE.fullmatch(inner)
        if variable is not None:
            name, default = variable.group(1), variable.group(2)
            if name in self._variables:
                return self._variables[name]
            if default is not None:
                return default
            fix = f"export {name} or write ${{{name}:-default}} in the config"
            return self._unresolved(written, location, f"{written} is not set; {fix}")
        if inner == "/":
            return os.sep
        if inner.partition(":")[0].isidentifier():  # ${command:…}, ${config:…}, ${workspaceFolder:name}
            fix = "write its value, or use ${env:NAME}"
            return self._unresolved(
                written, location, f"{written} is a VS Code variable the proxy cannot resolve; {fix}"
            )
        return written  # no client's variable: text that only looks like one

    def _input(self, input_id: str, written: str, location: tuple[str, ...]) -> str:
        variable = input_variable(input_id)
        for name in (variable, input_id):
            if name in os.environ:
                return os.environ[name]
        declared = self._inputs.get(input_id)
        if declared is not None and declared.default is not None:
            return declared.default
        if declared is None:
            what = f"{written} has no value, and no entry under 'inputs' declares it"
        else:
            described = f' ("{declared.description}")' if declared.description else ""
            what = f"{written}{described} has no value, and the proxy cannot prompt for it"
        return self._unresolved(written, location, f"{what}; set {variable} (or {input_id}) in the environment")

    def _unresolved(self, written: str, location: tuple[str, ...], message: str) -> str:
        self._problem(location, message)
        self.unexpanded.add(location[:2])
        return written

    def _problem(self, location: tuple[str, ...], message: str) -> None:
        self.problems.append(_Problem(location, message))

    def validation_problems(self, error: ValidationError) -> list[_Problem]:
        """Pydantic's errors, located as the file names things (`servers.Zuplo MCP`, not `mcpServers.Zuplo_MCP`)."""
        problems: list[_Problem] = []
        for detail in error.errors():
            location = [str(part) for part in detail["loc"] if not str(part).startswith("function-")]
            if location and location[0] in _SERVER_KEYS:
                location[0] = self.servers_key
                if len(location) > 1:
                    location[1] = self.renamed.get(location[1], location[1])
            problems.append(_Problem(tuple(location), _detail_message(detail)))
        return problems

    def describe(self, problems: Iterable[_Problem]) -> str:
        """One message: the file, then each problem (on a line of its own when there are several), in file order."""
        ordered = sorted(problems, key=self._position)
        if len(ordered) == 1:
            return f"{self.path}: {ordered[0]}"
        return f"{self.path}: {len(ordered)} problems:" + "".join(f"\n  {problem}" for problem in ordered)

    def _position(self, problem: _Problem) -> tuple[int, int]:
        """Where `problem` is in the file: its top-level key's place, and its server's."""
        first, second = (*problem.location, "", "")[:2]
        if not first:
            return (-1, -1)
        top = self._keys.index(first) if first in self._keys else len(self._keys)
        is_server = first == self.servers_key and second in self._server_names
        return (top, self._server_names.index(second) if is_server else -1)


def _without_comments(text: str) -> str:
    """JSON with comments and trailing commas, which VS Code's and Cursor's files may have, as plain JSON. What goes
    becomes spaces (line breaks stay), so an error still names the right line and column."""
    out = list(text)
    index, in_string, comma = 0, False, None
    while index < len(text):
        char = text[index]
        if in_string:
            in_string = char != '"'
            index += 2 if char == "\\" else 1
            continue
        if text.startswith(("//", "/*"), index):
            closing = "\n" if text[index + 1] == "/" else "*/"
            end = text.find(closing, index + 2)
            end = len(text) if end < 0 else end + (0 if closing == "\n" else 2)
            out[index:end] = [c if c == "\n" else " " for c in text[index:end]]
            index = end
            continue
        if char in "}]" and comma is not None:
            out[comma] = " "
        if char == ",":
            comma = index
        elif not char.isspace():
            comma = None
        in_string = char == '"'
        index += 1
    return "".join(out)


def load_settings(path: Path | None = None, *, serving: bool = False, **overrides: Any) -> ProxySettings:
    """Load the config file at `path` (default: $MCPSTORE_PROXY_CONFIG, then config/proxy.yaml); `serving` says the
    settings are for `serve`, which listens on `host:port`, so that an upstream URL at that address is refused.

    Raises:
        ConfigError: the file is missing, unreadable, or wrong; the message names the file and, for each
            problem, its location and the fix.
    """
    config_path = _resolve_path(path)
    file = _ConfigFile(config_path)
    data = file.read()

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
            return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=data))

    problems = list(file.problems)
    try:
        settings = _LoadedSettings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        # What an unresolved variable's `${…}` text breaks is no news.
        problems += [
            problem
            for problem in file.validation_problems(error)
            if not (problem.location[:2] in file.unexpanded and "${" in problem.message)
        ]
        raise ConfigError(file.describe(problems)) from None
    except ValueError as error:  # a malformed MCPSTORE_PROXY_* variable
        raise ConfigError(f"{config_path}: {error}") from None
    problems += _self_references(settings, file, serving=serving)
    if problems:
        raise ConfigError(file.describe(problems))
    for warning in file.warnings:
        logger.warning("%s", warning)
    return settings


def _self_references(settings: ProxySettings, file: _ConfigFile, *, serving: bool) -> list[_Problem]:
    """The upstreams that are this proxy itself: run on this same config, or (for `serve`) at its own address."""
    problems: list[_Problem] = []
    for name, server in settings.enabled_servers.items():
        location = (file.servers_key, file.renamed.get(name, name))
        if server.command is not None and _is_same_file(_config_run_by(server), file.path):
            shown = shlex.join([server.command, *server.args])
            problems.append(
                _Problem(
                    location,
                    f"runs this proxy ({shown}) on this same config, {file.path}, so every start would start "
                    "another copy, without end; remove the entry, or give that proxy a config of its own",
                )
            )
        if serving and server.url is not None and _is_own_address(server.url, settings.host, settings.port):
            address = f"[{settings.host}]" if ":" in settings.host else settings.host
            problems.append(
                _Problem(
                    location,
                    f"url {server.url!r} is this proxy's own address (serve listens on {address}:{settings.port}), "
                    "so every call would come back to it, without end; remove the entry, or change its url or the "
                    "proxy's port",
                )
            )
    return problems


def _config_run_by(server: UpstreamConfig) -> Path | None:
    """The config file that `server`'s command runs this proxy on, when it runs `mcpstore-proxy` (or
    `python -m mcpstore_proxy`, possibly behind a launcher such as `uvx`) with a subcommand that starts upstreams."""
    assert server.command is not None
    words = [server.command, *server.args]
    for index, word in enumerate(words):
        program = re.split(r"[@=<>]", Path(word).name.lower().removesuffix(".exe"))[0]
        if program == "mcpstore-proxy":
            rest = words[index + 1 :]
        elif word == "-m" and words[index + 1 : index + 2] == ["mcpstore_proxy"]:
            rest = words[index + 2 :]
        else:
            continue
        if rest and rest[0] in _RUNS_UPSTREAMS:
            named = _option_value(rest[1:], "--config")
            named = named or server.env.get(CONFIG_PATH_ENV) or str(DEFAULT_CONFIG_PATH)
            config = Path(named).expanduser()
            return config if config.is_absolute() else Path(server.cwd or os.getcwd()) / config
    return None


def _option_value(words: list[str], option: str) -> str | None:
    """The value of `option` among command-line `words` (`--config X`, `--config=X`, or a prefix argparse accepts,
    `--conf X`); the last one wins, as in argparse."""
    value = None
    for index, word in enumerate(words):
        name, has_value, given = word.partition("=")
        if len(name) > 2 and option.startswith(name):
            value = given if has_value else (words[index + 1] if index + 1 < len(words) else None)
    return value


def _is_same_file(path: Path | None, other: Path) -> bool:
    try:
        return path is not None and os.path.samefile(path, other)
    except OSError:
        return False


def _is_own_address(url: str, host: str, port: int) -> bool:
    """Whether `url` reaches the MCP endpoint `serve` listens on at `host:port` (loopback names are one machine)."""
    parts = urlsplit(url)
    try:
        url_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    url_host, own_host = (parts.hostname or "").lower(), host.lower().strip("[]")
    is_same_host = url_host == own_host or (url_host in _THIS_MACHINE and own_host in _THIS_MACHINE)
    return url_port == port and is_same_host and bool(_PROXY_PATH.fullmatch(parts.path.rstrip("/")))


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
    location = ".".join(str(part) for part in detail["loc"] if not str(part).startswith("function-"))
    location = location.replace("mcp_servers", "mcpServers")
    message = _detail_message(detail)
    return f"{location}: {message}" if location else message


def _detail_message(detail: ErrorDetails) -> str:
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        return "is not a known option; see the README's config reference"
    if detail["type"] == "missing":
        return "is required"
    if "input" in detail and detail["type"] not in ("value_error", "assertion_error"):
        return f"{message} (got {detail['input']!r})"
    return message
