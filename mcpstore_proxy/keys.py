"""Session keys: which persistent upstream sessions a request belongs to.

A request's key is resolved in this order:

1. an explicit key in the tool's `session_id` argument,
2. an explicit key in the `X-MCPStore-Session` header,
3. the downstream connection itself (its `Mcp-Session-Id`, or the stdio pipe),
4. otherwise an ephemeral key, used for one call and then closed.

Explicit keys and connection keys live in separate namespaces, so naming an
explicit key after someone's `Mcp-Session-Id` does not reach their session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal

from mcpstore_proxy.errors import InvalidSessionKeyError

__all__ = ["MAX_KEY_LENGTH", "SessionKey", "resolve_session_key"]

MAX_KEY_LENGTH: Final = 256

KeyKind = Literal["explicit", "connection", "ephemeral"]


@dataclass(frozen=True, slots=True)
class SessionKey:
    kind: KeyKind
    name: str

    @classmethod
    def explicit(cls, name: str) -> SessionKey:
        return cls("explicit", name)

    @classmethod
    def connection(cls, connection_id: str) -> SessionKey:
        return cls("connection", connection_id)

    @classmethod
    def ephemeral(cls) -> SessionKey:
        return cls("ephemeral", secrets.token_hex(8))

    @property
    def is_explicit(self) -> bool:
        return self.kind == "explicit"

    @property
    def is_ephemeral(self) -> bool:
        return self.kind == "ephemeral"

    def __str__(self) -> str:
        return f"{self.kind} session '{self.name}'"


def resolve_session_key(
    argument: Any, header: str | None, connection: SessionKey | None, *, argument_name: str, header_name: str
) -> SessionKey:
    """Pick the key for one request: argument, then header, then connection, else ephemeral.

    Raises:
        InvalidSessionKeyError: an explicit key is not a non-empty string of at most 256 characters.
    """
    if argument is not None:
        return SessionKey.explicit(_checked(argument, f"the '{argument_name}' argument"))
    if header is not None:
        return SessionKey.explicit(_checked(header, f"the {header_name} header"))
    if connection is not None:
        return connection
    return SessionKey.ephemeral()


def _checked(value: Any, source: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH or not value.isprintable():
        raise InvalidSessionKeyError(
            f"{source} must be a printable string of 1 to {MAX_KEY_LENGTH} characters naming a session, "
            f"got {value!r:.80}"
        )
    return value
