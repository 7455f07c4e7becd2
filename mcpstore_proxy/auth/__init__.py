"""Inbound authentication: which principal an HTTP request proves, from its `Authorization: Bearer` token.

Two kinds of token verifier, behind one `Authenticator`: static tokens from
the config (`static_tokens`) and JWTs from an OAuth 2.1 authorization server
(`jwt_tokens`). The config's `admin_token`, where set, proves the admin
principal. What a verified JWT proves is cached (by the token's hash, until it
expires), so a signature is not checked again on every request.

Without `auth` (or with `auth: {mode: none}`) nothing is proved and every HTTP
client is `ANONYMOUS`; only the admin token still means something.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Final

from mcpstore_proxy.auth.jwt_tokens import JwtTokens
from mcpstore_proxy.auth.settings import AuthSettings
from mcpstore_proxy.auth.static_tokens import StaticTokens
from mcpstore_proxy.errors import AuthenticationError
from mcpstore_proxy.logs import ThrottledWarning
from mcpstore_proxy.principals import ANONYMOUS, Principal

__all__ = ["ADMIN", "Authenticator", "bearer_token"]

logger = logging.getLogger(__name__)

ADMIN: Final = Principal("admin", None, is_admin=True)
"""The principal the config's `admin_token` proves."""

_CACHED_PROOFS: Final = 10_000


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if that is what it holds."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Authenticator:
    """Turns a request's bearer token into the principal it proves."""

    def __init__(self, settings: AuthSettings | None, *, admin_token: str | None) -> None:
        self.is_on = settings is not None and settings.is_on
        self._admin_digest = hashlib.sha256(admin_token.encode()).digest() if admin_token else None
        self._static = StaticTokens(settings.tokens if settings is not None else [])
        self._jwt = JwtTokens(settings.jwt) if settings is not None and settings.jwt is not None else None
        self._proofs: dict[bytes, tuple[Principal, float]] = {}
        self._refusals = ThrottledWarning(logger)

    def __repr__(self) -> str:
        return f"<Authenticator {'on' if self.is_on else 'off'}, {len(self._proofs)} proofs cached>"

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal the request's `Authorization` header proves (`ANONYMOUS` when authentication is off).

        Raises:
            AuthenticationError: authentication is on and the header proves nothing.
        """
        proven = self.proven(authorization)
        if proven is not None:
            return proven
        token = bearer_token(authorization)
        assert token is not None  # `proven` refused a request without one
        principal, expires_at = await self._verify_jwt(token)
        if len(self._proofs) >= _CACHED_PROOFS:
            self._proofs.pop(next(iter(self._proofs)))
        self._proofs[hashlib.sha256(token.encode()).digest()] = (principal, expires_at)
        return principal

    def proven(self, authorization: str | None) -> Principal | None:
        """What `authenticate` would give, when that needs no JWT verified now (its proof is cached, or the
        header holds no JWT); else None. Without an `await`, for the requests of an established client.

        Raises:
            AuthenticationError: authentication is on and the header holds no bearer token.
        """
        token = bearer_token(authorization)
        if token is not None and self.is_admin_token(token):
            return ADMIN
        if not self.is_on:
            return ANONYMOUS
        if token is None:
            raise AuthenticationError("this proxy needs 'Authorization: Bearer <token>'", reason=None)
        principal = self._static.principal_for(token)
        if principal is not None:
            return principal
        cached = self._proofs.get(hashlib.sha256(token.encode()).digest())
        if cached is not None and cached[1] > time.time():
            return cached[0]
        return None

    def is_admin_token(self, token: str) -> bool:
        return self._admin_digest is not None and hmac.compare_digest(
            hashlib.sha256(token.encode()).digest(), self._admin_digest
        )

    async def _verify_jwt(self, token: str) -> tuple[Principal, float]:
        if self._jwt is None:
            self._refusals.warn("refused a request: its bearer token proves no principal")
            raise AuthenticationError("the bearer token is not valid", reason="invalid_token")
        try:
            return await self._jwt.principal_for(token)
        except AuthenticationError as error:
            self._refusals.warn("refused a request: %s", error.message)
            raise
