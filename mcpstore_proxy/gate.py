"""The HTTP gate: every MCP endpoint and the control API learn here which principal a request proves.

A request without a valid bearer token, where authentication is on, gets 401
with `WWW-Authenticate: Bearer resource_metadata="…"` pointing at this
proxy's RFC 9728 protected-resource metadata (served at
`/.well-known/oauth-protected-resource` and under the `/mcp` path), as the
MCP authorization spec asks. A principal that asks for an agent scope it is
not granted gets 403.

The principal is put in the ASGI scope for the handlers (`principal_of`), and,
as the SDK's `AuthenticatedUser`, in `scope["user"]`: the SDK's session
manager then binds each Streamable HTTP and SSE session to the principal that
opened it, and answers another principal's use of its id with 404, exactly as
for an unknown id.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from functools import lru_cache
from typing import Any, Final

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mcpstore_proxy.auth import Authenticator
from mcpstore_proxy.errors import AuthenticationError, InvalidSessionKeyError, PermissionDeniedError, ProxyError
from mcpstore_proxy.keys import STORE_SCOPE, checked_agent
from mcpstore_proxy.principals import LOCAL, Principal
from mcpstore_proxy.request_headers import AGENT_HEADER, request_headers

__all__ = ["AGENT_HEADER", "METADATA_PATH", "AuthGate", "agent_of", "principal_of"]

METADATA_PATH: Final = "/.well-known/oauth-protected-resource"
_PRINCIPAL_SCOPE_KEY: Final = "mcpstore_proxy.principal"
_AGENT_SCOPE_KEY: Final = "mcpstore_proxy.agent"
_ISSUER: Final = "mcpstore-proxy"


def principal_of(scope: Scope | None) -> Principal:
    """The principal the gate found for a request (`LOCAL` where there is no HTTP request: stdio)."""
    if scope is None:
        return LOCAL
    principal = scope.get(_PRINCIPAL_SCOPE_KEY)
    if not isinstance(principal, Principal):
        raise RuntimeError("a request reached a handler without passing the gate")
    return principal


def agent_of(scope: Scope) -> str:
    """The agent scope a request asks for: the `/agents/{id}/mcp` path, else the `X-MCPStore-Agent` header (as
    the gate found it, once it has).

    Raises:
        InvalidSessionKeyError: the agent id is malformed.
    """
    admitted = scope.get(_AGENT_SCOPE_KEY)
    return admitted if isinstance(admitted, str) else _requested_agent(scope)


def _requested_agent(scope: Scope) -> str:
    """The agent scope the request asks for: its path's, else its agent header's, else the store's."""
    path_agent = scope.get("path_params", {}).get("agent")
    if path_agent:
        return checked_agent(str(path_agent))
    header = request_headers(scope).agent
    return checked_agent(header.decode("latin-1")) if header else STORE_SCOPE


@lru_cache(maxsize=1024)
def _user_of(principal: Principal) -> AuthenticatedUser:
    """The SDK's user for `principal` (it reads the owner of a Streamable HTTP session from it); built once."""
    return AuthenticatedUser(
        AccessToken(
            token="",  # what identifies the session's owner is the principal, not the token (which may rotate)
            client_id=principal.name,
            scopes=[],
            subject=principal.name,
            claims={"iss": _ISSUER},
        )
    )


