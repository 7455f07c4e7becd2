"""bench/lifecycle.py's floods: each session cap (downstream sessions, sessions per upstream, named sessions per
client) refuses at once, naming itself, and leaves what exists working.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
from mcp import Client, MCPError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lifecycle_steps import Run, add_prompt, stop_proxy
from lifecycle_support import (
    Figures,
    RawSession,
    connect,
    describe,
    fixture,
    json_rpc_answer,
    ms,
    p50,
    running_proxy,
    short,
    spread_ms,
    structured,
    write_config,
)

from mcpstore_proxy.errors import SESSION_REFUSED

# 4. Floods: each session cap refuses at once, naming itself, and leaves what exists working.


async def floods(run: Run, figures: Figures) -> None:
    await downstream_flood(run, figures)
    await upstream_cap_flood(run, figures)
    await named_sessions_flood(run, figures)


async def downstream_flood(run: Run, figures: Figures) -> None:
    cap, extra_attempts, openers = 200, 50 if run.quick else 200, 8
    workdir = run.directory("floods-downstream")
    config = write_config(workdir, {"state": fixture("state")}, log_level="WARNING", max_downstream_sessions=cap)
    opened: list[RawSession] = []
    refusals: Counter[tuple[str, str]] = Counter()
    refusal_seconds: list[float] = []
    admitted_past_cap = 0

    def refusal(answer: httpx2.Response) -> str:
        try:
            error = json_rpc_answer(answer)["error"]
            return f"HTTP {answer.status_code}, {error['code']}: {short(error['message'])}"
        except (ValueError, KeyError):
            return f"HTTP {answer.status_code}: {short(answer.text)}"

    async with (
        running_proxy(config, workdir, upstreams_ready=["state"]) as proxy,
        httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_connections=64)) as http,
    ):
        full = anyio.Event()

        async def opener() -> None:
            while not full.is_set():
                session = RawSession(http, proxy.url)
                answer = await session.initialize()
                if session.session_id is not None:
                    opened.append(session)
                else:
                    refusals["while filling", refusal(answer)] += 1
                    full.set()

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(openers):
                tg.start_soon(opener)
        fill_seconds = time.perf_counter() - started
        for _ in range(extra_attempts):
            session = RawSession(http, proxy.url)
            asked = time.perf_counter()
            answer = await session.initialize()
            refusal_seconds.append(time.perf_counter() - asked)
            if session.session_id is not None:
                admitted_past_cap += 1
                opened.append(session)
            else:
                refusals["at the cap", refusal(answer)] += 1
        try:
            async with connect(proxy.url) as legitimate:
                structured(await legitimate.call_tool("state_echo", {"text": "let in"}))
            legitimate_outcome = "admitted"
        except Exception as error:  # noqa: BLE001  # the refusal is the figure, in whatever form the SDK raises it
            legitimate_outcome = f"refused: {short(describe(error))}"
        flood_session_works = "error" not in await opened[0].call_tool(1, "state_echo", {"text": "still here"})
        deleted = await opened[-1].delete()
        newcomer = RawSession(http, proxy.url)
        after_delete = (await newcomer.initialize()).status_code
        closing = await stop_proxy(proxy)

    figures.add("a: downstream cap (max_downstream_sessions)", cap)
    figures.add("a: time to fill (8 openers)", ms(fill_seconds))
    figures.check("a: sessions admitted", len(opened), cap)
    figures.check("a: admitted past the cap (later attempts)", admitted_past_cap, 0)
    for (phase, reason), count in sorted(refusals.items(), key=lambda item: item[0][0], reverse=True):
        expected = "503 naming max_downstream_sessions"
        is_expected = "503" in reason and "max_downstream_sessions" in reason
        figures.add(f"a: refusals {phase}: {count} x", reason, expected, is_expected)
    add_prompt(figures, f"a: refusal latency over {extra_attempts} more attempts (p50 / max)", refusal_seconds)
    figures.add("a: a different legitimate SDK client at the cap", legitimate_outcome, "refused (at the cap)")
    figures.check("a: a flood session still answers calls", flood_session_works, True)
    figures.add(
        "a: after one DELETE, a new initialize gets",
        f"HTTP {after_delete} (DELETE: {deleted})",
        "200",
        after_delete == 200,
    )
    closing.report(figures, f"a: with {len(opened)} sessions open, ")


@dataclass(frozen=True)
class Outcome:
    session: str
    seconds: float
    code: int | None
    message: str = ""


async def calls_in_parallel(session: Client, names: list[str], *, remember: bool = True) -> list[Outcome]:
    """Call `state_remember` (or `state_echo`) once per named session, all at once: each call's latency and error
    code (None if it answered)."""
    outcomes: list[Outcome] = []

    async def one(name: str) -> None:
        asked = time.perf_counter()
        tool, arguments = ("state_remember", {"value": name}) if remember else ("state_echo", {"text": name})
        try:
            structured(await session.call_tool(tool, {**arguments, "session_id": name}))
            outcomes.append(Outcome(name, time.perf_counter() - asked, None))
        except MCPError as error:
            outcomes.append(Outcome(name, time.perf_counter() - asked, error.code, error.message))
        except RuntimeError as error:  # the tool itself answered an error
            outcomes.append(Outcome(name, time.perf_counter() - asked, 0, str(error)))

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)
    return outcomes


async def keeping_their_state(session: Client, names: list[str]) -> int:
    """How many of the named sessions `calls_in_parallel` filled still recall exactly their own value."""
    kept = 0
    for name in names:
        recalled: list[str] = structured(await session.call_tool("state_recall", {"session_id": name}))
        kept += recalled == [name]
    return kept


def report_flood(figures: Figures, label: str, outcomes: list[Outcome], cap_name: str, admitted: int) -> None:
    succeeded = [o for o in outcomes if o.code is None]
    refused = [o for o in outcomes if o.code == SESSION_REFUSED and cap_name in o.message]
    other = [o for o in outcomes if o.code is not None and o not in refused]
    figures.check(f"{label}: succeeded", len(succeeded), admitted)
    figures.check(f"{label}: refused ({SESSION_REFUSED} naming {cap_name})", len(refused), len(outcomes) - admitted)
    figures.check(f"{label}: other errors", len(other), 0)
    if refused:
        figures.add(f"{label}: refusal message", short(refused[0].message))
    if other:
        figures.add(f"{label}: first other error", f"{other[0].code}: {short(other[0].message)}")
    add_prompt(figures, f"{label}: refusal latency (p50 / max)", [o.seconds for o in refused])
    figures.add(
        f"{label}: success latency, incl. upstream start (p50 / max)", spread_ms([o.seconds for o in succeeded])
    )


async def upstream_cap_flood(run: Run, figures: Figures) -> None:
    cap, names = 8, [f"flood-{index}" for index in range(40)]
    workdir = run.directory("floods-upstream")
    config = write_config(
        workdir,
        {"state": fixture("state")},
        log_level="WARNING",
        max_sessions_per_upstream=cap,
        max_named_sessions_per_client=100,
    )
    async with running_proxy(config, workdir, upstreams_ready=["state"]) as proxy:
        async with connect(proxy.url) as session:
            outcomes = await calls_in_parallel(session, names)
            survivors = [o.session for o in outcomes if o.code is None]
            still_working = await keeping_their_state(session, survivors)
            # Refusals with no upstream starting beside them, and the same load of calls that are served.
            second_wave = await calls_in_parallel(session, [f"late-{index}" for index in range(len(names))])
            reused = [survivors[i % len(survivors)] for i in range(len(names))] if survivors else []
            served = await calls_in_parallel(session, reused, remember=False)
        closing = await stop_proxy(proxy)
    figures.add("b: 40 session_id values at once, cap", f"max_sessions_per_upstream: {cap}")
    report_flood(figures, "b", outcomes, "max_sessions_per_upstream", cap)
    figures.check("b: admitted sessions keep their state after the flood", still_working, len(survivors))
    add_prompt(
        figures,
        f"b: {len(names)} more new ids at the full cap, refused (p50 / max)",
        [o.seconds for o in second_wave if o.code == SESSION_REFUSED],
    )
    figures.check("b: ... of which refused", sum(o.code == SESSION_REFUSED for o in second_wave), len(names))
    refused_p50 = p50([o.seconds for o in second_wave if o.code == SESSION_REFUSED])
    served_p50 = p50([o.seconds for o in served if o.code is None])
    figures.add(
        f"b: for scale, {len(names)} calls at once on admitted sessions (p50 / max)",
        spread_ms([o.seconds for o in served if o.code is None]),
    )
    figures.add(
        "b: refusal at the full cap / served call, p50 ratio",
        f"{refused_p50 / served_p50:.1f}x",
        "<= 2x",
        refused_p50 <= 2 * served_p50,
    )
    closing.report(figures, "b: ")


async def named_sessions_flood(run: Run, figures: Figures) -> None:
    cap, names = 4, [f"mine-{index}" for index in range(10)]
    workdir = run.directory("floods-named")
    config = write_config(workdir, {"state": fixture("state")}, log_level="WARNING", max_named_sessions_per_client=cap)
    async with running_proxy(config, workdir, upstreams_ready=["state"]) as proxy:
        async with connect(proxy.url) as session:
            outcomes = await calls_in_parallel(session, names)
            admitted = [o.session for o in outcomes if o.code is None]
            still_working = await keeping_their_state(session, admitted)
        async with connect(proxy.url) as other:
            other_client = await calls_in_parallel(other, names[:cap])
        closing = await stop_proxy(proxy)
    figures.add("c: one connection, 10 session ids, cap", f"max_named_sessions_per_client: {cap}")
    report_flood(figures, "c", outcomes, "max_named_sessions_per_client", cap)
    figures.check("c: its admitted sessions keep their state", still_working, len(admitted))
    figures.check(f"c: another connection opens its own {cap}", sum(o.code is None for o in other_client), cap)
    closing.report(figures, "c: ")
