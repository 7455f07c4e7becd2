from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["embedded", "remote"])
def mode(request: pytest.FixtureRequest) -> str:
    """The SDK's two modes, for tests that run in both: the engine in this process, or a running proxy."""
    return str(request.param)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """Local test pages (tests/browser.py's PAGES) served on 127.0.0.1; the site's base URL."""
    from tests.browser import serving_pages

    with serving_pages(tmp_path / "site") as url:
        yield url


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker, hand the lines for the summary to the controller, which prints them."""
    from tests.support import REPORT

    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["report"] = list(REPORT)


def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's controller: collect what a finished worker reported."""
    from tests.support import REPORT

    REPORT.extend(getattr(node, "workeroutput", {}).get("report", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.support import REPORT

    if REPORT:
        terminalreporter.section("peer results")
        for line in REPORT:
            terminalreporter.write_line(line)
