"""The tests' own process helpers (`tests/support.py`): what a test starts, it stops."""

from __future__ import annotations

import sys

import anyio
import pytest

from tests.support import is_alive, stop_pid

pytestmark = pytest.mark.anyio

_IGNORES_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


async def test_stop_pid_kills_a_process_that_ignores_sigterm_once_its_grace_is_over() -> None:
    async with await anyio.open_process([sys.executable, "-c", _IGNORES_SIGTERM]) as process:
        assert process.stdout is not None
        assert (await process.stdout.receive()).startswith(b"ready")
        await stop_pid(process.pid, what="the stubborn child", grace_seconds=0.5)
        assert not is_alive(process.pid)
        await process.wait()
        assert process.returncode == -9


async def test_stop_pid_lets_a_process_that_honours_sigterm_exit_by_it() -> None:
    async with await anyio.open_process(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(600)"]
    ) as process:
        assert process.stdout is not None
        assert (await process.stdout.receive()).startswith(b"ready")
        await stop_pid(process.pid, what="the child")
        await process.wait()
        assert process.returncode == -15
