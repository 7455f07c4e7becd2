"""Logging: the format, no session id ever in clear, and refusals that a flood cannot turn into a flood of lines.

Session ids are bearer secrets. Our own log lines name a session by
`SessionKey`, whose text is a short hash; the `mcp` SDK's lines carry raw
Streamable HTTP and SSE session ids, which `RedactSessionIds` replaces with
the same short hash, so a line from either side can be matched to the other.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import time
from typing import Any, Final

__all__ = ["RedactSessionIds", "ThrottledWarning", "configure_logging", "fingerprint"]

_SESSION_ID: Final = re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b")
_REDACTED_LOGGERS: Final = ("mcp.", "uvicorn")


def fingerprint(secret: str) -> str:
    """A short hash of a session id or name: enough to tell sessions apart in a log, useless for taking one."""
    return hashlib.sha256(secret.encode()).hexdigest()[:10]


class RedactSessionIds(logging.Filter):
    """Replaces session ids (UUIDs, hex or dashed) in the SDK's and uvicorn's lines with `#<fingerprint>`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_REDACTED_LOGGERS):
            message = record.getMessage()
            redacted = _SESSION_ID.sub(lambda match: f"#{fingerprint(match.group(0))}", message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def configure_logging(level: str) -> None:
    """Log to stderr (stdout may be the MCP channel), with session ids redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSessionIds())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # One line per upstream HTTP request is per-call noise at INFO; its failures still show.
    if level != "DEBUG":
        logging.getLogger("httpx2").setLevel(logging.WARNING)


class ThrottledWarning:
    """A warning that is logged at once, then at most once per `interval_seconds` with a count of the ones held
    back, so that a flood of refusals stays a handful of lines."""

    def __init__(self, logger: logging.Logger, interval_seconds: float = 10.0) -> None:
        self._logger = logger
        self._interval_seconds = interval_seconds
        self._last = -float("inf")
        self._held_back = 0

    def warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_seconds:
            self._held_back += 1
            return
        if self._held_back:
            message += f" (and {self._held_back} more like it in the last {self._interval_seconds:g} s)"
        self._logger.warning(message, *args)
        self._last, self._held_back = now, 0
