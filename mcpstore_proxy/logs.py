"""Logging: the format, no session id ever in clear, and refusals that a flood cannot turn into a flood of lines.

Session ids are bearer secrets. Our own log lines name a session by
`SessionKey`, whose text is a short hash; the `mcp` SDK's lines carry raw
Streamable HTTP and SSE session ids, which `RedactSessionIds` replaces with
the same short hash, so a line from either side can be matched to the other.

`log_format: json` writes each line as one JSON object (`JsonFormatter`):
`time` (ISO 8601, UTC), `level`, `logger`, `event` (the message), then, where
the line knows them, `upstream`, `principal`, `session` (the short hash),
`duration_ms`, and `error` (the exception's or failure's text). A call site attaches those
with `extra=log_fields(upstream=..., key=...)`; the text format shows only
the message, which names them already.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, Protocol

__all__ = [
    "JsonFormatter",
    "RedactSessionIds",
    "StderrHandler",
    "ThrottledWarning",
    "configure_logging",
    "fingerprint",
    "log_fields",
]

_SESSION_ID: Final = re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b")
_REDACTED_LOGGERS: Final = ("mcp.", "uvicorn")
_FIELDS: Final = ("upstream", "principal", "session", "duration_ms", "error")
"""What a line may carry beyond its message, in `extra` (see `log_fields`)."""

LogFormat = Literal["text", "json"]


def fingerprint(secret: str) -> str:
    """A short hash of a session id or name: enough to tell sessions apart in a log, useless for taking one."""
    return hashlib.sha256(secret.encode()).hexdigest()[:10]


def redacted(text: str) -> str:
    """`text` with every session id (a UUID, hex or dashed) replaced by `#<fingerprint>`."""
    return _SESSION_ID.sub(lambda match: f"#{fingerprint(match.group(0))}", text)


class RedactSessionIds(logging.Filter):
    """Replaces session ids (UUIDs, hex or dashed) in the SDK's and uvicorn's lines with `#<fingerprint>`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_REDACTED_LOGGERS):
            message = record.getMessage()
            clean = redacted(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


class _Keyed(Protocol):
    """A session key, as `log_fields` reads it (`keys.SessionKey`)."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def principal(self) -> str: ...


def log_fields(
    *,
    upstream: str | None = None,
    key: _Keyed | None = None,
    principal: str | None = None,
    duration_seconds: float | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The `extra` of a log line about `upstream` and the session `key` (its short hash and its principal), and
    the `error` it reports."""
    fields: dict[str, Any] = {"upstream": upstream}
    if key is not None:
        fields["session"] = f"#{key.fingerprint}"
        fields["principal"] = key.principal
    if principal is not None:
        fields["principal"] = principal
    if duration_seconds is not None:
        fields["duration_ms"] = round(duration_seconds * 1000, 1)
    if error is not None:
        fields["error"] = error
    return {name: value for name, value in fields.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time`, `level`, `logger`, `event`, and the `log_fields` the line carries."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in _FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info is not None and record.exc_info[1] is not None:
            error = record.exc_info[1]
            # An exception's text may quote a session id (the SDK's, a transport's): it is redacted like a message.
            line["error"] = redacted(f"{type(error).__name__}: {error}")
            line["traceback"] = redacted(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class StderrHandler(logging.Handler):
    """Writes each record to `sys.stderr` as it is when the record is written, not when logging was configured: a
    host (or a test) that replaces stderr later still gets the lines, and a stream it closed is never written to."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001  # logging's contract: a record that cannot be written is reported, not raised
            self.handleError(record)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log to stderr (stdout may be the MCP channel), as text or JSON lines, with session ids redacted."""
    handler = StderrHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSessionIds())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # One line per upstream HTTP request is per-call noise at INFO; its failures still show.
    if level != "DEBUG":
        logging.getLogger("httpx2").setLevel(logging.WARNING)


class ThrottledWarning:
    """A warning that is logged at once, then at most once per `interval_seconds` with a count of the ones held
    back, so that a flood of refusals stays a handful of lines."""

    def __init__(
        self, logger: logging.Logger, interval_seconds: float = 10.0, now: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval_seconds = interval_seconds
        self._now = now
        self._last = -float("inf")
        self._held_back = 0

    def warn(self, message: str, *args: Any, extra: Mapping[str, Any] | None = None) -> None:
        now = self._now()
        if now - self._last < self._interval_seconds:
            self._held_back += 1
            return
        if self._held_back:
            message += f" (and {self._held_back} more like it in the last {self._interval_seconds:g} s)"
        self._logger.warning(message, *args, extra=extra)
        self._last, self._held_back = now, 0
