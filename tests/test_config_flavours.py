"""Config files as people have them: Claude Desktop, Claude Code, Cursor and VS Code files load unchanged; every
problem in a file is reported at once; a config that would run the proxy on itself is refused.

The flavours are real files under tests/fixtures/configs/, read by the real loader; the command-line cases run the
installed `mcpstore-proxy` as a process of its own.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcpstore_proxy.config import load_settings
from mcpstore_proxy.errors import ConfigError
from tests.support import FIXTURES, PROJECT_ROOT, STATEFUL_SERVER, free_port

CONFIGS = FIXTURES / "configs"
COMMAND = Path(sys.executable).parent / "mcpstore-proxy"
"""The console script that installing the package puts beside the interpreter."""


def config_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mcpstore_proxy.config" and r.levelname == "WARNING"]


def write(directory: Path, text: str, name: str = "proxy.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def run_cli(*arguments: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`mcpstore-proxy ARGUMENTS` as a process of its own, with exactly the environment `env` (plus PATH)."""
    return subprocess.run(
        [str(COMMAND), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
        env={"PATH": os.environ["PATH"], **env},
        check=False,
    )


def problem_lines(error: ConfigError) -> list[str]:
    return [line.strip() for line in error.message.splitlines()[1:]]


# Flavours.


def test_a_claude_desktop_config_loads_and_its_app_settings_are_ignored_with_one_warning_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    path = CONFIGS / "claude_desktop_config.json"
    settings = load_settings(path)
    assert settings.mcp_servers.keys() == {"filesystem", "github", "weather"}
    assert settings.mcp_servers["github"].env == {"GITHUB_PERSONAL_ACCESS_TOKEN": "<YOUR_TOKEN>"}
    assert settings.mcp_servers["weather"].resolved_transport == "stdio"
    warnings = config_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert [w for w in warnings if "'globalShortcut'" in w] == [
        f"{path}: ignored the top-level key 'globalShortcut': it is not a proxy option"
    ]
    assert [w for w in warnings if "'preferences'" in w] == [
        f"{path}: ignored the top-level key 'preferences': it is not a proxy option"
    ]


def test_a_claude_code_mcp_json_loads_with_its_types_headers_and_expanded_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_KEY", "k-123")
    monkeypatch.setenv("AIRTABLE_API_KEY", "pat-456")
    monkeypatch.delenv("API_BASE_URL", raising=False)
    settings = load_settings(CONFIGS / "claude-code" / ".mcp.json")
    servers = settings.mcp_servers
    assert {name: s.resolved_transport for name, s in servers.items()} == {
        "sentry": "streamable-http",
        "api-server": "streamable-http",
        "asana": "sse",
        "airtable": "stdio",
    }
    assert servers["api-server"].url == "https://api.example.com/mcp"
    assert servers["api-server"].headers == {"Authorization": "Bearer k-123"}
    assert servers["airtable"].env == {"AIRTABLE_API_KEY": "pat-456"}


def test_a_cursor_mcp_json_loads_with_env_references_workspace_paths_and_an_env_file(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("USERJOT_API_TOKEN", "uj-789")
    monkeypatch.setenv("ZUPLO_MCP_URL", "https://gateway.example.com/mcp/linear-v1")
    path = CONFIGS / "cursor" / ".cursor" / "mcp.json"
    settings = load_settings(path)
    workspace = CONFIGS.resolve() / "cursor"
    servers = settings.mcp_servers
    assert servers["userjot"].headers == {"Authorization": "Bearer uj-789"}
    assert servers["Zuplo_MCP"].url == "https://gateway.example.com/mcp/linear-v1"
    assert servers["memory"].env == {"MEMORY_FILE_PATH": f"{Path.home()}/.mcp-storage/memory.json"}
    assert servers["project-docs"].args == [f"{workspace}/tools/docs-server.js"]
    assert servers["project-docs"].env == {"DOCS_ROOT": "docs", "DOCS_LANGUAGE": "en"}
    assert config_warnings(caplog) == [
        f"{path}: the server 'Zuplo MCP' is served as 'Zuplo_MCP' (a server name may use only letters, digits, "
        "'_', '.' and '-')"
    ]


def test_a_vscode_mcp_json_loads_its_servers_with_inputs_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("MCPSTORE_INPUT_PERPLEXITY_KEY", "pplx-1")
    monkeypatch.setenv("MCPSTORE_INPUT_GITHUB_TOKEN", "ghp-2")
    path = CONFIGS / "vscode" / ".vscode" / "mcp.json"
    settings = load_settings(path)
    workspace = CONFIGS.resolve() / "vscode"
    servers = settings.mcp_servers
    assert list(servers) == ["Perplexity", "github", "fetch", "my-local-server", "legacy-events", "playwright"]
    assert {name: s.resolved_transport for name, s in servers.items()} == {
        "Perplexity": "stdio",
        "github": "streamable-http",
        "fetch": "stdio",
        "my-local-server": "stdio",
        "legacy-events": "sse",
        "playwright": "stdio",
    }
    assert servers["Perplexity"].env == {"PERPLEXITY_API_KEY": "pplx-1"}
    assert servers["github"].headers == {"Authorization": "Bearer ghp-2"}
    local = servers["my-local-server"]
    assert local.args == [f"{workspace}/build/index.js"]
    assert local.env == {"LOG_LEVEL": "debug", "PORT": "3000", "BUILD_DIR": "build"}  # env wins over envFile
    assert servers["playwright"].model_extra == {}  # gallery and version are descriptions, dropped quietly
    assert config_warnings(caplog) == [
        f"{path}: ignored servers.my-local-server.dev: VS Code's dev mode (watch and debug) has no meaning to the proxy"
    ]


def test_a_vscode_input_may_also_come_from_a_variable_named_as_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("perplexity-key", "pplx-plain")
    monkeypatch.setenv("github_token", "ghp-plain")
    monkeypatch.delenv("MCPSTORE_INPUT_PERPLEXITY_KEY", raising=False)
    monkeypatch.delenv("MCPSTORE_INPUT_GITHUB_TOKEN", raising=False)
    servers = load_settings(CONFIGS / "vscode" / ".vscode" / "mcp.json").mcp_servers
    assert servers["Perplexity"].env == {"PERPLEXITY_API_KEY": "pplx-plain"}
    assert servers["github"].headers == {"Authorization": "Bearer ghp-plain"}


def test_missing_vscode_inputs_are_one_error_naming_each_input_its_description_and_the_variable_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MCPSTORE_INPUT_PERPLEXITY_KEY", "perplexity-key", "MCPSTORE_INPUT_GITHUB_TOKEN", "github_token"):
        monkeypatch.delenv(name, raising=False)
    path = CONFIGS / "vscode" / ".vscode" / "mcp.json"
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.message.splitlines()[0] == f"{path}: 2 problems:"
    assert problem_lines(caught.value) == [
        'servers.Perplexity.env.PERPLEXITY_API_KEY: ${input:perplexity-key} ("Perplexity API Key") has no value, '
        "and the proxy cannot prompt for it; set MCPSTORE_INPUT_PERPLEXITY_KEY (or perplexity-key) in the environment",
        'servers.github.headers.Authorization: ${input:github_token} ("GitHub Personal Access Token") has no value, '
        "and the proxy cannot prompt for it; set MCPSTORE_INPUT_GITHUB_TOKEN (or github_token) in the environment",
    ]


# Every problem at once.


def test_every_problem_in_a_file_is_reported_at_once_each_with_its_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DB_URL_FOR_TEST", raising=False)
    monkeypatch.delenv("MCPSTORE_INPUT_API_KEY", raising=False)
    monkeypatch.delenv("api-key", raising=False)
    path = write(
        tmp_path,
        """{
  "inputs": [{"type": "promptString", "id": "api-key", "description": "Search API key", "password": true}],
  "servers": {
    "git": {"type": "stdio", "args": ["mcp-server-git"]},
    "search": {"type": "http", "url": "https://search.example.com/mcp",
               "headers": {"Authorization": "Bearer ${input:api-key}"}},
    "db": {"command": "npx", "env": {"DB_URL": "${env:DB_URL_FOR_TEST}", "MODE": "${command:pickMode}"}},
    "web": {"comand": "npx"},
    "fine": {"command": "npx"}
  }
}""",
        name="mcp.json",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.message.splitlines()[0] == f"{path}: 5 problems:"
    assert problem_lines(caught.value) == [
        "servers.git: needs either 'command' (a stdio server) or 'url' (an HTTP server)",
        'servers.search.headers.Authorization: ${input:api-key} ("Search API key") has no value, and the proxy '
        "cannot prompt for it; set MCPSTORE_INPUT_API_KEY (or api-key) in the environment",
        "servers.db.env.DB_URL: ${env:DB_URL_FOR_TEST} is not set; export DB_URL_FOR_TEST",
        "servers.db.env.MODE: ${command:pickMode} is a VS Code variable the proxy cannot resolve; "
        "write its value, or use ${env:NAME}",
        "servers.web: has unknown option(s) 'comand' (did you mean 'command'?); see the README's config reference",
    ]


def test_an_unknown_top_level_key_in_the_proxys_own_yaml_is_still_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "sesion_idle_timeout_seconds: 5\nprot: 9000\nmcpServers: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert problem_lines(caught.value) == [
        "sesion_idle_timeout_seconds: is not a known option (did you mean 'session_idle_timeout_seconds'?); "
        "see the README's config reference",
        "prot: is not a known option (did you mean 'port'?); see the README's config reference",
    ]


def test_a_file_with_both_servers_and_mcpservers_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '{"servers": {}, "mcpServers": {}}', name="mcp.json")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.message == (
        f"{path}: has both 'servers' (VS Code) and 'mcpServers'; keep one of them, holding every server"
    )


def test_a_malformed_json_file_names_the_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "mcpServers": {\n    "a": {"command": "x"}\n    "b": {}\n  }\n}\n', name="mcp.json")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.message == f"{path}: is not valid JSON: Expecting ',' delimiter at line 4, column 5"


