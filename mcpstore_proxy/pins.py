"""Tool-definition pinning: each tool definition the proxy exposes is pinned when first seen, and a changed one is
reported, and withheld under `enforce`, until an operator approves it.

Fingerprints. A tool's definition is its name, title, description, input schema, output schema and annotations
in wire form; its fingerprint is the sha256 of that definition as canonical JSON (sorted keys, no spaces). Pins
are keyed by upstream and the upstream's own tool name: `"upstream/tool"`.

Policy, `tool_pinning` (global, and per upstream under `mcpServers.<name>`):

- `off`: nothing is pinned or checked;
- `warn` (the default): a tool seen for the first time is pinned without a word; a definition that differs from
  its pin is logged once at WARNING with a summary of what changed (`tool_changes`), and exposed;
- `enforce`: as `warn`, but the changed tool is withheld: it is left out of `tools/list`, and a call to it
  fails with `ToolChangedError`, which names the tool, what changed, and how to approve it.

A change is seen whenever a catalog is built from what an upstream lists: after its `list_changed`, at its
(re)start, or after it rejected a call with INVALID_PARAMS (the engine then has it list its tools again). The
pin keeps the approved definition; the changed one waits in the pin as `pending`, reported once (a different
change is reported again), until approving it (`mcpstore-proxy pins approve NAME`, or
`POST /admin/pins/{name}/approve`) makes it the pin.

The file. Pins live in a JSON file (`tool_pins_file`; by default `<config stem>.tool-pins.json` beside the
config; in memory only when there is no config file), written atomically. Every change re-reads the file
first when it changed on disk, so the CLI and a running proxy can both write it; a running proxy picks up an
approval made by the CLI when it next builds a catalog, and when a client asks for a tool while some change
awaits approval. A file that cannot be read stops the start (`ConfigError`): ignoring it would pin every
changed tool afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from mcp import types
from pydantic import BaseModel, Field, ValidationError

from mcpstore_proxy.catalog import exposed_name
from mcpstore_proxy.config import ToolPinning, describe_validation_error
from mcpstore_proxy.errors import AmbiguousToolError, ConfigError, UnknownToolError
from mcpstore_proxy.events import EventLog
from mcpstore_proxy.persistence import write_atomically
from mcpstore_proxy.tool_changes import describe_changes

__all__ = ["Approval", "PinInfo", "Screened", "ToolPins", "definition_of", "fingerprint_of"]

logger = logging.getLogger(__name__)

Definition = dict[str, Any]
"""What a pin covers of a tool, in wire form."""

_DEFINITION_FIELDS: Final = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def definition_of(tool: types.Tool) -> Definition:
    """The parts of `tool` a pin covers, in wire form (camelCase; unset fields left out)."""
    wire = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {name: wire[name] for name in _DEFINITION_FIELDS if name in wire}


def fingerprint_of(definition: Definition) -> str:
    """The sha256 of `definition` as canonical JSON."""
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# The pins, and the file that keeps them.


class _Pending(BaseModel):
    sha256: str
    definition: Definition
    changes: str
    """What it changes from the pinned definition (`describe_changes`)."""


class _Pin(BaseModel):
    exposed_name: str
    """The name clients knew it by, when it was last seen."""
    sha256: str
    definition: Definition
    pending: _Pending | None = None
    """A changed definition, seen and reported, awaiting approval."""


class _PinFile(BaseModel):
    version: Literal[1] = 1
    tools: dict[str, _Pin] = Field(default_factory=dict[str, _Pin])


class PinInfo(BaseModel):
    """One pinned tool, as `GET /admin/pins` and `mcpstore-proxy pins list` show it."""

    tool: str
    """`upstream/tool`."""
    upstream: str
    exposed_name: str
    sha256: str
    """The approved definition's fingerprint."""
    state: Literal["approved", "changed"]
    changes: str | None = None
    """What the changed definition awaiting approval changes."""
    pending_sha256: str | None = None


