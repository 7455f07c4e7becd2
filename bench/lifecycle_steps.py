"""What every scenario of bench/lifecycle.py shares: the run it belongs to, tallies of concurrent outcomes, how a
proxy ended, and the figures that say a failure or refusal was prompt.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lifecycle_support import (
    Figures,
    Proxy,
    describe,
    ms,
    short,
    spread_ms,
)

PROMPT_SECONDS = 5.0
"""What counts as "at once" for a refusal or a failure: the bugs this guards against took 20 to 65 s, and on a
shared 2-core machine running the test suite beside us even an instant answer can take a second."""


@dataclass(frozen=True)
class Run:
    workdir: Path
    quick: bool
    churn_seconds: float

    def directory(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(exist_ok=True)
        return path


@dataclass
class Tally:
    """Outcomes counted by many concurrent clients."""

    calls: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list[str])

    def error(self, error: BaseException) -> None:
        self.errors += 1
        if len(self.samples) < 3:
            self.samples.append(describe(error))


@dataclass(frozen=True)
class Closing:
    """How a proxy ended: its exit code, the processes it left, the tracebacks it logged."""

    code: int
    seconds: float
    left: list[int]
    tracebacks: int

    def report(self, figures: Figures, prefix: str = "") -> None:
        figures.add(f"{prefix}proxy SIGTERM to exit", ms(self.seconds))
        figures.check(f"{prefix}proxy exit code", self.code, 0)
        figures.check(f"{prefix}processes left after the proxy stopped", len(self.left), 0)
        figures.check(f"{prefix}tracebacks in the proxy's log", self.tracebacks, 0)


async def stop_proxy(proxy: Proxy) -> Closing:
    """SIGTERM the proxy, wait for it, and see what it left behind."""
    asked = time.perf_counter()
    code = await proxy.stop()
    seconds = time.perf_counter() - asked
    return Closing(code, seconds, await proxy.leftovers(), proxy.log.count("Traceback"))


def add_prompt(figures: Figures, name: str, seconds: list[float]) -> None:
    """Durations (p50 / max) that must all be prompt."""
    expected = f"max < {PROMPT_SECONDS:g} s"
    figures.add(name, spread_ms(seconds), expected, bool(seconds) and max(seconds) < PROMPT_SECONDS)


def add_error_samples(figures: Figures, tally: Tally) -> None:
    for sample in tally.samples:
        figures.add("error sample", short(sample))
