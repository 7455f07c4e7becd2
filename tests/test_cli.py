"""The command line: one clear line for a bad config, a status table from `check`, `stdio` for Claude Desktop, and
`status`, a running proxy's upstreams, sessions and refusals in the terminal.

Most cases call `cli.main` in this process, with the upstreams in memory; a few run the installed command
as a real process, so that the console entry point, `python -m mcpstore_proxy` and logging to stderr stay
covered end to end. The stdio tests are real processes: the pipe is the feature.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from mcpstore_proxy import cli
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import SESSION_REFUSED
from tests.conversation import structured
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import (
    PROJECT_ROOT,
    connect,
    fixture_server,
    free_port,
    is_alive,
    stdio_parameters,
    wait_until,
    write_config,
)

COMMAND = Path(sys.executable).parent / "mcpstore-proxy"
"""The console script that installing the package puts beside the interpreter."""


def run_cli(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`mcpstore-proxy ARGUMENTS` as a process of its own (the console script)."""
    return subprocess.run(
        [str(COMMAND), *arguments], capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT, check=False
    )


def write_raw(tmp_path: Path, text: str, name: str = "proxy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def leave_logging_alone(level: str, log_format: str = "text") -> None:
    """In place of `configure_logging`, which would take the root logger over from pytest."""


@pytest.fixture
def upstreams(monkeypatch: pytest.MonkeyPatch) -> MemoryUpstreams:
    """`cli.main` in this process: `check` starts the fixture upstreams in memory, and the command does not
    take over the process's logging (a real run logs to stderr; see the process tests below)."""
    memory = MemoryUpstreams()
    monkeypatch.setattr(cli, "ProxyEngine", functools.partial(ProxyEngine, transports=memory))
    monkeypatch.setattr(cli, "configure_logging", leave_logging_alone)
    return memory


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cli.main` in this process for a config that must be refused: should it be accepted, the command fails
    at once instead of serving (or reading the test's stdin)."""

    async def accepted(*arguments: Any) -> int:
        raise AssertionError("the config was accepted")

    def engine(*arguments: Any, **options: Any) -> Any:
        raise AssertionError("the config was accepted")

    monkeypatch.setattr(cli, "serve_http", accepted)
    monkeypatch.setattr(cli, "serve_stdio", accepted)
    monkeypatch.setattr(cli, "ProxyEngine", engine)
    monkeypatch.setattr(cli, "configure_logging", leave_logging_alone)


def assert_one_config_error_line(stderr: str, stdout: str, config: Path, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"mcpstore-proxy: config error: {config}: ")
    assert expected in lines[0]
    assert "Traceback" not in stderr
    assert stdout == ""


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
@pytest.mark.usefixtures("nothing_starts")
def test_a_bad_config_prints_one_line_naming_the_field_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config_text: str, expected: str
) -> None:
    config = write_raw(tmp_path, config_text)
    for command in ("serve", "check", "stdio"):
        assert cli.main([command, "--config", str(config)]) == cli.EXIT_BAD_CONFIG
        captured = capsys.readouterr()
        assert_one_config_error_line(captured.err, captured.out, config, expected)


def test_the_installed_command_prints_one_line_for_a_bad_config_and_exits_2(tmp_path: Path) -> None:
    config = write_raw(tmp_path, "mcpServers:\n  web:\n    comand: npx\n")
    completed = run_cli("serve", "--config", str(config))
    assert completed.returncode == 2, completed.stderr
    assert_one_config_error_line(
        completed.stderr, completed.stdout, config, "mcpServers.web: has unknown option(s) 'comand'"
    )


@pytest.mark.usefixtures("nothing_starts")
def test_a_missing_config_file_names_the_path_and_how_to_give_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", "--config", str(tmp_path / "nope.yaml")]) == cli.EXIT_BAD_CONFIG
    assert f"config file '{tmp_path / 'nope.yaml'}' not found (pass --config PATH" in capsys.readouterr().err


def test_a_tool_name_collision_at_start_up_is_an_error_naming_both_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], upstreams: MemoryUpstreams
) -> None:
    config = write_config(
        tmp_path,
        {"first": fixture_server("first", prefix=""), "second": fixture_server("second", prefix="")},
    )
    assert cli.main(["check", "--config", str(config)]) == cli.EXIT_BAD_CONFIG
    stderr = capsys.readouterr().err
    last = stderr.strip().splitlines()[-1]
    assert re.search(r"tool name '(\w+)' is exposed by both upstream 'first' \(tool '\1'\) and upstream 'second'", last)
    assert "(and 12 more colliding names)" in last
    assert "'prefix'" in last
    assert "Traceback" not in stderr
    assert len(upstreams.started) >= 2  # both upstreams came up and listed their tools
    assert not upstreams.live


def test_check_prints_each_upstream_with_state_and_tool_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], upstreams: MemoryUpstreams
) -> None:
    config = write_config(
        tmp_path, {"state": fixture_server("state"), "shared": fixture_server("shared", session="shared")}
    )
    assert cli.main(["check", "--config", str(config)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["UPSTREAM", "TRANSPORT", "SESSION", "STATE", "TOOLS", "DETAIL"]
    assert rows[1] == ["state", "stdio", "isolated", "ready", "13"]
    assert rows[2] == ["shared", "stdio", "shared", "ready", "13"]
    assert not upstreams.live


def test_check_exits_nonzero_and_shows_why_an_upstream_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], upstreams: MemoryUpstreams
) -> None:
    config = write_config(
        tmp_path,
        {
            "state": fixture_server("state"),
            "broken": fixture_server("broken", "--fail-start", "no token configured"),
            "absent": {"command": "/nonexistent/mcp-server"},
        },
    )
    assert cli.main(["check", "--config", str(config)]) == cli.EXIT_FAILED
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["state"].split()[3] == "ready"
    assert rows["broken"].split()[3] == "failed"
    assert "no token configured" in rows["broken"]
    assert rows["absent"].split()[3] == "failed"
    assert "command '/nonexistent/mcp-server' not found (check mcpServers.absent.command)" in rows["absent"]
    assert not upstreams.live


def test_the_bundled_config_checks_clean_offline() -> None:
    completed = run_cli("check", "--config", str(PROJECT_ROOT / "config" / "proxy.yaml"))
    assert completed.returncode == 0, completed.stderr
    rows = {line.split()[0]: line.split() for line in completed.stdout.splitlines()[1:]}
    assert rows["notes"][3] == "ready"
    assert rows["counter"][3] == "ready"


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
async def test_stdio_command_keeps_state_for_a_2026_client_too_and_tells_it_changes_on_its_listen_stream(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, {"state": fixture_server("state")})
    async with Client(stdio_parameters(config), mode="auto") as client:
        assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
        await client.call_tool("state_remember", {"value": "kept"})
        assert structured(await client.call_tool("state_recall", {})) == ["kept"]
        async with client.listen(tools_list_changed=True) as subscription:
            await client.call_tool("state_grow", {"name": "sprout"})
            with anyio.fail_after(10):
                event = await anext(aiter(subscription))
        assert type(event).__name__ == "ToolsListChanged"


@pytest.mark.anyio
async def test_status_prints_a_running_proxys_upstreams_sessions_and_refusals_and_wants_the_admin_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    operator, alice = "operator-token-" + "o" * 16, "alice-token-" + "a" * 16
    config = write_config(
        tmp_path,
        {"state": fixture_server("state"), "notes": fixture_server("notes", session="shared")},
        admin_token=operator,
        max_sessions_per_upstream=1,
        auth={"tokens": [{"token": alice, "principal": "alice"}]},
    )
    as_alice = {"Authorization": f"Bearer {alice}"}
    async with (
        running_app(config) as proxy,
        connect(proxy.url, headers=as_alice) as first,
        connect(proxy.url, headers=as_alice) as second,
    ):
        await first.call_tool("state_remember", {"value": "kept"})
        with pytest.raises(MCPError) as refused:
            await second.call_tool("state_remember", {"value": "one too many"})
        assert refused.value.code == SESSION_REFUSED
        base = f"http://127.0.0.1:{proxy.port}"
        without_token = await _status(capsys, "--url", base)
        as_alice_only = await _status(capsys, "--url", proxy.url, "--token", alice)
        completed = await _status(capsys, "--url", proxy.url, "--token", operator)
    assert without_token.returncode == cli.EXIT_FAILED
    assert without_token.stderr.startswith(f"mcpstore-proxy: {base}/admin/status answered 401: ")
    assert "--token" in without_token.stderr
    assert as_alice_only.returncode == cli.EXIT_FAILED
    assert "answered 403" in as_alice_only.stderr
    assert completed.returncode == 0, completed.stderr
    blocks = completed.stdout.split("\n\n")
    assert blocks[0].startswith(f"mcpstore-proxy at {base}: ok, 0 requests in flight")
    upstreams = {line.split()[0]: line.split() for line in blocks[1].splitlines()}
    assert upstreams["UPSTREAM"][:3] == ["UPSTREAM", "STATE", "TRANSPORT"]
    assert upstreams["state"][:4] == ["state", "ready", "stdio", "isolated"]
    assert upstreams["state"][5] == "1"  # sessions
    assert upstreams["notes"][:4] == ["notes", "ready", "stdio", "shared"]
    assert upstreams["notes"][5:7] == ["one,", "shared"]
    assert upstreams["state"][4] == upstreams["notes"][4] != "0"  # tools
    [title, header, session] = blocks[2].splitlines()
    assert title == "SESSIONS"
    assert header.split()[:4] == ["UPSTREAM", "SESSION", "KIND", "PRINCIPAL"]
    assert session.split()[:4] == ["state", session.split()[1], "connection", "alice"]
    assert re.fullmatch(r"#[0-9a-f]{10}", session.split()[1])
    assert blocks[3].startswith("RECENT RESETS AND REFUSALS\n")
    # TIME is "2026-12-01 18:00:00 UTC": the kind and upstream follow it.
    assert any(line.split()[3:5] == ["refusal", "state"] for line in blocks[3].splitlines()[2:])


async def _status(capsys: pytest.CaptureFixture[str], *arguments: str) -> subprocess.CompletedProcess[str]:
    """`mcpstore-proxy status ARGUMENTS`, run in this process (in a thread: the proxy serves on its own loop)."""
    returncode = await anyio.to_thread.run_sync(cli.main, ["status", *arguments])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["status", *arguments], returncode, captured.out, captured.err)


def test_status_without_a_url_asks_the_address_the_config_serves_and_says_when_nothing_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    config = write_config(tmp_path, {}, host="0.0.0.0", port=port, auth={"mode": "none"})
    assert cli.main(["status", "--config", str(config)]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"mcpstore-proxy: cannot reach the proxy at http://127.0.0.1:{port} (")
    assert line.endswith("is it running? (give its address with --url)")


def test_tracing_without_the_otel_extra_is_one_line_naming_the_install_command(tmp_path: Path) -> None:
    exporter = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    with contextlib.suppress(ModuleNotFoundError):
        if importlib.util.find_spec(exporter) is not None:
            pytest.skip(f"{exporter} is installed here, so the otel extra is not missing")
    config = write_raw(tmp_path, "tracing: true\nmcpServers: {}\n")
    for command in ("serve", "stdio"):
        completed = run_cli(command, "--config", str(config))
        assert completed.returncode == cli.EXIT_BAD_CONFIG, completed.stderr
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1, completed.stderr
        assert "tracing: true needs OpenTelemetry" in lines[0]
        assert 'pip install "mcpstore-proxy[otel]"' in lines[0]
