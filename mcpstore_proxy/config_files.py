"""A config file read as people have it: the proxy's own YAML, or an MCP client's JSON as it is.

The JSON may be Claude Desktop's `claude_desktop_config.json`, Claude Code's `.mcp.json`, Cursor's `mcp.json`, or
VS Code's `.vscode/mcp.json` (servers under `servers`, `inputs`, comments and trailing commas).

Variables in any string: `${VAR}` and `${VAR:-default}` (Claude Code), `${env:VAR}` (Cursor,
VS Code), `${input:ID}` (VS Code; from `MCPSTORE_INPUT_<ID>`, else the variable `ID`, else the
input's `default`), `${workspaceFolder}`, `${workspaceFolderBasename}`, `${userHome}`,
`${pathSeparator}`, `${/}`, and the proxy's own `${PYTHON}` (its interpreter) and
`${CONFIG_DIR}` (the file's folder).

`ConfigFile` turns the file into the data of `ProxySettings`, collecting every `Problem` and warning on the way
rather than stopping at the first.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import yaml
from dotenv import dotenv_values
from pydantic import ValidationError

from mcpstore_proxy.errors import ConfigError
from mcpstore_proxy.settings import (
    CLIENT_ONLY_KEYS,
    FOREIGN_KEYS,
    ProxySettings,
    UpstreamConfig,
    detail_message,
    did_you_mean,
    is_valid_name,
)

__all__ = ["CONFIG_PATH_ENV", "DEFAULT_CONFIG_PATH", "INPUT_VARIABLE_PREFIX", "ConfigFile", "Problem", "input_variable"]

DEFAULT_CONFIG_PATH = Path("config/proxy.yaml")
CONFIG_PATH_ENV = "MCPSTORE_PROXY_CONFIG"

INPUT_VARIABLE_PREFIX = "MCPSTORE_INPUT_"
_REFERENCE = re.compile(r"\$\{([^{}]*)\}")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_PROXY_OPTIONS: Final = (*(name for name in ProxySettings.model_fields if name != "mcp_servers"), "inputs")
_PROXY_OPTION_KEYS: Final = frozenset(name.lower() for name in _PROXY_OPTIONS)  # keys match in any case
_SERVER_KEYS: Final = ("mcpServers", "servers", "mcp_servers")
_CLIENT_SUFFIXES: Final = (".json", ".jsonc")


def input_variable(input_id: str) -> str:
    """The environment variable that gives VS Code's `${input:ID}` its value: `MCPSTORE_INPUT_` and the id in
    capitals, every character other than a letter or digit made `_` (`github-token` → MCPSTORE_INPUT_GITHUB_TOKEN)."""
    return INPUT_VARIABLE_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", input_id).upper()


@dataclass(frozen=True)
class Problem:
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


class ConfigFile:
    """One config file turned into the data of `ProxySettings`: the servers found under `servers` or `mcpServers`,
    every variable resolved, client-only keys set aside. It collects, instead of raising, every problem (to report
    them all at once) and every warning (to log once the file has loaded)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_client_file = path.suffix.lower() in _CLIENT_SUFFIXES
        """An MCP client's JSON, whose other top-level keys are that client's own; in the proxy's own YAML, a key
        it does not know is a typo."""
        self.servers_key = "mcpServers"
        self.problems: list[Problem] = []
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
                    f"{did_you_mean(key, _PROXY_OPTIONS)}"
                )
            else:
                hint = did_you_mean(key, _PROXY_OPTIONS)
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
        for key in [key for key in server if key in FOREIGN_KEYS]:
            value = server.pop(key)
            if key in CLIENT_ONLY_KEYS and value and not disabled:
                self.warnings.append(f"{self.path}: ignored {where}.{key}: {CLIENT_ONLY_KEYS[key]}")
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
        self.problems.append(Problem(location, message))

    def validation_problems(self, error: ValidationError) -> list[Problem]:
        """Pydantic's errors, located as the file names things (`servers.Zuplo MCP`, not `mcpServers.Zuplo_MCP`)."""
        problems: list[Problem] = []
        for detail in error.errors():
            location = [str(part) for part in detail["loc"] if not str(part).startswith("function-")]
            if location and location[0] in _SERVER_KEYS:
                location[0] = self.servers_key
                if len(location) > 1:
                    location[1] = self.renamed.get(location[1], location[1])
            problems.append(Problem(tuple(location), detail_message(detail)))
        return problems

    def describe(self, problems: Iterable[Problem]) -> str:
        """One message: the file, then each problem (on a line of its own when there are several), in file order."""
        ordered = sorted(problems, key=self._position)
        if len(ordered) == 1:
            return f"{self.path}: {ordered[0]}"
        return f"{self.path}: {len(ordered)} problems:" + "".join(f"\n  {problem}" for problem in ordered)

    def _position(self, problem: Problem) -> tuple[int, int]:
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


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)
