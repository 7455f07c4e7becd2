"""The command line: one clear line for a bad config, a status table from `check`, and `stdio` for Claude Desktop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from tests.support import PROJECT_ROOT, fixture_server, is_alive, structured, wait_until, write_config


def run_cli(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpstore_proxy", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
        check=False,
    )


def write_raw(tmp_path: Path, text: str, name: str = "proxy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("mcpServers:\n  web:\n    args: [x]\n", "mcpServers.web: needs either 'command' (a stdio server) or 'url'"),
        ("mcpServers:\n  web:\n    comand: npx\n", "mcpServers.web: has unknown option(s) 'comand'"),
        ("port: eighty\nmcpServers: {}\n", "port: Input should be a valid integer"),
        ("sesion_idle_timeout_seconds: 5\nmcpServers: {}\n", "sesion_idle_timeout_seconds: is not a known option"),
        (
            "mcpServers:\n  a:\n    command: x\n    session: private\n",
            "mcpServers.a.session: Input should be 'isolated' or 'shared'",
        ),
        ("mcpServers:\n  a:\n    url: ftp://host/mcp\n", "url 'ftp://host/mcp' must start with http:// or https://"),
        ("mcpServers:\n  a:\n    command: x\n    env: {KEY: '${UNSET_FOR_TEST}'}\n", "${UNSET_FOR_TEST} is not set"),
        ("mcpServers:\n  a: [unclosed\n", "is not valid YAML"),
        ("mcpServers:\n  'bad name!':\n    command: x\n", "server name 'bad name!' may use only letters"),
    ],
)
def test_a_bad_config_prints_one_line_naming_the_field_and_exits_2(
    tmp_path: Path, config_text: str, expected: str
) -> None:
    config = write_raw(tmp_path, config_text)
    for command in ("serve", "check", "stdio"):
        completed = run_cli(command, "--config", str(config))
        assert completed.returncode == 2, completed.stderr
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1, completed.stderr
        assert lines[0].startswith(f"mcpstore-proxy: config error: {config}: ")
        assert expected in lines[0]
        assert "Traceback" not in completed.stderr
        assert completed.stdout == ""


def test_a_missing_config_file_names_the_path_and_how_to_give_one(tmp_path: Path) -> None:
    completed = run_cli("check", "--config", str(tmp_path / "nope.yaml"))
    assert completed.returncode == 2
    assert f"config file '{tmp_path / 'nope.yaml'}' not found (pass --config PATH" in completed.stderr


def test_a_tool_name_collision_at_start_up_is_an_error_naming_both_sources(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"first": fixture_server("first", prefix=""), "second": fixture_server("second", prefix="")},
    )
    completed = run_cli("check", "--config", str(config))
    assert completed.returncode == 2
    last = completed.stderr.strip().splitlines()[-1]
    assert re.search(r"tool name '(\w+)' is exposed by both upstream 'first' \(tool '\1'\) and upstream 'second'", last)
    assert "(and 12 more colliding names)" in last
    assert "'prefix'" in last
    assert "Traceback" not in completed.stderr


def test_check_prints_each_upstream_with_state_and_tool_count(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"state": fixture_server("state"), "shared": fixture_server("shared", session="shared")}
    )
    completed = run_cli("check", "--config", str(config))
    assert completed.returncode == 0, completed.stderr
    rows = [line.split() for line in completed.stdout.splitlines()]
    assert rows[0] == ["UPSTREAM", "TRANSPORT", "SESSION", "STATE", "TOOLS", "DETAIL"]
    assert rows[1] == ["state", "stdio", "isolated", "ready", "13"]
    assert rows[2] == ["shared", "stdio", "shared", "ready", "13"]


def test_check_exits_nonzero_and_shows_why_an_upstream_failed(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "state": fixture_server("state"),
            "broken": fixture_server("broken", "--fail-start", "no token configured"),
            "absent": {"command": "/nonexistent/mcp-server"},
        },
    )
    completed = run_cli("check", "--config", str(config))
    assert completed.returncode == 1
    rows = {line.split()[0]: line for line in completed.stdout.splitlines()[1:]}
    assert rows["state"].split()[3] == "ready"
    assert rows["broken"].split()[3] == "failed"
    assert "no token configured" in rows["broken"]
    assert rows["absent"].split()[3] == "failed"
    assert "command '/nonexistent/mcp-server' not found (check mcpServers.absent.command)" in rows["absent"]


def test_the_bundled_config_checks_clean_offline() -> None:
    completed = run_cli("check", "--config", str(PROJECT_ROOT / "config" / "proxy.yaml"))
    assert completed.returncode == 0, completed.stderr
    assert "notes" in completed.stdout
    assert "counter" in completed.stdout


def stdio_parameters(config: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcpstore_proxy", "stdio", "--config", str(config)], cwd=str(PROJECT_ROOT)
    )


@pytest.mark.anyio
async def test_stdio_command_keeps_one_session_for_the_pipe_and_cleans_up_on_eof(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with Client(stdio_parameters(config), mode="legacy") as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"state_remember", "state_recall", "state_whoami"} <= tools
        await client.call_tool("state_remember", {"value": "one"})
        await client.call_tool("state_remember", {"value": "two"})
        assert structured(await client.call_tool("state_recall", {})) == ["one", "two"]
        pid = structured(await client.call_tool("state_whoami", {}))
        assert structured(await client.call_tool("state_whoami", {})) == pid
    await wait_until(lambda: not is_alive(pid), what="the stdio session's upstream to exit after EOF")


@pytest.mark.anyio
async def test_stdio_command_keeps_state_for_a_2026_client_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with Client(stdio_parameters(config), mode="auto") as client:
        assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
        await client.call_tool("state_remember", {"value": "kept"})
        assert structured(await client.call_tool("state_recall", {})) == ["kept"]
