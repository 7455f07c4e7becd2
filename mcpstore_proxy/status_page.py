"""The operator's status report (`status.status_report`, which `/admin/status` returns as JSON) rendered for people:
the status page at `/status`, and plain aligned text for `mcpstore-proxy status`.

The page is server-rendered HTML that refreshes itself every 5 seconds and loads nothing else (no script, no
external asset, no build step). It reads on a phone: a viewport, type that scales, and tables that scroll sideways
in their own box rather than widen the page. Every value from the report is escaped, since upstream names,
errors and reasons may carry text an upstream chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any, Final

__all__ = ["REFRESH_SECONDS", "aligned", "render_html", "render_text"]

REFRESH_SECONDS: Final = 5

_UPSTREAM_COLUMNS: Final = ("Upstream", "State", "Transport", "Mode", "Tools", "Sessions", "Warm pool", "Last error")
_SESSION_COLUMNS: Final = ("Session", "Kind", "Principal", "Agent", "State", "Age", "Idle", "Calls")
_EVENT_COLUMNS: Final = ("Time", "Kind", "Upstream", "Session", "Principal", "Reason")

_STYLE: Final = """
:root { color-scheme: light dark; --line: #8884; --muted: #888; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; padding: 12px;
       max-width: 1100px; }
h1 { font-size: 1.3em; margin: 0 0 4px; } h2 { font-size: 1.1em; margin: 22px 0 6px; }
h3 { font-size: 1em; margin: 14px 0 4px; }
.summary, .empty { color: var(--muted); margin: 0 0 8px; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: .93em; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); white-space: nowrap;
         vertical-align: top; }
td.wrap { white-space: normal; min-width: 12em; overflow-wrap: anywhere; }
tr:last-child td { border-bottom: none; }
th { font-weight: 600; background: #8881; }
.state { font-weight: 600; }
.ready, .ok { color: #1a7f37; } .failed, .draining { color: #cf222e; }
.starting, .restarting, .closing { color: #9a6700; } .stopped { color: var(--muted); }
code { font-size: .95em; }
@media (max-width: 600px) { body { padding: 8px; font-size: 14px; } th, td { padding: 5px 7px; } }
"""


def render_html(report: dict[str, Any]) -> str:
    """The status page for `report`."""
    upstreams: dict[str, Any] = report["upstreams"]
    sessions = sum(len(upstream["clients"]) for upstream in upstreams.values())
    summary = (
        f'<span class="state {_e(report["status"])}">{_e(report["status"])}</span> · '
        f"{len(upstreams)} upstreams · {sessions} client sessions · "
        f"{_e(report['requests_in_flight'])} requests in flight · as of {_e(_time(report['time']))}, "
        f"refreshed every {REFRESH_SECONDS} s"
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        "<title>mcpstore-proxy status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>mcpstore-proxy status</h1>",
        f'<p class="summary">{summary}</p>',
        "<h2>Upstreams</h2>",
        _html_table(_UPSTREAM_COLUMNS, [_upstream_cells(name, upstream) for name, upstream in upstreams.items()])
        if upstreams
        else '<p class="empty">No upstreams.</p>',
        "<h2>Sessions</h2>",
        *(_html_sessions(name, upstream) for name, upstream in upstreams.items()),
        "<h2>Recent resets and refusals</h2>",
        _html_table(_EVENT_COLUMNS, [_event_cells(event) for event in report["events"]])
        if report["events"]
        else '<p class="empty">None recorded.</p>',
        "</body></html>",
    ]
    return "\n".join(parts)


def render_text(report: dict[str, Any], source: str) -> str:
    """The same report as plain text for a terminal; `source` says where it was read."""
    upstreams: dict[str, Any] = report["upstreams"]
    blocks = [
        f"mcpstore-proxy at {source}: {report['status']}, {report['requests_in_flight']} requests in flight "
        f"(as of {_time(report['time'])})",
        aligned(
            [tuple(column.upper() for column in _UPSTREAM_COLUMNS)]
            + [_upstream_cells(name, upstream) for name, upstream in upstreams.items()]
        )
        if upstreams
        else "no upstreams",
    ]
    session_rows = [
        (name, *_session_cells(client)) for name, upstream in upstreams.items() for client in upstream["clients"]
    ]
    blocks.append(
        "SESSIONS\n" + aligned([("UPSTREAM", *(column.upper() for column in _SESSION_COLUMNS)), *session_rows])
        if session_rows
        else "no client sessions"
    )
    blocks.append(
        "RECENT RESETS AND REFUSALS\n"
        + aligned(
            [tuple(column.upper() for column in _EVENT_COLUMNS)] + [_event_cells(event) for event in report["events"]]
        )
        if report["events"]
        else "no resets or refusals recorded"
    )
    return "\n\n".join(blocks)


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last one runs free."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        ("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]).rstrip()
        for row in rows
    )


# Cells: the same words on the page and in the terminal.


def _upstream_cells(name: str, upstream: dict[str, Any]) -> tuple[str, ...]:
    pool = upstream.get("warm_pool")
    shared = upstream["session_mode"] == "shared"
    return (
        name,
        str(upstream["state"]),
        str(upstream["transport"]),
        str(upstream["session_mode"]),
        str(upstream["tools"]),
        "one, shared" if shared else str(upstream["sessions"]),
        f"{pool['ready']}/{pool['target']} ready" if pool else "",
        "; ".join(str(part) for part in (upstream["error"], upstream["detail"]) if part),
    )


def _session_cells(client: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(client["session"]),
        str(client["kind"]),
        str(client["principal"]),
        str(client["agent"] or ""),
        str(client["state"]),
        _duration(client["age_seconds"]),
        "busy" if client["calls_in_flight"] else _duration(client["idle_seconds"]),
        str(client["calls_in_flight"]),
    )


def _event_cells(event: dict[str, Any]) -> tuple[str, ...]:
    labels = ", ".join(f"{name}={value}" for name, value in sorted(event["labels"].items()))
    reason = f"{event['reason']} ({labels})" if labels and event["reason"] else event["reason"] or labels
    return (
        _time(event["at"]),
        str(event["kind"]),
        str(event["upstream"] or ""),
        str(event["session"] or ""),
        str(event["principal"] or ""),
        str(reason),
    )


def _time(iso: str) -> str:
    """`2027-01-15T08:00:00+00:00` as `2027-01-15 08:00:00 UTC`."""
    return iso.replace("T", " ").replace("+00:00", " UTC")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


# HTML.


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _html_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(column)}</th>" for column in columns)
    body = "".join(
        "<tr>" + "".join(_html_cell(column, cell) for column, cell in zip(columns, row, strict=True)) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_cell(column: str, cell: str) -> str:
    if column == "State":
        return f'<td class="state {_e(cell)}">{_e(cell)}</td>'
    if column in ("Last error", "Reason"):
        return f'<td class="wrap">{_e(cell)}</td>'
    if column == "Session":
        return f'<td class="wrap"><code>{_e(cell)}</code></td>'
    return f"<td>{_e(cell)}</td>"


def _html_sessions(name: str, upstream: dict[str, Any]) -> str:
    heading = f"<h3>{_e(name)}</h3>"
    if upstream["session_mode"] == "shared":
        return f'{heading}<p class="empty">Shared: one upstream session serves every client.</p>'
    clients: list[dict[str, Any]] = upstream["clients"]
    if not clients:
        return f'{heading}<p class="empty">No client sessions.</p>'
    return heading + _html_table(_SESSION_COLUMNS, [_session_cells(client) for client in clients])
