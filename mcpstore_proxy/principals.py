"""Who is asking: the principal behind a request, and what it may reach.

A principal is the identity a request proves (a bearer token mapped to a
name, or a JWT's claim), or, where nothing is proved, one of two stand-ins:
`LOCAL` (stdio and the embedded SDK: the operator's own process) and
`ANONYMOUS` (HTTP without `auth`, on loopback or with `auth: {mode: none}`).
Every session a principal opens is its own: session keys carry the principal,
so two principals naming the same session get two sessions.

Agent scopes are access boundaries: a principal reaches the store's scope and
the agents it is granted (`agents: ["*"]` grants every agent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["ANONYMOUS", "LOCAL", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    agents: frozenset[str] | None = None
    """The agent scopes granted; None grants every agent."""
    is_admin: bool = False

    def may_use_agent(self, agent: str) -> bool:
        """Whether this principal may act in `agent`'s scope (`""`, the store's, is everyone's)."""
        return not agent or self.agents is None or agent in self.agents

    def __str__(self) -> str:
        return f"principal '{self.name}'"


LOCAL: Final = Principal("local", None, is_admin=True)
"""The operator's own process: `mcpstore-proxy stdio` and the embedded SDK."""

ANONYMOUS: Final = Principal("anonymous", None, is_admin=False)
"""An HTTP client of a proxy without `auth`: on loopback, or with `auth: {mode: none}`."""
