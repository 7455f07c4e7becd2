"""Services added at run time, kept in a JSON file beside the config so they survive a restart.

The file maps each scope to its services' `mcpServers` entries, each marked
with how it was added (`added_through`: `api`, the admin API, whose entries
are checked against the config's current rules again on every restore; or
`sdk`, the operator's own process):

    {"store": {"browser": {"url": "http://127.0.0.1:8931/sse", "added_through": "api"}},
     "agents": {"team_1": {"search": {"url": "http://127.0.0.1:9000/mcp", "added_through": "api"}}}}

Writes are atomic: the new content goes to a temporary file in the same folder,
is flushed to disk, and then replaces the old file in one rename. A crash at any
point leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from mcpstore_proxy.errors import ConfigError

__all__ = ["ORIGIN_KEY", "RuntimeServices", "write_atomically"]

logger = logging.getLogger(__name__)

Entries = dict[str, dict[str, Any]]
"""Service name → its `mcpServers` entry, with `ORIGIN_KEY`."""

ORIGIN_KEY = "added_through"
"""How a saved service was added: "api" or "sdk"; an entry without it (an older file) counts as "api"."""


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old content or the new, never a mix."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself must reach the disk too
    finally:
        os.close(directory)


class RuntimeServices:
    """The services added at run time, per scope (`""` is the store; others are agent ids)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._scopes: dict[str, Entries] = {}

    def __repr__(self) -> str:
        count = sum(len(entries) for entries in self._scopes.values())
        return f"<RuntimeServices {count} services in {self.path or 'memory'}>"

    def load(self) -> dict[str, Entries]:
        """Read the file (a missing file is empty)."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"{self.path}: cannot read the services added at run time: {error} "
                "(fix or remove the file; it is rewritten on the next change)"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}: expected a JSON object with 'store' and 'agents'")
        document = cast(dict[str, Any], data)
        scopes: dict[str, Entries] = {"": dict(document.get("store") or {})}
        for agent, entries in cast(dict[str, Entries], document.get("agents") or {}).items():
            scopes[agent] = dict(entries)
        self._scopes = {scope: entries for scope, entries in scopes.items() if entries}
        return {scope: dict(entries) for scope, entries in self._scopes.items()}

    def put(self, scope: str, name: str, entry: Mapping[str, Any], *, origin: str) -> None:
        self._scopes.setdefault(scope, {})[name] = {**entry, ORIGIN_KEY: origin}
        self._save()

    def remove(self, scope: str, name: str) -> None:
        entries = self._scopes.get(scope, {})
        if entries.pop(name, None) is not None:
            if not entries:
                self._scopes.pop(scope, None)
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        document = {
            "store": self._scopes.get("", {}),
            "agents": {scope: entries for scope, entries in sorted(self._scopes.items()) if scope},
        }
        write_atomically(self.path, json.dumps(document, indent=2, sort_keys=True) + "\n")
        logger.debug("saved the services added at run time to %s", self.path)
