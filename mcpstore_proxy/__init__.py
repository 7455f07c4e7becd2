"""mcpstore-proxy: one MCP endpoint over many upstream MCP servers, with a persistent session per client."""

from mcpstore_proxy.__about__ import __version__
from mcpstore_proxy.config import ProxySettings, UpstreamConfig, load_settings
from mcpstore_proxy.engine import ProxyEngine, UpstreamStatus
from mcpstore_proxy.errors import (
    ConfigError,
    InvalidSessionKeyError,
    NameCollisionError,
    ProxyError,
    SessionClosedError,
    SessionError,
    SessionLimitError,
    UnknownToolError,
    UpstreamClosedError,
    UpstreamError,
    UpstreamStartError,
    UpstreamTimeoutError,
)
from mcpstore_proxy.keys import SessionKey

__all__ = [
    "ConfigError",
    "InvalidSessionKeyError",
    "NameCollisionError",
    "ProxyEngine",
    "ProxyError",
    "ProxySettings",
    "SessionClosedError",
    "SessionError",
    "SessionKey",
    "SessionLimitError",
    "UnknownToolError",
    "UpstreamClosedError",
    "UpstreamConfig",
    "UpstreamError",
    "UpstreamStartError",
    "UpstreamStatus",
    "UpstreamTimeoutError",
    "__version__",
    "load_settings",
]