# Server keys that other clients define.


def test_a_disabled_server_is_skipped_with_a_warning_and_needs_none_of_its_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.delenv("UNSET_TOKEN_FOR_TEST", raising=False)
    monkeypatch.delenv("UNSET_URL_FOR_TEST", raising=False)
    path = write(
        tmp_path,
        '{"mcpServers": {"old": {"url": "${UNSET_URL_FOR_TEST}/mcp", "headers": {"T": "${UNSET_TOKEN_FOR_TEST}"},'
        ' "disabled": true}, "new": {"command": "npx"}}}',
        name="claude_desktop_config.json",
    )
    settings = load_settings(path)
    assert settings.enabled_servers.keys() == {"new"}
    assert config_warnings(caplog) == [f"{path}: skipped mcpServers.old: it is disabled (disabled: true)"]


def test_client_only_server_keys_are_ignored_with_one_warning_each_and_empty_ones_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    path = write(
        tmp_path,
        """{"mcpServers": {
  "fs": {"command": "npx", "autoApprove": ["read_file"], "alwaysAllow": [], "description": "files"},
  "api": {"url": "https://api.example.com/mcp", "oauth": {"clientId": "abc"}, "timeout": 30}
}}""",
        name="mcp.json",
    )
    settings = load_settings(path)
    assert settings.mcp_servers["api"].call_timeout_seconds == 30
    assert config_warnings(caplog) == [
        f"{path}: ignored mcpServers.fs.autoApprove: the proxy does not approve tool calls; the client connected "
        "to the proxy asks before it calls the proxy's tools",
        f"{path}: ignored mcpServers.api.oauth: the proxy does not sign in to upstreams; put a token in 'headers'",
    ]