class Approval(BaseModel):
    """What `approve` did."""

    tool: str
    exposed_name: str
    sha256: str
    """The fingerprint now approved."""
    changes: str | None
    """What the approved definition changed; None when it had no change to approve."""


@dataclass(frozen=True, slots=True)
class Screened:
    """One upstream's tools after the pins: those to expose, and those withheld, each with why."""

    exposed: list[types.Tool]
    withheld: dict[str, str]
    """The upstream's tool name → the `ToolChangedError` message a call to it gets."""


class ToolPins:
    """The pin of every tool definition exposed, the file that keeps them, and the policy that applies them."""

    def __init__(self, path: Path | None, *, mode: ToolPinning, events: EventLog | None = None) -> None:
        """Raises ConfigError: the file at `path` exists but cannot be read as pins."""
        self.path = path
        self._events = events if events is not None else EventLog()
        self.mode: ToolPinning = mode
        self.awaits_approval = False
        """Whether some changed definition awaits approval (then an approval on disk is looked for per call)."""
        self._stamp_seen: tuple[int, int, int] | None = None
        self._has_warned_save = False
        self._file = self._read()
        self._stamp_seen = self._stamp()
        self._recount()

    def __repr__(self) -> str:
        changed = sum(1 for pin in self._file.tools.values() if pin.pending is not None)
        return f"<ToolPins {len(self._file.tools)} pinned, {changed} changed, in {self.path or 'memory'}>"

    def screen(self, upstream: str, prefix: str, mode: ToolPinning | None, tools: Sequence[types.Tool]) -> Screened:
        """`upstream`'s `tools` checked against their pins, under `mode` (None: the global one). Pins each tool
        seen for the first time, and records and reports each new change once."""
        effective: ToolPinning = mode or self.mode
        if effective == "off" or not tools:
            return Screened(list(tools), {})
        self.reload_if_changed()
        exposed: list[types.Tool] = []
        withheld: dict[str, str] = {}
        is_modified = False
        for tool in tools:
            key, name = f"{upstream}/{tool.name}", exposed_name(prefix, tool.name)
            definition = definition_of(tool)
            digest = fingerprint_of(definition)
            pin = self._file.tools.get(key)
            if pin is None:
                self._file.tools[key] = _Pin(exposed_name=name, sha256=digest, definition=definition)
                is_modified = True
            elif pin.exposed_name != name:
                pin.exposed_name, is_modified = name, True
            if pin is None or pin.sha256 == digest:
                exposed.append(tool)
                continue
            if pin.pending is None or pin.pending.sha256 != digest:
                changes = describe_changes(pin.definition, definition)
                pin.pending, is_modified = _Pending(sha256=digest, definition=definition, changes=changes), True
                _report(key, name, changes, effective)
                action = "withheld" if effective == "enforce" else "changed"
                self._events.record("pinning", upstream=upstream, reason=f"tool '{name}': {changes}", action=action)
            if effective == "enforce":
                withheld[tool.name] = _withheld_message(key, name, pin.pending.changes)
            else:
                exposed.append(tool)
        if is_modified:
            self._save()
        return Screened(exposed, withheld)

    def approve(self, name: str) -> Approval:
        """Make the changed definition of the tool `name` (`upstream/tool`, or its exposed name) its pin.

        Raises:
            UnknownToolError: no pinned tool is called `name`.
            AmbiguousToolError: the exposed name is several upstreams' (approve one as `upstream/tool`).
        """
        self.reload_if_changed()
        key = self._key_of(name)
        pin = self._file.tools[key]
        pending, changes = pin.pending, None
        if pending is not None:
            pin.sha256, pin.definition, pin.pending, changes = pending.sha256, pending.definition, None, pending.changes
            self._save()
            logger.info("tool '%s' (%s): its changed definition is approved (%s)", pin.exposed_name, key, changes)
            upstream = key.partition("/")[0]
            self._events.record(
                "pinning", upstream=upstream, reason=f"tool '{pin.exposed_name}' approved", action="approved"
            )
        return Approval(tool=key, exposed_name=pin.exposed_name, sha256=pin.sha256, changes=changes)

    def infos(self) -> list[PinInfo]:
        """Every pinned tool, by `upstream/tool`."""
        self.reload_if_changed()
        return [
            PinInfo(
                tool=key,
                upstream=key.partition("/")[0],
                exposed_name=pin.exposed_name,
                sha256=pin.sha256,
                state="approved" if pin.pending is None else "changed",
                changes=pin.pending.changes if pin.pending is not None else None,
                pending_sha256=pin.pending.sha256 if pin.pending is not None else None,
            )
            for key, pin in sorted(self._file.tools.items())
        ]

    def reload_if_changed(self) -> bool:
        """Read the file again if it changed on disk since this process last read or wrote it (another process,
        such as `mcpstore-proxy pins approve`, wrote it); whether the pins changed."""
        stamp = self._stamp()
        if self.path is None or stamp == self._stamp_seen:
            return False
        self._stamp_seen = stamp
        try:
            pins = self._read()
        except ConfigError as error:
            logger.warning("%s; the proxy keeps the pins it read before", error.message)
            return False
        is_changed = pins != self._file
        self._file = pins
        self._recount()
        return is_changed

    def _key_of(self, name: str) -> str:
        if name in self._file.tools:
            return name
        matches = sorted(key for key, pin in self._file.tools.items() if pin.exposed_name == name)
        changed = [key for key in matches if self._file.tools[key].pending is not None]
        if len(matches) == 1 or len(changed) == 1:
            return (changed or matches)[0]
        if matches:
            raise AmbiguousToolError(f"{name!r} names several pinned tools ({', '.join(matches)}); approve one of them")
        raise UnknownToolError(
            f"no pinned tool is called {name!r}; `mcpstore-proxy pins list` (or GET /admin/pins) shows them"
        )

    def _stamp(self) -> tuple[int, int, int] | None:
        """The file's inode, size and modification time: an atomic write changes at least the inode."""
        if self.path is None:
            return None
        try:
            status = self.path.stat()
        except OSError:
            return None
        return (status.st_ino, status.st_size, status.st_mtime_ns)

    def _read(self) -> _PinFile:
        if self.path is None:
            return _PinFile()
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _PinFile()
        except OSError as error:
            raise ConfigError(f"{self.path}: cannot read the tool pins: {error}") from None
        try:
            return _PinFile.model_validate_json(text)
        except ValidationError as error:
            raise ConfigError(
                f"{self.path}: is not a tool pins file ({describe_validation_error(error)}); "
                "fix it, or remove it to pin every tool afresh"
            ) from None

    def _save(self) -> None:
        self._recount()
        if self.path is None:
            return
        document = json.dumps(self._file.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False)
        try:
            write_atomically(self.path, document + "\n")
        except OSError as error:
            if not self._has_warned_save:
                self._has_warned_save = True
                logger.warning("cannot save the tool pins to %s (%s); they are kept in memory only", self.path, error)
            return
        self._stamp_seen = self._stamp()

    def _recount(self) -> None:
        self.awaits_approval = any(pin.pending is not None for pin in self._file.tools.values())


def _report(key: str, name: str, changes: str, mode: ToolPinning) -> None:
    consequence = (
        f"it is withheld until approved (mcpstore-proxy pins approve {key}, or POST /admin/pins/{key}/approve)"
        if mode == "enforce"
        else f"the new definition is exposed (tool_pinning: warn); approve it with: mcpstore-proxy pins approve {key}"
    )
    logger.warning("tool '%s' (%s) changed since it was approved: %s; %s", name, key, changes, consequence)


def _withheld_message(key: str, name: str, changes: str) -> str:
    return (
        f"tool '{name}' is withheld: its definition changed since it was approved ({changes}); review the change, "
        f"then approve it with `mcpstore-proxy pins approve {key}` or POST /admin/pins/{key}/approve"
    )
