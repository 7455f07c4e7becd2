"""The proxy's lifecycle under stress, through the real `mcpstore-proxy serve` (and `stdio`) process and real MCP
clients: isolation between many clients, upstreams SIGKILLed mid-call, a connect/call/disconnect soak, floods
against each session cap, start-up beside a hanging upstream, and shutdown with calls in flight.

    .venv/bin/python bench/lifecycle.py [all|isolation|kill|churn|floods|startup|shutdown] [--quick]
        [--churn-seconds 120] [--json [PATH]] [--keep-logs]

Each scenario runs its own proxy on 127.0.0.1 with tests/fixtures/stateful_server.py as its upstream, prints
its figures as it ends, and every figure appears again in one summary table at the end. A figure with an
expectation carries a verdict (ok or FAIL); timings are meant to be read as ratios and orders of magnitude,
since this machine is shared. Every process a scenario starts is killed by pid when it ends, however it ends.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lifecycle_floods import floods
from lifecycle_sessions import churn, isolation, kill
from lifecycle_start_stop import shutdown, startup
from lifecycle_steps import Run
from lifecycle_support import (
    ROOT,
    Figures,
    describe,
    short,
    table,
)

SCENARIOS: dict[str, Callable[[Run, Figures], Awaitable[None]]] = {
    "isolation": isolation,
    "kill": kill,
    "churn": churn,
    "floods": floods,
    "startup": startup,
    "shutdown": shutdown,
}


async def run_scenarios(names: list[str], run: Run) -> tuple[list[Figures], str | None]:
    """Run the scenarios in turn; a SIGINT or SIGTERM stops the one running (which cleans up what it started).
    Returns their figures, and the signal that stopped them, if one did."""
    everything: list[Figures] = []
    stopped_by: str | None = None
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            nonlocal stopped_by
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    stopped_by = signal.Signals(signum).name
                    print(f"{stopped_by}: stopping, cleaning up", file=sys.stderr, flush=True)
                    tg.cancel_scope.cancel()

        tg.start_soon(stop_on_signal)
        for name in names:
            figures = Figures(name)
            everything.append(figures)
            started = time.perf_counter()
            print(f"== {name}", file=sys.stderr, flush=True)
            try:
                await SCENARIOS[name](run, figures)
            except Exception as error:  # noqa: BLE001  # one failed scenario is reported; the others still run
                traceback.print_exc()
                figures.add("scenario failed", short(describe(error), 160), "no failure", False)
            finally:
                figures.add("scenario wall time", f"{time.perf_counter() - started:.1f} s")
                print(table(figures.rows), end="\n\n", file=sys.stderr, flush=True)
        tg.cancel_scope.cancel()
    return everything, stopped_by


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="all", choices=["all", *SCENARIOS])
    parser.add_argument("--quick", action="store_true", help="smaller counts and a 20 s soak (about 90 s in all)")
    parser.add_argument("--churn-seconds", type=float, default=120.0, help="length of the churn soak")
    parser.add_argument("--json", nargs="?", type=Path, const=ROOT / "bench" / "results" / "lifecycle.json")
    parser.add_argument("--keep-logs", action="store_true", help="keep the proxies' logs and configs")
    arguments = parser.parse_args()

    names = list(SCENARIOS) if arguments.scenario == "all" else [arguments.scenario]
    workdir = Path(tempfile.mkdtemp(prefix="mcpstore-lifecycle-"))
    began = time.perf_counter()
    try:
        everything, stopped_by = await run_scenarios(names, Run(workdir, arguments.quick, arguments.churn_seconds))
    finally:
        if arguments.keep_logs:
            print(f"logs and configs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = [row for figures in everything for row in figures.rows]
    failed = [row for row in rows if row.ok is False]
    mode = "quick" if arguments.quick else "default"
    seconds = time.perf_counter() - began
    ending = f", stopped by {stopped_by}" if stopped_by else ""
    print(f"## mcpstore-proxy lifecycle ({mode} run, {seconds:.0f} s, {len(failed)} FAIL{ending})\n")
    print(table(rows))
    if arguments.json is not None:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "mode": mode,
            "seconds": round(seconds, 1),
            "failed": len(failed),
            "stopped_by": stopped_by,
            "figures": [asdict(r) for r in rows],
        }
        arguments.json.write_text(json.dumps(summary, indent=2))
        print(f"\nfigures written to {arguments.json}", file=sys.stderr)
    if failed or stopped_by:
        sys.exit(1)


if __name__ == "__main__":
    anyio.run(main)