def test_numbers_in_args_and_env_are_taken_as_text_and_a_null_env_value_as_unset(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"servers": {"db": {"command": "npx", "args": ["--port", 5432], "env": {"POOL": 4, "DEBUG": null}}}}',
        name="mcp.json",
    )
    server = load_settings(path).mcp_servers["db"]
    assert server.args == ["--port", "5432"]
    assert server.env == {"POOL": "4"}


def test_a_clients_disabled_tools_become_excluded_tools(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"mcpServers": {"gh": {"command": "npx", "transportType": "stdio", "disabledTools": ["delete_repo", "a*b"]}}}',
        name="cline_mcp_settings.json",
    )
    server = load_settings(path).mcp_servers["gh"]
    assert server.exclude_tools == ["delete_repo", "a[*]b"]
    assert server.resolved_transport == "stdio"


# A config that runs the proxy on itself.


def self_config(tmp_path: Path, entry: str) -> Path:
    return write(tmp_path, f"mcpServers:\n  ok: {{command: npx}}\n  loop: {entry}\n")


@pytest.mark.parametrize(
    "command",
    [
        "{command: mcpstore-proxy, args: [stdio, --config, %CONFIG%]}",
        "{command: %COMMAND%, args: [serve, --config=%CONFIG%, --port, '9999']}",
        "{command: %PYTHON%, args: [-m, mcpstore_proxy, check, --conf, %CONFIG%]}",
        "{command: uvx, args: [--from, mcpstore-proxy, mcpstore-proxy, stdio, --config, %CONFIG%]}",
        "{command: mcpstore-proxy, args: [stdio, --config, proxy.yaml], cwd: %DIR%}",
        "{command: mcpstore-proxy, args: [stdio], env: {MCPSTORE_PROXY_CONFIG: %CONFIG%}}",
    ],
)
def test_a_stdio_upstream_that_runs_this_proxy_on_the_same_config_is_refused(tmp_path: Path, command: str) -> None:
    config = tmp_path / "proxy.yaml"
    entry = (
        command.replace("%COMMAND%", str(COMMAND))
        .replace("%PYTHON%", sys.executable)
        .replace("%CONFIG%", str(config))
        .replace("%DIR%", str(tmp_path))
    )
    self_config(tmp_path, entry)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = caught.value.message
    assert message.startswith(f"{config}: mcpServers.loop: runs this proxy (")
    assert message.endswith(
        f") on this same config, {config}, so every start would start another copy, without end; "
        "remove the entry, or give that proxy a config of its own"
    )


