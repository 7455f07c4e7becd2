"""The proxy's configuration: one file, overridable from the environment, read as people already have it.

Precedence, highest first: explicit overrides (command-line flags), `MCPSTORE_PROXY_*` environment variables, the
file. The models are in `settings`, the reading of the file in `config_files`, and the check that a config does not
start this proxy on itself in `self_reference`.

What the file says but the proxy cannot use is named once in a warning: a top-level key of a
JSON file that is not a proxy option, a client-only server key, a disabled server. What is
wrong is one `ConfigError` that lists every problem, each with its location and the fix: a
bad entry, an unset variable or input, and a server that would run this proxy on itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

from mcpstore_proxy.config_files import CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH, ConfigFile
from mcpstore_proxy.errors import ConfigError
from mcpstore_proxy.self_reference import find_self_references
from mcpstore_proxy.settings import ProxySettings, ToolPinning, UpstreamConfig, describe_validation_error, is_valid_name

__all__ = [
    "CONFIG_PATH_ENV",
    "DEFAULT_CONFIG_PATH",
    "ProxySettings",
    "ToolPinning",
    "UpstreamConfig",
    "describe_validation_error",
    "is_valid_name",
    "load_settings",
    "reload_settings",
]

logger = logging.getLogger(__name__)


def load_settings(path: Path | None = None, *, serving: bool = False, **overrides: Any) -> ProxySettings:
    """Load the config file at `path` (default: $MCPSTORE_PROXY_CONFIG, then config/proxy.yaml); `serving` says the
    settings are for `serve`, which listens on `host:port`, so that an upstream URL at that address is refused.

    Raises:
        ConfigError: the file is missing, unreadable, or wrong; the message names the file and, for each
            problem, its location and the fix.
    """
    config_path = _resolve_path(path)
    file = ConfigFile(config_path)
    data = file.read()

    class _LoadedSettings(ProxySettings):
        load_arguments: ClassVar[tuple[Path, bool, dict[str, Any]]] = (config_path, serving, overrides)

        def model_post_init(self, context: Any, /) -> None:
            super().model_post_init(context)
            self._config_path = config_path

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=data))

    problems = list(file.problems)
    try:
        settings = _LoadedSettings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        # What an unresolved variable's `${…}` text breaks is no news.
        problems += [
            problem
            for problem in file.validation_problems(error)
            if not (problem.location[:2] in file.unexpanded and "${" in problem.message)
        ]
        raise ConfigError(file.describe(problems)) from None
    except ValueError as error:  # a malformed MCPSTORE_PROXY_* variable
        raise ConfigError(f"{config_path}: {error}") from None
    problems += find_self_references(settings, file, serving=serving)
    if problems:
        raise ConfigError(file.describe(problems))
    for warning in file.warnings:
        logger.warning("%s", warning)
    return settings


def reload_settings(settings: ProxySettings) -> ProxySettings:
    """Load the file `settings` came from again, as it was loaded then (the same overrides, for `serve` or not).

    Raises:
        ConfigError: as `load_settings`; or `settings` did not come from a file.
    """
    arguments: tuple[Path, bool, dict[str, Any]] | None = getattr(type(settings), "load_arguments", None)
    if arguments is None:
        raise ConfigError("these settings were not loaded from a config file, so there is no file to reload")
    path, serving, overrides = arguments
    return load_settings(path, serving=serving, **overrides)


def _resolve_path(path: Path | None) -> Path:
    if path is None:
        from_env = os.environ.get(CONFIG_PATH_ENV)
        path = Path(from_env) if from_env else DEFAULT_CONFIG_PATH
    if not path.is_file():
        raise ConfigError(
            f"config file '{path}' not found (pass --config PATH, or set {CONFIG_PATH_ENV}, "
            "or run from the project folder that holds config/proxy.yaml)"
        )
    return path
