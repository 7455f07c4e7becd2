"""The calls in flight on one upstream service, so that a reload can retire it gently.

Every call that a service runs is counted in its `CallsInFlight` (`with calls:`). `stop_taking()` (a reload
withdrawing the service) refuses every new call with an `UpstreamStoppedError` that says why, and waits, up to a
grace period on the engine's clock, until the calls in flight have finished; the service then closes, which fails
those still running with the same reason. It is the per-upstream counterpart of `drain.Drain`, which does the same
for the whole proxy at shutdown, but cancels what outlives its grace period.
"""

from __future__ import annotations

import logging

import anyio

from mcpstore_proxy.clock import Clock
from mcpstore_proxy.errors import UpstreamStoppedError
from mcpstore_proxy.outstanding import Outstanding

__all__ = ["CallsInFlight"]

logger = logging.getLogger(__name__)


class CallsInFlight:
    """The calls running on one upstream, and whether it still takes new ones."""

    def __init__(self, upstream: str, clock: Clock) -> None:
        self.upstream = upstream
        self._clock = clock
        self._calls = Outstanding()
        self._refused_because: str | None = None

    def __repr__(self) -> str:
        taking = f"taking none ({self._refused_because})" if self._refused_because is not None else "open"
        return f"<CallsInFlight {self.upstream}: {len(self._calls)}, {taking}>"

    def __len__(self) -> int:
        return len(self._calls)

    def __enter__(self) -> None:
        """Run one call as work in flight (`with calls:`).

        Raises:
            UpstreamStoppedError: the upstream takes no new calls (`stop_taking`).
        """
        if self._refused_because is not None:
            raise UpstreamStoppedError(
                self.upstream,
                f"upstream '{self.upstream}' takes no new calls: {self._refused_because}",
                was_sent=False,
            )
        self._calls.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._calls.__exit__()

    async def stop_taking(self, grace_seconds: float, reason: str) -> None:
        """Refuse new calls, saying `reason`, and wait up to `grace_seconds` for those in flight to finish."""
        self._refused_because = reason
        if not self._calls:
            return
        logger.info(
            "upstream '%s': waiting up to %g s for %d calls in flight before closing it (%s)",
            self.upstream,
            grace_seconds,
            len(self._calls),
            reason,
        )
        async with anyio.create_task_group() as tg:

            async def end_of_grace() -> None:
                await self._clock.sleep(grace_seconds)
                tg.cancel_scope.cancel()

            tg.start_soon(end_of_grace)
            await self._calls.none_left()
            tg.cancel_scope.cancel()
