"""bench/memory_profile.py's reading of what grew between two tracemalloc snapshots: each allocation owned by the
most recent frame of the proxy, the SDK, uvicorn or Starlette, summed per owner and per session."""

from __future__ import annotations

from bench.memory_profile import grouped, owner, report
from bench.proxy_overhead import ROOT

_SITE = ("/usr/lib/python3.11/asyncio/locks.py", 168)
_OURS = (str(ROOT / "mcpstore_proxy" / "engine.py"), 379)  # this checkout's
_SDK = ("/venv/lib/python3.11/site-packages/mcp/server/streamable_http.py", 1117)
_ROOT = (str(ROOT / "mcpstore_proxy" / "cli.py"), 59)


def test_an_allocation_is_owned_by_its_most_recent_frame_of_ours_or_a_dependency_we_name() -> None:
    assert owner([_SITE, _SDK, _OURS, _ROOT]) == _SDK  # the SDK's, made while ours called it
    assert owner([_SITE, _OURS, _SDK, _ROOT]) == _OURS
    assert owner([_SITE]) == _SITE  # nothing of ours on the stack: the site itself


def test_what_grew_is_summed_per_owner_and_per_session_and_what_shrank_is_left_out() -> None:
    grown = [([_SITE, _OURS, _ROOT], 2048), ([_SITE, _SDK, _ROOT], 1024), ([_SITE, _OURS], 2048), ([_SITE, _SDK], -512)]
    by_module, by_line = grouped(grown, sessions=2)
    assert by_module == {"mcpstore_proxy/engine.py": 2.0, "mcp/server/streamable_http.py": 0.5}
    assert by_line == {
        "`mcpstore_proxy/engine.py:379` (asyncio/locks.py:168)": 2.0,
        "`mcp/server/streamable_http.py:1117` (asyncio/locks.py:168)": 0.5,
    }
    printed = report(by_module, by_line, top=5)
    assert printed.startswith("2.5 KiB of Python objects per idle session")
    assert "| 2.00 | `mcpstore_proxy/engine.py` |" in printed


def test_a_profile_where_nothing_grew_says_so() -> None:
    assert report({}, {}, top=5) == "nothing grew between the two snapshots"
