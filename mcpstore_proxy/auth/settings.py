"""The `auth:` section of the config: static bearer tokens, a JWT (OAuth 2.1 resource server) verifier, or an
explicit `mode: none`.

    auth:
      tokens:
        - {token: "${ALICE_TOKEN}", principal: alice, agents: ["*"], admin: false}
      jwt:
        issuer: https://login.example.com/
        audience: https://mcp.example.com/mcp
        jwks_url: https://login.example.com/.well-known/jwks.json
        principal_claim: sub
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ASYMMETRIC_ALGORITHMS", "AuthSettings", "JwtSettings", "TokenEntry"]

ASYMMETRIC_ALGORITHMS: Final = (
    *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    *("ES256", "ES384", "ES512", "EdDSA"),
)
"""The only JWT algorithms accepted: signatures by a published key (never `none`, never a shared secret)."""

_PRINCIPAL = re.compile(r"[A-Za-z0-9_.@:-]{1,128}")
_MIN_TOKEN_CHARACTERS: Final = 16


class TokenEntry(BaseModel):
    """One static bearer token and the principal it proves."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=_MIN_TOKEN_CHARACTERS)
    principal: str
    agents: list[str] = Field(default_factory=lambda: ["*"])
    """Agent scopes the principal may use; `"*"` is every agent (the store's scope is always allowed)."""
    admin: bool = False

    @field_validator("principal")
    @classmethod
    def _check_principal(cls, value: str) -> str:
        if not _PRINCIPAL.fullmatch(value):
            raise ValueError(f"principal {value!r} may use only letters, digits and _ . @ : - (at most 128)")
        return value


class JwtSettings(BaseModel):
    """Access tokens issued by an OAuth 2.1 authorization server, checked against its published keys."""

    model_config = ConfigDict(extra="forbid")

    issuer: str
    audience: str | list[str]
    """The audience (RFC 8707 resource) a token must name: this proxy's own resource URL."""
    jwks_url: str | None = None
    jwks_file: Path | None = None
    principal_claim: str = "sub"
    agents_claim: str | None = None
    """A claim listing the agents granted (a list, or a space-separated string); absent: every agent."""
    admin_claim: str | None = None
    """A claim that makes the principal an admin when true (or, for a list or string, when it has "admin")."""
    algorithms: list[str] = Field(default_factory=lambda: list(ASYMMETRIC_ALGORITHMS))
    leeway_seconds: float = Field(default=30.0, ge=0, le=300, allow_inf_nan=False)
    jwks_cache_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    """How long the issuer's keys are used before they are fetched again."""
    jwks_refetch_seconds: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    """The least time between two fetches for a key id not seen yet (a rotated key), so that tokens naming made-up
    key ids cannot make the proxy hammer the issuer."""

    @model_validator(mode="after")
    def _check(self) -> JwtSettings:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("needs exactly one of 'jwks_url' (the issuer's published keys) or 'jwks_file'")
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"jwks_url {self.jwks_url!r} must start with https:// (or http:// on loopback)")
        refused = sorted(set(self.algorithms) - set(ASYMMETRIC_ALGORITHMS))
        if refused:
            raise ValueError(
                f"algorithms {refused} are not accepted: only signatures by a published key "
                f"({', '.join(ASYMMETRIC_ALGORITHMS)}); never 'none' or a shared secret"
            )
        return self


class AuthSettings(BaseModel):
    """How HTTP clients prove who they are. `mode: none` serves without authentication, on purpose."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none"] | None = None
    tokens: list[TokenEntry] = Field(default_factory=list[TokenEntry])
    jwt: JwtSettings | None = None
    resource: str | None = None
    """This proxy's canonical URL (`https://mcp.example.com/mcp`), named in the protected-resource metadata;
    default: the address `serve` binds."""
    authorization_servers: list[str] = Field(default_factory=list[str])
    """Where clients get tokens, for the metadata; default: the JWT issuer, if any."""

    @model_validator(mode="after")
    def _check(self) -> AuthSettings:
        if self.mode == "none" and (self.tokens or self.jwt is not None):
            raise ValueError("'mode: none' serves without authentication; remove it, or remove 'tokens' and 'jwt'")
        if self.mode is None and not self.tokens and self.jwt is None:
            raise ValueError("needs 'tokens' or 'jwt' (or 'mode: none' to serve without authentication)")
        values = [entry.token for entry in self.tokens]
        if len(set(values)) != len(values):
            raise ValueError("two tokens are the same; each token must prove one principal")
        return self

    @property
    def is_on(self) -> bool:
        return self.mode != "none"
