"""Applying a changed config file to the running proxy, without a restart (`Reloader`), and watching the file
for changes (`watch_config_file`).

A reload reads and checks the file exactly as `serve` does at start. A file
that does not load is refused with the same one-line error as at start, logged
once, and the running config keeps serving. One that loads is compared with the
running settings and only the difference is applied:

- an upstream new in the file starts;
- one gone from the file (or disabled) leaves the catalog and takes no new
  calls at once, while its calls in flight get `shutdown_grace_seconds` to
  finish before it closes;
- one whose entry changed in any field starts afresh from its new entry, and
  the old one retires the same way; each client that held a session with the
  old one is warned on its next call that its state was reset;
- every other upstream, and every session with it, is left as it is.

Services added at run time (the admin API's, the SDK's) are not the file's, so a
reload never removes them; a file that names one of them is refused. Of the
global options, `LIVE_OPTIONS` apply at once; any other that changed is named in
one warning and in the result as needing a restart, and keeps its running
value until then. Reloads run one at a time, and none once the proxy drains.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import anyio
import anyio.to_thread
import watchfiles
from pydantic import BaseModel

from mcpstore_proxy.config import ProxySettings, reload_settings
from mcpstore_proxy.errors import ConfigError, ProxyError, ShuttingDownError

if TYPE_CHECKING:
    from mcpstore_proxy.engine import ProxyEngine

__all__ = ["LIVE_OPTIONS", "ReloadResult", "Reloader", "Trigger", "reload_in_background", "watch_config_file"]

logger = logging.getLogger(__name__)

Trigger = Literal["signal", "admin", "watch"]
"""What asked for a reload: SIGHUP, `POST /admin/reload`, or the file watcher (`watch_config`)."""

LIVE_OPTIONS: Final = frozenset({"log_level", "shutdown_grace_seconds"})
"""The global options a reload applies at once; every other one needs a restart."""

_DEBOUNCE_MILLISECONDS: Final = 300
"""How long the watcher lets a burst of changes (an editor's save: write, rename, chmod) settle."""


class ReloadResult(BaseModel):
    """What a reload did, by upstream name, and which global options wait for a restart."""

    added: list[str]
    removed: list[str]
    restarted: list[str]
    unchanged: list[str]
    needs_restart: list[str]

    def summary(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (("added", self.added), ("removed", self.removed), ("restarted", self.restarted))
            if names
        ]
        return "; ".join(parts) or "no upstream changed"


class Reloader:
    """Reloads the engine's config file and applies the difference (see the module's docstring)."""

    def __init__(self, engine: ProxyEngine, load: Callable[[], ProxySettings] | None = None) -> None:
        self._engine = engine
        self._load = load or partial(reload_settings, engine.settings)
        self._lock = anyio.Lock()
        self._refusal: str | None = None

    def __repr__(self) -> str:
        state = "refusing" if self._refusal else "reloading" if self._lock.locked() else "ready"
        return f"<Reloader {state}>"

    def refuse_from_now(self, why: str) -> None:
        """Refuse every later reload, saying why: the proxy `why` ("is shutting down")."""
        self._refusal = why

    async def reload(self, trigger: Trigger) -> ReloadResult:
        """Read the config file again and apply what changed, once any reload under way has finished.

        Raises:
            ConfigError: the file does not load (the same message as at start); nothing was changed.
            ShuttingDownError: the proxy is draining.
        """
        async with self._lock:
            if self._refusal is not None:
                logger.warning("reload refused (%s): the proxy %s", trigger, self._refusal)
                self._engine.events.record("reload", reason=self._refusal, trigger=trigger, outcome="refused")
                raise ShuttingDownError(f"mcpstore-proxy {self._refusal} and takes no reload")
            try:
                _refuse_a_blank_file(self._engine.settings.config_path)
                settings = await anyio.to_thread.run_sync(self._load)
                self._check_names(settings)
            except ConfigError as error:
                # As `serve` reports it at start, so that the same mistake reads the same either way.
                logger.error("config error: %s (reload refused; the running config stays)", error.message)
                self._engine.events.record("reload", reason=error.message, trigger=trigger, outcome="refused")
                raise
            result = self._apply(settings)
        logger.info("reloaded the config (%s): %s", trigger, result.summary())
        if result.needs_restart:
            logger.warning(
                "the config changes %s, which take effect only when the proxy restarts",
                ", ".join(result.needs_restart),
            )
        self._engine.events.record("reload", reason=result.summary(), trigger=trigger, outcome="applied")
        return result

    def _check_names(self, settings: ProxySettings) -> None:
        """Raises ConfigError when an upstream new in the file has the name of a service added at run time."""
        for name in settings.enabled_servers.keys() - self._engine.settings.enabled_servers.keys():
            self._engine.registry.check_config_name(name)

    def _apply(self, settings: ProxySettings) -> ReloadResult:
        """Apply the difference between the running settings and `settings` (synchronously: it is never cut short
        halfway)."""
        engine = self._engine
        running = engine.settings
        before, after = running.enabled_servers, settings.enabled_servers
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        restarted = sorted(name for name in before.keys() & after.keys() if before[name] != after[name])
        unchanged = sorted(name for name in before.keys() & after.keys() if before[name] == after[name])
        changed_options = [
            option
            for option in ProxySettings.model_fields
            if option != "mcp_servers" and getattr(running, option) != getattr(settings, option)
        ]
        live = {option: getattr(settings, option) for option in changed_options if option in LIVE_OPTIONS}
        engine.settings = running.model_copy(update={"mcp_servers": settings.mcp_servers, **live})
        for name in removed:
            engine.retire_configured_service(name, "it was removed from the config file")
        for name in restarted:
            engine.replace_configured_service(name, after[name], "its entry in the config file changed")
        for name in added:
            engine.add_configured_service(name, after[name])
        if "log_level" in live:
            logging.getLogger().setLevel(settings.log_level)
        return ReloadResult(
            added=added,
            removed=removed,
            restarted=restarted,
            unchanged=unchanged,
            needs_restart=[option for option in changed_options if option not in LIVE_OPTIONS],
        )


async def watch_config_file(path: Path, reloader: Reloader) -> None:
    """Reload whenever the content of the config file at `path` changes, until cancelled (an owner task: it
    never raises).

    The directory is watched, not the file: editors save by writing a new file and renaming it over the old one,
    and a Kubernetes ConfigMap swaps a symlink; either way it is the content that tells whether the file changed.
    """
    last = _fingerprint(path)
    stopped = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_once_cancelled, stopped)
            changes = watchfiles.awatch(  # pyright: ignore[reportUnknownMemberType]  # stop_event names trio's Event
                path.parent, watch_filter=None, debounce=_DEBOUNCE_MILLISECONDS, recursive=False, stop_event=stopped
            )
            async for _ in changes:
                current = _fingerprint(path)
                if current is None or current == last:
                    continue  # another file, or ours mid-replace: its next event brings the new content
                last = current
                await reload_in_background(reloader, "watch")
    except Exception:  # the boundary: a broken watcher must not take the proxy down
        logger.exception("stopped watching %s for changes (reload with SIGHUP or POST /admin/reload)", path)


