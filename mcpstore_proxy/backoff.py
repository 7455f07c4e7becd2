"""The delay before trying again after a failure: 1 s, doubling on each failure in a row, up to 60 s.

Shared by a service's catalog-session retries and a warm pool's refills after a crash loop, so both back off alike.
"""

from __future__ import annotations

from typing import Final

__all__ = ["Backoff"]

_FIRST_SECONDS: Final = 1.0
_MOST_SECONDS: Final = 60.0


class Backoff:
    """The delay of the last failure in a row (0 before any), and the next one."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __repr__(self) -> str:
        return f"<Backoff {self.seconds:g} s>"

    def next(self) -> float:
        """Another failure: the delay it waits (1 s, then double the last, at most 60 s)."""
        self.seconds = min(self.seconds * 2, _MOST_SECONDS) or _FIRST_SECONDS
        return self.seconds

    def reset(self) -> None:
        """A success: the next failure waits 1 s again."""
        self.seconds = 0.0
