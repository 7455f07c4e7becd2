"""Approving a changed tool definition (mcpstore_proxy/pins.py behind the admin API, the CLI and the SDK), with
the proxy serving real clients: only operators may list or approve pins, an approval reaches the running proxy
without a restart, and an SDK call to a withheld tool says it changed rather than that it is unknown.

The upstream is the stateful fixture with `--mutable` (tests/pinning.py): its `mutate` tool changes `echo`;
`--mutated KIND` starts every instance changed. tests/test_pins.py covers the pins and the policy themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from mcp import MCPError

from mcpstore_proxy import cli
from mcpstore_proxy.errors import TOOL_CHANGED, PermissionDeniedError, ToolChangedError
from tests.conversation import structured
from tests.inprocess import running_app, sdk_store
from tests.pinning import ListChanges, mutable
from tests.support import admin, connect, write_config

pytestmark = pytest.mark.anyio


# Approving: the admin API and the command line, with the proxy serving real clients.


async def test_an_operator_approves_through_the_admin_api_and_clients_see_the_tool_again(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"state": mutable()}, tool_pinning="enforce")
    changes = ListChanges()
    async with running_app(config) as proxy, connect(proxy.url, message_handler=changes.on_message) as client:

        async def lists_echo() -> bool:
            return any(tool.name == "state_echo" for tool in (await client.list_tools()).tools)

        assert await lists_echo()
        await client.call_tool("state_mutate", {"kind": "annotations"})
        await changes.until(lambda: _negated(lists_echo))
        with pytest.raises(MCPError) as withheld:
            await client.call_tool("state_echo", {"text": "hi"})
        assert (withheld.value.code, withheld.value.error.data) == (TOOL_CHANGED, {"type": "ToolChangedError"})
        assert "annotations changed (destructiveHint unset→true)" in withheld.value.message

        listed = await admin(proxy.port, "GET", "/pins")
        assert listed.status_code == 200
        [pin] = [pin for pin in listed.json() if pin["tool"] == "state/echo"]
        assert (pin["exposed_name"], pin["state"], pin["changes"]) == (
            "state_echo",
            "changed",
            "annotations changed (destructiveHint unset→true)",
        )

        approved = await admin(proxy.port, "POST", "/pins/state_echo/approve")
        assert approved.status_code == 200
        assert (approved.json()["tool"], approved.json()["sha256"]) == ("state/echo", pin["pending_sha256"])
        await changes.until(lists_echo)
        [echo] = [tool for tool in (await client.list_tools()).tools if tool.name == "state_echo"]
        assert echo.annotations is not None
        assert echo.annotations.destructive_hint is True
        assert structured(await client.call_tool("state_echo", {"text": "back"})) == "back"

        unknown = await admin(proxy.port, "POST", "/pins/state/nothing/approve")
        assert (unknown.status_code, unknown.json()["error"]["type"]) == (404, "UnknownToolError")


async def test_only_operators_may_list_or_approve_pins(tmp_path: Path) -> None:
    tokens = [
        {"token": "operator-token-0123456789", "principal": "ops", "admin": True},
        {"token": "alice-token-0123456789ab", "principal": "alice"},
    ]
    config = write_config(tmp_path, {"state": mutable()}, auth={"tokens": tokens})
    async with running_app(config) as proxy:
        for method, path in (("GET", "/pins"), ("POST", "/pins/state_echo/approve")):
            refused = await admin(proxy.port, method, path, Authorization="Bearer alice-token-0123456789ab")
            assert (refused.status_code, refused.json()["error"]["type"]) == (403, PermissionDeniedError.__name__)
            allowed = await admin(proxy.port, method, path, Authorization="Bearer operator-token-0123456789")
            assert allowed.status_code == 200, allowed.text


async def test_an_approval_from_the_command_line_reaches_the_running_proxy_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "configure_logging", leave_logging_alone)
    config = write_config(tmp_path, {"state": mutable()}, tool_pinning="enforce")
    changes = ListChanges()
    async with running_app(config) as proxy, connect(proxy.url, message_handler=changes.on_message) as client:

        async def lists_echo() -> bool:
            return any(tool.name == "state_echo" for tool in (await client.list_tools()).tools)

        await client.call_tool("state_mutate", {"kind": "description"})
        await changes.until(lambda: _negated(lists_echo))
        capsys.readouterr()

        assert cli.main(["pins", "list", "--config", str(config)]) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()]
        assert rows[0] == ["TOOL", "EXPOSED", "AS", "STATE", "CHANGES"]
        assert ["state/echo", "state_echo", "changed", "description", "changed"] in rows
        assert ["state/whoami", "state_whoami", "approved"] in rows

        assert cli.main(["pins", "approve", "nothing", "--config", str(config)]) == cli.EXIT_FAILED
        assert "no pinned tool is called 'nothing'" in capsys.readouterr().err
        assert cli.main(["pins", "approve", "state_echo", "--config", str(config)]) == 0
        assert capsys.readouterr().out == "approved state/echo (state_echo): description changed\n"

        # The next call finds the approval on disk: no restart, no admin request.
        assert structured(await client.call_tool("state_echo", {"text": "approved"})) == "approved"
        await changes.until(lists_echo)
        assert cli.main(["pins", "approve", "state_echo", "--config", str(config)]) == 0
        assert capsys.readouterr().out == "state/echo (state_echo): no change awaits approval\n"


def leave_logging_alone(level: str, log_format: str = "text") -> None:
    """In place of `configure_logging`, which would take the root logger over from pytest."""


async def _negated(condition: Callable[[], Awaitable[bool]]) -> bool:
    return not await condition()


@pytest.mark.parametrize("mode", ["embedded", "remote"])
async def test_an_sdk_call_to_a_withheld_tool_says_it_changed_not_that_it_is_unknown(tmp_path: Path, mode: str) -> None:
    config = write_config(tmp_path, {"state": mutable()}, tool_pinning="enforce")
    async with sdk_store(config, mode) as first:
        assert structured(first.store.for_store().use_tool("echo", {"text": "pinned"})) == "pinned"
    config = write_config(tmp_path, {"state": mutable("state", "--mutated", "description")}, tool_pinning="enforce")
    async with sdk_store(config, mode) as second:
        with pytest.raises(ToolChangedError, match="description changed"):
            second.store.for_store().use_tool("echo", {"text": "changed"})