async def reload_in_background(reloader: Reloader, trigger: Trigger) -> None:
    """Reload for a long-lived task (the signal watcher, the file watcher): it never raises, so that a failed
    reload cannot end the task group that runs the proxy."""
    try:
        await reloader.reload(trigger)
    except ProxyError:
        pass  # logged by the reload; the running config stays
    except Exception:  # the boundary: an unforeseen failure is logged, and the proxy serves on
        logger.exception("the reload (%s) failed", trigger)


async def _set_once_cancelled(event: anyio.Event) -> None:
    """Set `event` when cancelled. The watcher waits for changes in a thread that a cancellation does not reach;
    it looks at its stop event every few milliseconds, but left alone it would hold the shutdown for 5 seconds."""
    try:
        await anyio.sleep_forever()
    finally:
        event.set()


def _refuse_a_blank_file(path: Path | None) -> None:
    """Raises ConfigError for an empty config file: most likely one an editor has truncated and not yet written
    again, and applied it would remove every upstream."""
    try:
        blank = path is not None and path.read_bytes().strip() == b""
    except OSError:
        return  # the loader says what is wrong with it
    if blank:
        raise ConfigError(f"{path} is empty (still being written?); to remove every upstream, write 'mcpServers: {{}}'")


def _fingerprint(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