class AuthGate:
    """Authenticates the requests of the apps it guards."""

    def __init__(self, authenticator: Authenticator, *, resource_url: str, authorization_servers: list[str]) -> None:
        self.authenticator = authenticator
        self.resource_url = resource_url
        self._authorization_servers = authorization_servers
        self.metadata_url = _metadata_url(resource_url)
        self._last_user: tuple[Principal, AuthenticatedUser] | None = None

    def guard(self, app: ASGIApp) -> _Guarded:
        """`app`, reached only by requests that prove a principal allowed in the agent scope they ask for."""
        return _Guarded(self, app)

    async def admit(self, scope: Scope) -> Principal:
        """The principal a request proves, put in its scope; checks the agent scope it asks for.

        Raises:
            AuthenticationError: authentication is on and the request proves no principal.
            PermissionDeniedError: the principal may not use the agent scope the request asks for.
            InvalidSessionKeyError: the agent id is malformed.
        """
        admitted = self.admitted(scope)
        if admitted is not None:
            return admitted
        principal = await self.authenticator.authenticate(_authorization(scope))  # a JWT to verify first
        self._enter(scope, principal)
        return principal

    def admitted(self, scope: Scope) -> Principal | None:
        """`admit`, where the principal is known without verifying a JWT now (see `Authenticator.proven`): for
        every request of a client whose token was verified before; else None, and the scope is left as it was.

        Raises:
            AuthenticationError, PermissionDeniedError, InvalidSessionKeyError: as `admit`.
        """
        principal = self.authenticator.proven(_authorization(scope))
        if principal is not None:
            self._enter(scope, principal)
        return principal

    def _enter(self, scope: Scope, principal: Principal) -> None:
        agent = _requested_agent(scope)
        if not principal.may_use_agent(agent):
            raise PermissionDeniedError(f"{principal} may not use agent '{agent}'; ask for it to be granted")
        scope[_PRINCIPAL_SCOPE_KEY] = principal
        scope[_AGENT_SCOPE_KEY] = agent
        last = self._last_user
        if last is None or last[0] is not principal:  # most requests are the last one's principal's
            last = self._last_user = (principal, _user_of(principal))
        scope["user"] = last[1]

    def refusal(self, error: ProxyError, *, json_rpc: bool = False) -> Response:
        """The HTTP answer to a request the gate refuses: a JSON-RPC error (for MCP endpoints), or the admin
        API's error shape; with `WWW-Authenticate` for a request that proved no principal."""
        details = {"code": error.code, "message": error.message, "data": {"type": type(error).__name__}}
        body: dict[str, Any] = (
            {"jsonrpc": "2.0", "id": None, "error": details}
            if json_rpc
            else {"error": {"type": type(error).__name__, "message": error.message, "code": error.code}}
        )
        if not isinstance(error, AuthenticationError):
            return JSONResponse(body, status_code=error.http_status)
        challenge = f'Bearer resource_metadata="{self.metadata_url}"'
        if error.reason is not None:
            challenge += f', error="{error.reason}", error_description="{_quoted(error.message)}"'
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})

    async def metadata(self, _: Request) -> Response:
        """RFC 9728 protected-resource metadata: this resource, and where its tokens come from."""
        document: dict[str, Any] = {
            "resource": self.resource_url,
            "bearer_methods_supported": ["header"],
            "resource_name": "mcpstore-proxy",
        }
        if self._authorization_servers:
            document["authorization_servers"] = self._authorization_servers
        return Response(json.dumps(document), media_type="application/json")


class _Guarded:
    """An ASGI app behind the gate (a class, so that Starlette routes hand it every method as ASGI)."""

    def __init__(self, gate: AuthGate, app: ASGIApp) -> None:
        self._gate = gate
        self._app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        try:
            principal = self._gate.admitted(scope)
        except _REFUSALS as error:
            return self._gate.refusal(error, json_rpc=True)(scope, receive, send)
        if principal is None:
            return self._verified(scope, receive, send)
        return self._app(scope, receive, send)  # the app's own coroutine: a frame less per request

    async def _verified(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request, once the JWT it carries is verified (the first request with that token)."""
        try:
            await self._gate.admit(scope)
        except _REFUSALS as error:
            await self._gate.refusal(error, json_rpc=True)(scope, receive, send)
            return
        await self._app(scope, receive, send)


_REFUSALS: Final = (AuthenticationError, PermissionDeniedError, InvalidSessionKeyError)


def _authorization(scope: Scope) -> str | None:
    """The request's first `Authorization` header, decoded."""
    authorization = request_headers(scope).authorization
    return authorization.decode("latin-1") if authorization else None


def _metadata_url(resource_url: str) -> str:
    """RFC 9728 §3.1: the well-known path goes between the host and the resource's path."""
    scheme, _, rest = resource_url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host}{METADATA_PATH}{slash + path if path else ''}"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")
