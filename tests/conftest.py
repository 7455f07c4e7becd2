from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.support import REPORT

    if REPORT:
        terminalreporter.section("peer results")
        for line in REPORT:
            terminalreporter.write_line(line)
