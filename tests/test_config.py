"""Loading the config: pasted mcpServers entries, ${VAR} interpolation, JSON files, environment overrides."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mcpstore_proxy.config import load_settings
from mcpstore_proxy.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "proxy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_inferred_transports(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            """
mcpServers:
  local: {command: npx, args: ["@playwright/mcp"]}
  remote: {url: "http://127.0.0.1:9/mcp"}
  legacy: {url: "http://127.0.0.1:9/sse"}
  pinned: {url: "http://127.0.0.1:9/events", transport: sse}
""",
        )
    )
    assert (settings.host, settings.port) == ("127.0.0.1", 8765)
    assert settings.session_header == "X-MCPStore-Session"
    assert settings.session_argument == "session_id"
    transports = {name: server.resolved_transport for name, server in settings.mcp_servers.items()}
    assert transports == {"local": "stdio", "remote": "streamable-http", "legacy": "sse", "pinned": "sse"}
    assert settings.mcp_servers["local"].session == "isolated"
    assert settings.mcp_servers["local"].prefix is None  # the server key is the prefix


def test_entries_pasted_from_other_clients_load_unchanged(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            json.dumps(
                {
                    "mcpServers": {
                        "fs": {
                            "command": "npx",
                            "args": ["-y", "server-fs"],
                            "autoApprove": ["read"],
                            "disabled": True,
                        },
                        "api": {"type": "http", "url": "https://example.invalid/mcp", "timeout": 30},
                    }
                }
            ),
            name="claude_desktop_config.json",
        )
    )
    assert not settings.mcp_servers["fs"].enabled
    assert settings.enabled_servers.keys() == {"api"}
    assert settings.mcp_servers["api"].resolved_transport == "streamable-http"
    assert settings.mcp_servers["api"].call_timeout_seconds == 30


def test_variables_are_interpolated_with_defaults_and_builtins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "s3cret")
    settings = load_settings(
        write(
            tmp_path,
            """
mcpServers:
  a:
    command: ${PYTHON}
    args: ["${CONFIG_DIR}/server.py", "${MISSING_VAR:-fallback}"]
    env: {TOKEN: "${API_TOKEN}"}
""",
        )
    )
    server = settings.mcp_servers["a"]
    assert server.command == sys.executable
    assert server.args == [f"{tmp_path.resolve()}/server.py", "fallback"]
    assert server.env == {"TOKEN": "s3cret"}


def test_environment_overrides_the_file_including_nested_server_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPSTORE_PROXY_PORT", "9100")
    monkeypatch.setenv("MCPSTORE_PROXY_MCPSERVERS__A__SESSION", "shared")
    settings = load_settings(write(tmp_path, "port: 9000\nmcpServers:\n  a: {command: x}\n  b: {command: y}\n"))
    assert settings.port == 9100
    assert settings.mcp_servers["a"].session == "shared"
    assert settings.mcp_servers["a"].command == "x"
    assert settings.mcp_servers["b"].session == "isolated"


def test_explicit_overrides_win_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPSTORE_PROXY_PORT", "9100")
    settings = load_settings(write(tmp_path, "mcpServers: {}\n"), port=9200, host=None)
    assert settings.port == 9200
    assert settings.host == "127.0.0.1"


def test_config_path_comes_from_the_environment_when_not_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "port: 9300\nmcpServers: {}\n")
    monkeypatch.setenv("MCPSTORE_PROXY_CONFIG", str(path))
    assert load_settings().port == 9300


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mcpServers:\n  a: {command: x, url: 'http://h/mcp'}\n", "mcpServers.a: has both 'command' and 'url'"),
        ("mcpServers:\n  a: {url: 'http://h/mcp', transport: stdio}\n", "says transport 'stdio' but has no 'command'"),
        ("mcpServers:\n  a: {command: x, prefix: 'a b'}\n", "prefix 'a b' may use only letters"),
        (
            "session_argument: 'session id'\nmcpServers: {}\n",
            "session_argument 'session id' must be a plain identifier",
        ),
        ("mcpServers:\n  a: {command: x, call_timeout_seconds: 0}\n", "mcpServers.a.call_timeout_seconds"),
        ("- a\n- b\n", "the top level must be a mapping"),
    ],
)
def test_invalid_values_raise_config_errors_that_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text))
    assert message in error.value.message
    assert str(tmp_path) in error.value.message
