"""The admin HTTP API: JSON over the control operations the SDK uses, for the remote SDK and for operators.

    GET    /admin/services                  list          POST /admin/services             add
    GET    /admin/services/{name}           status        DELETE /admin/services/{name}    remove
    PUT    /admin/services/{name}           replace its entry (the body: an mcpServers entry)
    POST   /admin/services/{name}/restart                 POST /admin/services/{name}/wait?timeout=30
    GET    /admin/tools?session=ID          list (a session's bound services' tools, or every tool)
    GET    /admin/tools/resolve?name=N&session=ID   the tool a short or prefixed name means there
    GET    /admin/sessions                  list          PUT  /admin/sessions/{id}        open (create or find)
    GET    /admin/sessions/{id}             info          DELETE /admin/sessions/{id}      close
    POST   /admin/sessions/{id}/bind        {"service": NAME}
    POST   /admin/sessions/{id}/extend      {"seconds": 3600}
    POST   /admin/sessions/{id}/restart     POST /admin/sessions/{id}/clear-cache
    GET    /admin/status                    the proxy's state in detail (operators only; `status.status_report`);
                                            `operator_page` serves it as HTML at `/status`, guarded the same
    GET    /admin/pins                      tool pins, and changed definitions awaiting approval (operators only)
    POST   /admin/pins/{name}/approve       approve a tool's changed definition; `name` is the exposed name or
                                            `upstream/tool` (operators only)
    POST   /admin/reload                    reload the config file and apply what changed (operators only; see
                                            `reload`): {added, removed, restarted, unchanged, needs_restart}

Every path takes `?agent=ID` for an agent's scope (absent: the store's). Errors come back as
`{"error": {"type": ..., "message": ..., "code": ...}}` with the error's HTTP status.

Access. With `auth`, every request proves a principal (a bearer token), on loopback too. Session and tool
operations act on the principal's own sessions, in the agent scopes it is granted. Changing services needs an
admin (the store's) or a principal granted the agent (the agent's); `/admin/status` needs an admin. The config's
`admin_token` proves an admin wherever it is set. Without `auth`, the API is the operator's: open on a loopback
bind with no `admin_token`, else only with it. Host and Origin are checked as on `/mcp`, so a web page cannot
drive the API through the user's browser; a POST or PUT must be JSON, at most 1 MiB, and its fields are checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, cast

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from mcpstore_proxy.config import ProxySettings, describe_validation_error
from mcpstore_proxy.control import Control
from mcpstore_proxy.errors import (
    AuthenticationError,
    ConfigError,
    PermissionDeniedError,
    ProxyError,
    RequestTooLargeError,
    error_data,
)
from mcpstore_proxy.gate import AuthGate
from mcpstore_proxy.keys import checked_agent
from mcpstore_proxy.principals import Principal

__all__ = ["MAX_BODY_BYTES", "admin_routes", "operator_page"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024
_MAX_WAIT_SECONDS: Final = 600.0
_MAX_EXTEND_SECONDS: Final = 10 * 365 * 86400.0
_BodyT = TypeVar("_BodyT", bound=BaseModel)

Handler = Callable[[Request, Control], Awaitable[Any]]
StatusReport = Callable[[], dict[str, Any]]


class _BindBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    service: str = Field(min_length=1, max_length=64)


class _ExtendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(default=3600.0, gt=0, le=_MAX_EXTEND_SECONDS, allow_inf_nan=False)


class _WaitQuery(BaseModel):
    timeout: float = Field(default=30.0, gt=0, le=_MAX_WAIT_SECONDS, allow_inf_nan=False)


def admin_routes(
    control: Control,
    settings: ProxySettings,
    security: TransportSecuritySettings,
    gate: AuthGate,
    status: StatusReport,
) -> list[BaseRoute]:
    api = _AdminApi(status)
    guard = _Guard(control, settings, security, gate)
    principal, operator = guard.for_principals, guard.for_operators
    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/services", principal(api.list_services), ["GET"]),
        ("/services", principal(api.add_services), ["POST"]),
        ("/services/{name}", principal(api.service_status), ["GET"]),
        ("/services/{name}", principal(api.remove_service), ["DELETE"]),
        ("/services/{name}", principal(api.update_service), ["PUT"]),
        ("/services/{name}/restart", principal(api.restart_service), ["POST"]),
        ("/services/{name}/wait", principal(api.wait_service), ["POST"]),
        ("/tools", principal(api.list_tools), ["GET"]),
        ("/tools/resolve", principal(api.resolve_tool), ["GET"]),
        ("/sessions", principal(api.list_sessions), ["GET"]),
        ("/sessions/{session}", principal(api.open_session), ["PUT"]),
        ("/sessions/{session}", principal(api.session_info), ["GET"]),
        ("/sessions/{session}", principal(api.close_session), ["DELETE"]),
        ("/sessions/{session}/bind", principal(api.bind_service), ["POST"]),
        ("/sessions/{session}/extend", principal(api.extend_session), ["POST"]),
        ("/sessions/{session}/restart", principal(api.restart_session), ["POST"]),
        ("/sessions/{session}/clear-cache", principal(api.clear_cache), ["POST"]),
        ("/status", operator(api.status), ["GET"]),
        ("/pins", operator(api.list_pins), ["GET"]),
        ("/pins/{name:path}/approve", operator(api.approve_pin), ["POST"]),
        ("/reload", operator(api.reload), ["POST"]),
    ]
    return [Mount("/admin", routes=[Route(path, endpoint, methods=methods) for path, endpoint, methods in routes])]


def operator_page(
    path: str,
    render: Callable[[], str],
    control: Control,
    settings: ProxySettings,
    security: TransportSecuritySettings,
    gate: AuthGate,
) -> Route:
    """`GET path`: an HTML page (`render()`) for operators only, guarded exactly as `/admin/status` is."""

    async def page(request: Request, control: Control) -> Response:
        # What an operator sees is not for a shared cache.
        return HTMLResponse(render(), headers={"Cache-Control": "no-store"})

    return Route(path, _Guard(control, settings, security, gate).for_operators(page), methods=["GET"])


class _Guard:
    """Who may use the API, and its one translation of errors into answers."""

    def __init__(
        self, control: Control, settings: ProxySettings, security: TransportSecuritySettings, gate: AuthGate
    ) -> None:
        self._control = control
        self._gate = gate
        self._security = TransportSecurityMiddleware(security)
        self._is_auth_on = gate.authenticator.is_on
        self._is_operator_open = settings.binds_loopback and settings.admin_token is None
        self._has_admin_token = settings.admin_token is not None

    def for_principals(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Session, tool and service operations: any principal, within its rights (with `auth`)."""
        return self._wrap(handler, operators_only=False)

    def for_operators(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return self._wrap(handler, operators_only=True)

    def _wrap(self, handler: Handler, *, operators_only: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            refused = await self._security.validate_request(request, is_post=request.method in ("POST", "PUT"))
            if refused is not None:
                return refused
            is_operator = False
            try:
                principal = await self._gate.admit(request.scope)
                principal = self._operator_or_refuse(principal, operators_only=operators_only)
                is_operator = principal.is_admin
                control = self._control.acting_for(principal)
                return _json(await handler(request, control.with_details(is_operator)))
            except AuthenticationError as error:
                return self._gate.refusal(error)
            except ProxyError as error:
                return _error_response(error, for_operator=is_operator)
            except (ValueError, KeyError, TypeError) as error:
                return _error_response(ConfigError(f"malformed request: {error}"))

        return endpoint

    def _operator_or_refuse(self, principal: Principal, *, operators_only: bool) -> Principal:
        """The principal the operation runs as: without `auth`, only an operator may use the API at all.

        Raises:
            PermissionDeniedError: the caller may not use this part of the API.
        """
        if principal.is_admin:
            return principal
        if not self._is_auth_on:
            if self._is_operator_open:
                return Principal(principal.name, None, is_admin=True)  # loopback, no admin_token: the operator
            if self._has_admin_token:
                raise AuthenticationError(
                    "send 'Authorization: Bearer <admin_token>' to use the admin API", reason="invalid_token"
                )
            raise PermissionDeniedError(
                "the admin API is off: the proxy is not bound to loopback and has no admin_token"
            )
        if operators_only:
            raise PermissionDeniedError(f"{principal} is not an admin; this part of the admin API is for admins")
        return principal


class _AdminApi:
    def __init__(self, status: StatusReport) -> None:
        self._status = status

    async def list_services(self, request: Request, control: Control) -> Any:
        return await control.list_services(_agent(request))

    async def add_services(self, request: Request, control: Control) -> Any:
        return await control.add_services(_agent(request), await _json_object(request))

    async def service_status(self, request: Request, control: Control) -> Any:
        return await control.service_status(_agent(request), request.path_params["name"])

    async def update_service(self, request: Request, control: Control) -> Any:
        name = request.path_params["name"]
        entry = await _json_object(request)
        if "mcpServers" in entry or entry.get("name", name) != name:
            raise ConfigError(f"the body must be the entry of service {name!r} itself (command or url, ...)")
        [updated] = await control.update_services(_agent(request), {**entry, "name": name})
        return updated

    async def remove_service(self, request: Request, control: Control) -> Any:
        await control.remove_service(_agent(request), request.path_params["name"])
        return {"removed": request.path_params["name"]}

    async def restart_service(self, request: Request, control: Control) -> Any:
        return await control.restart_service(_agent(request), request.path_params["name"])

    async def wait_service(self, request: Request, control: Control) -> Any:
        query = _validated(_WaitQuery, dict(request.query_params), "the query")
        return await control.wait_service(_agent(request), request.path_params["name"], query.timeout)

    async def list_tools(self, request: Request, control: Control) -> Any:
        return await control.list_tools(_agent(request), request.query_params.get("session"))

    async def resolve_tool(self, request: Request, control: Control) -> Any:
        name = request.query_params.get("name")
        if not name:
            raise ConfigError("the query needs 'name', the tool to resolve")
        return await control.resolve_tool(_agent(request), request.query_params.get("session"), name)

    async def list_sessions(self, request: Request, control: Control) -> Any:
        return await control.list_sessions(_agent(request))

    async def open_session(self, request: Request, control: Control) -> Any:
        return await control.open_session(_agent(request), request.path_params["session"])

    async def session_info(self, request: Request, control: Control) -> Any:
        return await control.session_info(_agent(request), request.path_params["session"])

    async def close_session(self, request: Request, control: Control) -> Any:
        await control.close_session(_agent(request), request.path_params["session"])
        return {"closed": request.path_params["session"]}

    async def bind_service(self, request: Request, control: Control) -> Any:
        body = _validated(_BindBody, await _json_object(request), "the body")
        return await control.bind_service(_agent(request), request.path_params["session"], body.service)

    async def extend_session(self, request: Request, control: Control) -> Any:
        body = _validated(_ExtendBody, await _json_object(request), "the body")
        return await control.extend_session(_agent(request), request.path_params["session"], body.seconds)

    async def restart_session(self, request: Request, control: Control) -> Any:
        return await control.restart_session(_agent(request), request.path_params["session"])

    async def clear_cache(self, request: Request, control: Control) -> Any:
        return await control.clear_cache(_agent(request), request.path_params["session"])

    async def status(self, request: Request, control: Control) -> Any:
        return self._status()

    async def list_pins(self, request: Request, control: Control) -> Any:
        return control.engine.pins.infos()

    async def approve_pin(self, request: Request, control: Control) -> Any:
        return control.engine.approve_tool(request.path_params["name"])

    async def reload(self, request: Request, control: Control) -> Any:
        return await control.engine.reloader.reload("admin")


def _agent(request: Request) -> str:
    return checked_agent(request.query_params.get("agent", ""))


async def _json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body, read only while it stays within `MAX_BODY_BYTES`.

    Raises:
        RequestTooLargeError: it is larger (HTTP 413).
        ConfigError: it is not a JSON object.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestTooLargeError(f"the body is {declared} bytes; the admin API takes at most {MAX_BODY_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestTooLargeError(f"the body is over {MAX_BODY_BYTES} bytes, the most the admin API takes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw or b"{}")
    except ValueError as error:
        raise ConfigError(f"the body is not JSON ({error})") from None
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object")
    return cast(dict[str, Any], body)


def _validated(model: type[_BodyT], data: dict[str, Any], what: str) -> _BodyT:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{what}: {describe_validation_error(error)}") from None


def _json(payload: Any) -> Response:
    if isinstance(payload, Response):
        return payload  # a page (`operator_page`), already rendered
    if isinstance(payload, BaseModel):
        return JSONResponse(payload.model_dump(mode="json"))
    if isinstance(payload, list) and all(isinstance(item, BaseModel) for item in cast(list[Any], payload)):
        return JSONResponse([cast(BaseModel, item).model_dump(mode="json") for item in cast(list[Any], payload)])
    return JSONResponse(payload)


def _error_response(error: ProxyError, *, for_operator: bool = False) -> JSONResponse:
    details = error_data(error, for_operator=for_operator)
    return JSONResponse(
        {"error": {**details, "message": error.message, "code": error.code}}, status_code=error.http_status
    )
