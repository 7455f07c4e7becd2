"""A test OAuth issuer: RSA and EC signing keys, a JWKS document served on 127.0.0.1, and tokens minted on demand.

The keys rotate on request (`rotate()`): the JWKS then publishes the new key (and, until `retire()`, the old one),
as a real authorization server does during a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import RSAAlgorithm

__all__ = ["AUDIENCE", "ISSUER", "TestIssuer", "serving_issuer"]

ISSUER: Final = "https://issuer.test/"
AUDIENCE: Final = "http://127.0.0.1/mcp"


@dataclass
class _Key:
    kid: str
    private: RSAPrivateKey

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}


def _new_key(kid: str) -> _Key:
    return _Key(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class TestIssuer:
    """Mints tokens; `jwks_url` serves the published keys once `serving_issuer` runs it."""

    __test__ = False  # not a pytest test class

    keys: list[_Key] = field(default_factory=lambda: [_new_key("key-1")])
    jwks_url: str = ""
    fetches: int = 0
    """How many times the JWKS was fetched."""

    @property
    def current(self) -> _Key:
        return self.keys[-1]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.keys]}

    def rotate(self) -> None:
        """Publish a new signing key, used from now on (the old one stays published until `retire()`)."""
        self.keys.append(_new_key(f"key-{len(self.keys) + 1}"))

    def retire(self) -> None:
        """Stop publishing every key but the current one."""
        self.keys = [self.current]

    def mint(
        self,
        subject: str,
        *,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        lifetime_seconds: float = 300,
        not_before_in_seconds: float = 0,
        kid: str | None = None,
        key: RSAPrivateKey | None = None,
        **claims: Any,
    ) -> str:
        now = time.time()
        payload: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "iat": int(now),
            "nbf": int(now + not_before_in_seconds),
            "exp": int(now + lifetime_seconds),
            **claims,
        }
        headers = {"kid": kid if kid is not None else self.current.kid}
        return jwt.encode(payload, key or self.current.private, algorithm="RS256", headers=headers)

    def unsigned(self, subject: str) -> str:
        """A token with `alg: none` that claims what a valid one would."""
        header = _b64({"alg": "none", "typ": "JWT", "kid": self.current.kid})
        now = int(time.time())
        body = _b64({"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "exp": now + 300, "nbf": now})
        return f"{header}.{body}."

    def hmac_with_public_key(self, subject: str) -> str:
        """A token "signed" with HS256 using the published public key as the secret: the classic confusion attack."""
        public_pem = self.current.private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        now = int(time.time())
        header = _b64({"alg": "HS256", "typ": "JWT", "kid": self.current.kid})
        body = _b64({"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "exp": now + 300, "nbf": now})
        signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"

    def tampered(self, subject: str, *, as_subject: str) -> str:
        """A valid token for `subject` whose payload now names `as_subject` (the signature no longer matches)."""
        header, _, signature = self.mint(subject).split(".")
        now = int(time.time())
        forged = _b64({"iss": ISSUER, "aud": AUDIENCE, "sub": as_subject, "exp": now + 300, "nbf": now})
        return f"{header}.{forged}.{signature}"


def _b64(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


@contextmanager
def serving_issuer(issuer: TestIssuer) -> Generator[TestIssuer]:
    """Serve `issuer`'s JWKS at http://127.0.0.1:PORT/jwks.json (sets `issuer.jwks_url`) until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the http.server protocol's name
            issuer.fetches += 1
            body = json.dumps(issuer.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # the base class's signature
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="test issuer", daemon=True)
    thread.start()
    issuer.jwks_url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