def test_a_stdio_upstream_that_runs_this_proxy_on_another_config_is_accepted(tmp_path: Path) -> None:
    other = write(tmp_path, "mcpServers: {}\n", name="other.yaml")
    config = self_config(tmp_path, f"{{command: mcpstore-proxy, args: [stdio, --config, {other}]}}")
    assert load_settings(config).mcp_servers["loop"].command == "mcpstore-proxy"
    pins = self_config(tmp_path, f"{{command: mcpstore-proxy, args: [pins, list, --config, {tmp_path}/proxy.yaml]}}")
    assert load_settings(pins).mcp_servers["loop"].args[0] == "pins"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8765/mcp",
        "http://127.0.0.1:8765/mcp/",
        "http://[::1]:8765/sse",
        "http://0.0.0.0:8765/agents/a1/mcp",
    ],
)
def test_an_http_upstream_at_the_proxys_own_address_is_refused_when_serving(tmp_path: Path, url: str) -> None:
    config = self_config(tmp_path, f"{{url: '{url}'}}")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, serving=True)
    assert caught.value.message == (
        f"{config}: mcpServers.loop: url '{url}' is this proxy's own address (serve listens on 127.0.0.1:8765), "
        "so every call would come back to it, without end; remove the entry, or change its url or the proxy's port"
    )


def test_an_http_upstream_at_another_port_or_path_or_without_serving_is_accepted(tmp_path: Path) -> None:
    own = self_config(tmp_path, "{url: 'http://localhost:8765/mcp'}")
    assert load_settings(own).mcp_servers["loop"].url == "http://localhost:8765/mcp"  # stdio and check do not listen
    assert load_settings(own, serving=True, port=9000).port == 9000
    health = self_config(tmp_path, "{url: 'http://127.0.0.1:8765/other/mcp'}")
    assert load_settings(health, serving=True).mcp_servers["loop"].url == "http://127.0.0.1:8765/other/mcp"


# Through the real command.


def test_check_starts_the_servers_of_a_vscode_workspace_file_through_the_real_command(tmp_path: Path) -> None:
    completed = run_cli(
        "check",
        "--config",
        str(CONFIGS / "workspace" / ".vscode" / "mcp.json"),
        env={
            "FIXTURE_PYTHON": sys.executable,
            "MCPSTORE_INPUT_NOTES_TOKEN": "t-1",
            # Not beside the config, which lives in the repository.
            "MCPSTORE_PROXY_TOOL_PINS_FILE": str(tmp_path / "pins.json"),
            "MCPSTORE_PROXY_RUNTIME_SERVICES_FILE": str(tmp_path / "services.json"),
        },
    )
    assert completed.returncode == 0, completed.stderr
    rows = {line.split()[0]: line.split() for line in completed.stdout.splitlines()[1:]}
    assert rows["notes"][1:4] == ["stdio", "isolated", "ready"]
    assert rows["counter"][1:4] == ["stdio", "isolated", "ready"]
    assert STATEFUL_SERVER.is_file()


def test_the_real_command_lists_every_missing_input_and_variable_in_one_error_and_exits_2() -> None:
    config = CONFIGS / "workspace" / ".vscode" / "mcp.json"
    completed = run_cli("check", "--config", str(config), env={})
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""
    assert completed.stderr.splitlines() == [
        f"mcpstore-proxy: config error: {config}: 3 problems:",
        "  servers.notes.command: ${env:FIXTURE_PYTHON} is not set; export FIXTURE_PYTHON",
        '  servers.notes.env.NOTES_TOKEN: ${input:notes-token} ("Token for the notes server") has no value, '
        "and the proxy cannot prompt for it; set MCPSTORE_INPUT_NOTES_TOKEN (or notes-token) in the environment",
        "  servers.counter.command: ${env:FIXTURE_PYTHON} is not set; export FIXTURE_PYTHON",
    ]


def test_serve_refuses_a_config_whose_upstream_is_its_own_address(tmp_path: Path) -> None:
    port = free_port()
    config = self_config(tmp_path, f"{{url: 'http://localhost:{port}/mcp'}}")
    completed = run_cli("serve", "--config", str(config), "--port", str(port), env={}, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.splitlines() == [
        f"mcpstore-proxy: config error: {config}: mcpServers.loop: url 'http://localhost:{port}/mcp' is this "
        f"proxy's own address (serve listens on 127.0.0.1:{port}), so every call would come back to it, without "
        "end; remove the entry, or change its url or the proxy's port"
    ]
