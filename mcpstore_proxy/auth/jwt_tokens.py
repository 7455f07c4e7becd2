"""JWT access tokens from an OAuth 2.1 authorization server: the proxy as a resource server.

A token is accepted only when its signature verifies with one of the issuer's
published keys (JWKS) under an asymmetric algorithm the config allows and
the key's type matches (so `alg: none`, and an HMAC "signed" with a public
key, are refused), and it names the configured issuer and audience (the RFC
8707 resource), and `exp`/`nbf` hold (with a small leeway). Keys are cached
and fetched again when they go stale or a token names a key id not seen yet
(key rotation), at most every `jwks_refetch_seconds` for unknown ids.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

import anyio
import httpx2
import jwt
from jwt import PyJWK, PyJWKSet

from mcpstore_proxy.auth.settings import JwtSettings
from mcpstore_proxy.errors import AuthenticationError
from mcpstore_proxy.principals import Principal

__all__ = ["JwtTokens"]

logger = logging.getLogger(__name__)

_FETCH_TIMEOUT_SECONDS: Final = 10.0
_KEY_TYPES: Final[Mapping[str, str]] = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def _invalid(why: str) -> AuthenticationError:
    """The token proves nothing; `why` is safe to show the client."""
    return AuthenticationError(why, reason="invalid_token")


class JwtTokens:
    """Verifies JWT access tokens; what a valid one proves is a principal, until `exp`."""

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._keys = _Jwks(settings)

    def __repr__(self) -> str:
        return f"<JwtTokens issuer {self._settings.issuer!r}>"

    async def principal_for(self, token: str) -> tuple[Principal, float]:
        """The principal a token proves, and when that proof expires (epoch seconds).

        Raises:
            AuthenticationError: it is not a JWT this proxy accepts.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("the token is not a JWT") from None
        algorithm = str(header.get("alg"))
        if algorithm not in self._settings.algorithms:
            raise _invalid(f"algorithm {algorithm!r} is not accepted")
        key = await self._keys.key(header.get("kid"))
        if _KEY_TYPES.get(algorithm[:2]) != key.key_type:
            raise _invalid(f"algorithm {algorithm!r} does not fit the signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise _invalid("the token is from another issuer") from None
        except jwt.InvalidAudienceError:
            raise _invalid("the token is for another audience (resource)") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the token's signature does not verify") from None
        except jwt.PyJWTError as error:
            raise _invalid(f"the token is invalid: {error}") from None
        return self._principal(claims), float(claims["exp"])

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        name = claims.get(self._settings.principal_claim)
        if not isinstance(name, str) or not name:
            raise _invalid(f"the token has no '{self._settings.principal_claim}' claim naming its principal")
        agents: frozenset[str] | None = None
        if self._settings.agents_claim is not None:
            agents = frozenset(_strings(claims.get(self._settings.agents_claim)))
            if "*" in agents:
                agents = None
        is_admin = False
        if self._settings.admin_claim is not None:
            granted = claims.get(self._settings.admin_claim)
            is_admin = granted is True or (not isinstance(granted, bool) and "admin" in _strings(granted))
        return Principal(name, agents, is_admin=is_admin)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(item) for item in cast(list[Any], value)]
    return []


class _Jwks:
    """The issuer's signing keys, cached; fetched again when stale, or for a key id not seen yet."""

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._keys: dict[str | None, PyJWK] = {}
        self._fetched_at = -float("inf")
        self._lock = anyio.Lock()

    async def key(self, kid: Any) -> PyJWK:
        if time.monotonic() - self._fetched_at > self._settings.jwks_cache_seconds:
            await self._refresh()
        key = self._find(kid)
        if key is None and time.monotonic() - self._fetched_at >= self._settings.jwks_refetch_seconds:
            await self._refresh()  # a key id not seen yet: the issuer may have rotated its keys
            key = self._find(kid)
        if key is None:
            raise _invalid(f"the token names a signing key the issuer does not publish (kid {kid!r})")
        return key

    def _find(self, kid: Any) -> PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid if isinstance(kid, str) else None) if kid is not None else None

    async def _refresh(self) -> None:
        async with self._lock:
            try:
                document = await self._load()
                keys = PyJWKSet.from_dict(document).keys
            except (OSError, ValueError, httpx2.HTTPError, jwt.PyJWTError) as error:
                logger.warning("could not load the JWT signing keys: %s", error)
                if not self._keys:
                    raise _invalid("the issuer's signing keys cannot be loaded right now") from None
                return
            finally:
                self._fetched_at = time.monotonic()
            self._keys = {key.key_id: key for key in keys}

    async def _load(self) -> dict[str, Any]:
        if self._settings.jwks_file is not None:
            text = await anyio.Path(Path(self._settings.jwks_file)).read_text()
            return cast(dict[str, Any], json.loads(text))
        assert self._settings.jwks_url is not None
        async with httpx2.AsyncClient(timeout=_FETCH_TIMEOUT_SECONDS) as http:
            response = await http.get(self._settings.jwks_url)
            response.raise_for_status()
            return cast(dict[str, Any], response.json())
