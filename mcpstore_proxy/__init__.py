"""mcpstore-proxy: one MCP endpoint over many upstream MCP servers, with a persistent session per client."""

from mcpstore_proxy.__about__ import __version__
from mcpstore_proxy.config import ProxySettings, UpstreamConfig, load_settings
from mcpstore_proxy.control import ServiceInfo, SessionInfo, ToolInfo
from mcpstore_proxy.engine import ProxyEngine
from mcpstore_proxy.errors import (
    AmbiguousToolError,
    ConfigError,
    InvalidSessionKeyError,
    NameCollisionError,
    ProxyError,
    SessionClosedError,
    SessionError,
    SessionLimitError,
    ToolError,
    UnknownPromptError,
    UnknownResourceError,
    UnknownServiceError,
    UnknownToolError,
    UpstreamClosedError,
    UpstreamError,
    UpstreamStartError,
    UpstreamTimeoutError,
)
from mcpstore_proxy.keys import SessionKey
from mcpstore_proxy.session import Session
from mcpstore_proxy.store import MCPStore, StoreContext

__all__ = [
    "AmbiguousToolError",
    "ConfigError",
    "InvalidSessionKeyError",
    "MCPStore",
    "NameCollisionError",
    "ProxyEngine",
    "ProxyError",
    "ProxySettings",
    "ServiceInfo",
    "Session",
    "SessionClosedError",
    "SessionError",
    "SessionInfo",
    "SessionKey",
    "SessionLimitError",
    "StoreContext",
    "ToolError",
    "ToolInfo",
    "UnknownPromptError",
    "UnknownResourceError",
    "UnknownServiceError",
    "UnknownToolError",
    "UpstreamClosedError",
    "UpstreamConfig",
    "UpstreamError",
    "UpstreamStartError",
    "UpstreamTimeoutError",
    "__version__",
    "load_settings",
]
