"""Session keys (mcpstore_proxy/keys.py): which key a request belongs to, what a valid key or agent id is, and
that a key's name, a bearer secret, never shows in what logs and messages print."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from mcp.types import INVALID_PARAMS

from mcpstore_proxy.config import load_settings
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import InvalidSessionKeyError, SessionLimitError
from mcpstore_proxy.keys import MAX_KEY_LENGTH, STORE_SCOPE, SessionKey, checked_agent, resolve_session_key
from mcpstore_proxy.logs import fingerprint
from tests.clock import ManualClock
from tests.memory import MemoryUpstreams
from tests.support import fixture_server, write_config

_CONNECTION = SessionKey.connection("mcp-session-1")


def resolve(argument: Any = None, header: str | None = None, connection: SessionKey | None = None) -> SessionKey:
    return resolve_session_key(
        argument, header, connection, argument_name="session_id", header_name="X-MCPStore-Session"
    )


def test_the_argument_key_wins_over_the_header_and_the_connection() -> None:
    assert resolve("from-argument", "from-header", _CONNECTION) == SessionKey.explicit("from-argument")


def test_the_header_key_wins_over_the_connection() -> None:
    assert resolve(None, "from-header", _CONNECTION) == SessionKey.explicit("from-header")


def test_without_an_explicit_key_the_connection_is_the_key() -> None:
    assert resolve(None, None, _CONNECTION) is _CONNECTION


def test_without_any_key_each_request_gets_a_fresh_ephemeral_key() -> None:
    first, second = resolve(), resolve()
    assert first.is_ephemeral
    assert second.is_ephemeral
    assert first != second


def test_the_same_name_by_argument_or_by_header_is_the_same_session() -> None:
    assert resolve("plan") == resolve(None, "plan")
    assert resolve("plan").is_explicit


def test_an_explicit_key_named_after_a_connection_id_does_not_reach_that_connection() -> None:
    assert SessionKey.explicit("mcp-session-1") != _CONNECTION


def test_keys_of_the_same_name_in_different_agents_are_different_sessions() -> None:
    keys = {SessionKey.explicit("task"), SessionKey.explicit("task", "team_1"), SessionKey.explicit("task", "team_2")}
    assert len(keys) == 3
    resolved = resolve_session_key(
        "task", None, None, argument_name="session_id", header_name="X-MCPStore-Session", agent="team_1"
    )
    assert resolved == SessionKey.explicit("task", "team_1")
    assert resolve_session_key(None, None, None, argument_name="a", header_name="h", agent="team_1").agent == "team_1"


def test_a_key_of_exactly_the_maximum_length_is_accepted() -> None:
    assert resolve("k" * MAX_KEY_LENGTH).name == "k" * MAX_KEY_LENGTH


@pytest.mark.parametrize(
    "argument",
    [123, "", "k" * (MAX_KEY_LENGTH + 1), "line\nbreak", ["list"]],
    ids=["not-a-string", "empty", "too-long", "unprintable", "a-list"],
)
def test_a_malformed_argument_key_is_refused_naming_the_argument(argument: Any) -> None:
    with pytest.raises(InvalidSessionKeyError) as refused:
        resolve(argument, "a-good-header", _CONNECTION)
    assert refused.value.code == INVALID_PARAMS
    assert "the 'session_id' argument" in refused.value.message


@pytest.mark.parametrize("header", ["", "k" * (MAX_KEY_LENGTH + 1), "tab\there"], ids=["empty", "too-long", "tab"])
def test_a_malformed_header_key_is_refused_naming_the_header(header: str) -> None:
    with pytest.raises(InvalidSessionKeyError) as refused:
        resolve(None, header, _CONNECTION)
    assert refused.value.code == INVALID_PARAMS
    assert "X-MCPStore-Session header" in refused.value.message


def test_the_refusal_of_a_huge_key_does_not_echo_all_of_it() -> None:
    with pytest.raises(InvalidSessionKeyError) as refused:
        resolve("x" * 100_000)
    assert len(refused.value.message) < 400


def test_str_of_a_key_shows_a_hash_of_its_name_never_the_name() -> None:
    key = SessionKey.explicit("top-secret-task")
    assert "top-secret-task" not in str(key)
    assert fingerprint("top-secret-task") in str(key)
    assert str(key) == f"explicit session #{key.fingerprint}"
    assert "top-secret-task" not in str(SessionKey.connection("top-secret-task"))


def test_the_hash_tells_keys_apart_and_names_the_agent() -> None:
    assert SessionKey.explicit("one").fingerprint != SessionKey.explicit("two").fingerprint
    assert SessionKey.explicit("one").fingerprint == SessionKey.connection("one").fingerprint
    assert str(SessionKey.explicit("task", "team_1")).endswith(" of agent 'team_1'")


@pytest.mark.parametrize("agent", ["team_1", "a.b-c", "A" * 64, STORE_SCOPE])
def test_a_well_formed_agent_id_is_accepted_as_given(agent: str) -> None:
    assert checked_agent(agent) == agent


@pytest.mark.parametrize("agent", ["team 1", "a/b", "A" * 65, "ünïcode", "x\ny"])
def test_a_malformed_agent_id_is_refused_with_an_example(agent: str) -> None:
    with pytest.raises(InvalidSessionKeyError) as refused:
        checked_agent(agent)
    assert refused.value.code == INVALID_PARAMS
    assert "team_1" in refused.value.message


def test_an_agent_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidSessionKeyError):
        checked_agent("team_1\n")


@pytest.mark.anyio
async def test_the_engine_logs_name_a_session_by_its_hash_never_by_its_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = SessionKey.explicit("top-secret-task")
    upstreams = MemoryUpstreams()
    config = write_config(tmp_path, {"state": fixture_server("state", max_sessions=1)})
    async with ProxyEngine(load_settings(config), transports=upstreams, clock=ManualClock()) as engine:
        await engine.started()
        holder = SessionKey.explicit("holder")
        await engine.call_tool(holder, engine.tool_route(holder, "state_whoami"), {})
        with pytest.raises(SessionLimitError):
            await engine.call_tool(secret, engine.tool_route(secret, "state_whoami"), {})
    refusals = [record.getMessage() for record in caplog.records if "refused a new session" in record.getMessage()]
    assert refusals == [f"refused a new session with upstream 'state' for {secret}: its cap of 1 sessions is reached"]
    assert f"#{secret.fingerprint}" in refusals[0]
    assert "top-secret-task" not in caplog.text


def test_keys_equal_in_every_field_are_one_key_and_differ_in_any_field_otherwise() -> None:
    key = SessionKey.explicit("tab", "team_1", "alice")
    same = SessionKey.explicit("tab", "team_1", "alice")
    others = [
        SessionKey.connection("tab", "team_1", "alice"),
        SessionKey.explicit("other", "team_1", "alice"),
        SessionKey.explicit("tab", "team_2", "alice"),
        SessionKey.explicit("tab", "team_1", "bob"),
    ]

    assert key == same
    assert hash(key) == hash(same)
    assert {key: 1}[same] == 1
    assert all(key != other for other in others)
    assert len({key, same, *others}) == 5
    assert copy.deepcopy(key) == key
    assert hash(copy.deepcopy(key)) == hash(key)
    assert "_hash" not in repr(key)
