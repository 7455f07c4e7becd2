"""Static bearer tokens from the config, each proving one principal."""

from __future__ import annotations

import hashlib
import hmac

from mcpstore_proxy.auth.settings import TokenEntry
from mcpstore_proxy.principals import Principal

__all__ = ["StaticTokens"]


class StaticTokens:
    """Looks a presented token up by its hash; the hash is compared in constant time."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._principals: dict[bytes, Principal] = {
            _digest(entry.token): Principal(
                entry.principal,
                None if "*" in entry.agents else frozenset(entry.agents),
                is_admin=entry.admin,
            )
            for entry in entries
        }

    def __repr__(self) -> str:
        return f"<StaticTokens {len(self._principals)} tokens>"

    def principal_for(self, token: str) -> Principal | None:
        presented = _digest(token)
        found: Principal | None = None
        for digest, principal in self._principals.items():
            if hmac.compare_digest(digest, presented):
                found = principal
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
