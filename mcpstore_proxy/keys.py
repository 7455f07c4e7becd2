"""Session keys: which persistent upstream sessions a request belongs to.

A request's key is resolved in this order:

1. an explicit key in the tool's `session_id` argument,
2. an explicit key in the `X-MCPStore-Session` header,
3. the downstream connection itself (its `Mcp-Session-Id`, or the stdio pipe),
4. otherwise an ephemeral key, used for one call and then closed.

Explicit keys and connection keys live in separate namespaces, so naming an
explicit key after someone's `Mcp-Session-Id` does not reach their session.
A key's name is a bearer secret: `str(key)` (what logs and messages show) gives
a short hash of it, never the name itself.
Every key belongs to an agent scope (`""` is the store's own scope) and to a
principal: agent A's session "task" and agent B's are different sessions, and
so are principal alice's "task" and principal bob's. With `session_scope:
principal`, a principal's connections and sessionless requests share one
session of its own (`SessionKey.for_principal`).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from mcpstore_proxy.errors import InvalidSessionKeyError
from mcpstore_proxy.logs import fingerprint
from mcpstore_proxy.principals import LOCAL

__all__ = ["MAX_KEY_LENGTH", "STORE_SCOPE", "SessionKey", "checked_agent", "resolve_session_key"]

MAX_KEY_LENGTH: Final = 256
STORE_SCOPE: Final = ""
"""The agent id of the store's own scope (`for_store()`), as opposed to `for_agent(id)`."""

_AGENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

KeyKind = Literal["explicit", "connection", "principal", "ephemeral"]


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Which sessions a request belongs to: its kind and name, within an agent scope, for a principal."""

    kind: KeyKind
    name: str
    agent: str = STORE_SCOPE
    principal: str = LOCAL.name
    _hash: int = field(init=False, repr=False, compare=False)
    """Worked out once: a key is looked up in several dicts per request, and a dataclass hashes a new tuple of
    its fields each time."""
    is_explicit: bool = field(init=False, repr=False, compare=False)
    """Named by its client (a `session_id` argument or the session header). This and the two below are worked out
    once, as attributes: each request reads them."""
    is_named: bool = field(init=False, repr=False, compare=False)
    """Whether the session outlives connections, and so is recorded and expires when idle."""
    is_ephemeral: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kind = self.kind
        object.__setattr__(self, "_hash", hash((kind, self.name, self.agent, self.principal)))
        object.__setattr__(self, "is_explicit", kind == "explicit")
        object.__setattr__(self, "is_named", kind in ("explicit", "principal"))
        object.__setattr__(self, "is_ephemeral", kind == "ephemeral")

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[SessionKey], tuple[str, str, str, str]]:
        return SessionKey, (self.kind, self.name, self.agent, self.principal)  # a copy hashes in its own process

    @classmethod
    def explicit(cls, name: str, agent: str = STORE_SCOPE, principal: str = LOCAL.name) -> SessionKey:
        return cls("explicit", name, agent, principal)

    @classmethod
    def connection(cls, connection_id: str, agent: str = STORE_SCOPE, principal: str = LOCAL.name) -> SessionKey:
        return cls("connection", connection_id, agent, principal)

    @classmethod
    def ephemeral(cls, agent: str = STORE_SCOPE, principal: str = LOCAL.name) -> SessionKey:
        return cls("ephemeral", secrets.token_hex(8), agent, principal)

    def for_principal(self) -> SessionKey:
        """The principal's own default session in this agent scope (`session_scope: principal`)."""
        return SessionKey("principal", self.principal, self.agent, self.principal)

    @property
    def fingerprint(self) -> str:
        """A short hash of the name: enough to tell keys apart in a log, useless for taking one over."""
        return fingerprint(self.name)

    def __str__(self) -> str:
        scope = f" of agent '{self.agent}'" if self.agent else ""
        owner = f" for principal '{self.principal}'" if self.principal != LOCAL.name else ""
        return f"{self.kind} session #{self.fingerprint}{scope}{owner}"


def checked_agent(agent: str) -> str:
    """An agent id as given, once it is known to be well formed.

    Raises:
        InvalidSessionKeyError: it is not 1 to 64 letters, digits, '_', '.' or '-'.
    """
    if agent != STORE_SCOPE and not _AGENT_ID.fullmatch(agent):
        raise InvalidSessionKeyError(
            f"agent id {agent!r:.80} must be 1 to 64 letters, digits, '_', '.' or '-' (for example 'team_1')"
        )
    return agent


def resolve_session_key(
    argument: Any,
    header: str | None,
    connection: SessionKey | None,
    *,
    argument_name: str,
    header_name: str,
    agent: str = STORE_SCOPE,
    principal: str = LOCAL.name,
) -> SessionKey:
    """Pick the key for one request: argument, then header, then connection, else ephemeral.

    Raises:
        InvalidSessionKeyError: an explicit key is not a non-empty string of at most 256 characters.
    """
    if argument is not None:
        name = checked_session_name(argument, f"the '{argument_name}' argument")
        return SessionKey.explicit(name, agent, principal)
    if header is not None:
        return SessionKey.explicit(checked_session_name(header, f"the {header_name} header"), agent, principal)
    if connection is not None:
        return connection
    return SessionKey.ephemeral(agent, principal)


def checked_session_name(value: Any, source: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH or not value.isprintable():
        raise InvalidSessionKeyError(
            f"{source} must be a printable string of 1 to {MAX_KEY_LENGTH} characters naming a session, "
            f"got {value!r:.80}"
        )
    return value
