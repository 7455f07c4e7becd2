"""The check that refuses a config that would start this proxy on itself: a server whose command runs this proxy
on this same config, or (for `serve`) whose URL is the proxy's own address. Either would repeat without end.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from mcpstore_proxy.config_files import CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH, ConfigFile, Problem
from mcpstore_proxy.settings import ProxySettings, UpstreamConfig

__all__ = ["find_self_references"]

_THIS_MACHINE: Final = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})
_PROXY_PATH: Final = re.compile(r"/(mcp|sse|messages|agents/[^/]+/mcp)")
_RUNS_UPSTREAMS: Final = frozenset({"serve", "stdio", "check"})
"""The subcommands that start upstreams: one that runs this proxy on its own config starts itself again."""


def find_self_references(settings: ProxySettings, file: ConfigFile, *, serving: bool) -> list[Problem]:
    """The upstreams that are this proxy itself: run on this same config, or (for `serve`) at its own address."""
    problems: list[Problem] = []
    for name, server in settings.enabled_servers.items():
        location = (file.servers_key, file.renamed.get(name, name))
        if server.command is not None and _is_same_file(_config_run_by(server), file.path):
            shown = shlex.join([server.command, *server.args])
            problems.append(
                Problem(
                    location,
                    f"runs this proxy ({shown}) on this same config, {file.path}, so every start would start "
                    "another copy, without end; remove the entry, or give that proxy a config of its own",
                )
            )
        if serving and server.url is not None and _is_own_address(server.url, settings.host, settings.port):
            address = f"[{settings.host}]" if ":" in settings.host else settings.host
            problems.append(
                Problem(
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
