"""The admin HTTP API: JSON over the control operations the SDK uses, for the remote SDK and for operators.

    GET    /admin/services                  list          POST /admin/services             add
    GET    /admin/services/{name}           status        DELETE /admin/services/{name}    remove
    POST   /admin/services/{name}/restart                 POST /admin/services/{name}/wait?timeout=30
    GET    /admin/tools?session=ID          list (a session's bound services' tools, or every tool)
    GET    /admin/tools/resolve?name=N&session=ID   the tool a short or prefixed name means there
    GET    /admin/sessions                  list          PUT  /admin/sessions/{id}        open (create or find)
    GET    /admin/sessions/{id}             info          DELETE /admin/sessions/{id}      close
    POST   /admin/sessions/{id}/bind        {"service": NAME}
    POST   /admin/sessions/{id}/extend      {"seconds": 3600}
    POST   /admin/sessions/{id}/restart     POST /admin/sessions/{id}/clear-cache

Every path takes `?agent=ID` for an agent's scope (absent: the store's). Errors come back as
`{"error": {"type": ..., "message": ..., "code": ...}}` with a fitting HTTP status.

Access: without a token only while the proxy is bound to loopback; otherwise `Authorization: Bearer
<admin_token>` is required (and with no `admin_token` configured the API is off). Host and Origin are
checked as on `/mcp`, so a web page cannot drive the API through the user's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from mcpstore_proxy.config import ProxySettings
from mcpstore_proxy.control import Control
from mcpstore_proxy.errors import ProxyError, error_data

__all__ = ["admin_routes", "is_loopback"]

logger = logging.getLogger(__name__)

_DEFAULT_WAIT_SECONDS: Final = 30.0

Handler = Callable[[Request], Awaitable[Any]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def admin_routes(control: Control, settings: ProxySettings, security: TransportSecuritySettings) -> list[BaseRoute]:
    api = _AdminApi(control)
    guard = _Guard(settings, security)
    endpoints: list[tuple[str, Handler, list[str]]] = [
        ("/services", api.list_services, ["GET"]),
        ("/services", api.add_services, ["POST"]),
        ("/services/{name}", api.service_status, ["GET"]),
        ("/services/{name}", api.remove_service, ["DELETE"]),
        ("/services/{name}/restart", api.restart_service, ["POST"]),
        ("/services/{name}/wait", api.wait_service, ["POST"]),
        ("/tools", api.list_tools, ["GET"]),
        ("/tools/resolve", api.resolve_tool, ["GET"]),
        ("/sessions", api.list_sessions, ["GET"]),
        ("/sessions/{session}", api.open_session, ["PUT"]),
        ("/sessions/{session}", api.session_info, ["GET"]),
        ("/sessions/{session}", api.close_session, ["DELETE"]),
        ("/sessions/{session}/bind", api.bind_service, ["POST"]),
        ("/sessions/{session}/extend", api.extend_session, ["POST"]),
        ("/sessions/{session}/restart", api.restart_session, ["POST"]),
        ("/sessions/{session}/clear-cache", api.clear_cache, ["POST"]),
    ]
    return [
        Mount(
            "/admin", routes=[Route(path, guard.wrap(handler), methods=methods) for path, handler, methods in endpoints]
        )
    ]


class _Guard:
    def __init__(self, settings: ProxySettings, security: TransportSecuritySettings) -> None:
        self._is_open = is_loopback(settings.host)
        self._token = settings.admin_token
        self._security = TransportSecurityMiddleware(security)

    def wrap(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            refused = await self._security.validate_request(request, is_post=request.method in ("POST", "PUT"))
            if refused is not None:
                return refused
            if not self._is_open:
                if self._token is None:
                    return _error(
                        403,
                        "AdminApiOff",
                        "the admin API is off: the proxy is not bound to loopback and has no admin_token",
                    )
                offered = request.headers.get("authorization", "")
                if not hmac.compare_digest(offered.encode(), f"Bearer {self._token}".encode()):
                    return _error(
                        401, "Unauthorized", "send 'Authorization: Bearer <admin_token>' to use the admin API"
                    )
            try:
                return _json(await handler(request))
            except ProxyError as error:
                return JSONResponse(
                    {"error": {**error_data(error), "message": error.message, "code": error.code}},
                    status_code=error.http_status,
                )
            except (ValueError, KeyError) as error:
                return _error(400, "BadRequest", f"malformed request: {error}")

        return endpoint


class _AdminApi:
    def __init__(self, control: Control) -> None:
        self._control = control

    async def list_services(self, request: Request) -> Any:
        return await self._control.list_services(_agent(request))

    async def add_services(self, request: Request) -> Any:
        return await self._control.add_services(_agent(request), await _body(request))

    async def service_status(self, request: Request) -> Any:
        return await self._control.service_status(_agent(request), request.path_params["name"])

    async def remove_service(self, request: Request) -> Any:
        await self._control.remove_service(_agent(request), request.path_params["name"])
        return {"removed": request.path_params["name"]}

    async def restart_service(self, request: Request) -> Any:
        return await self._control.restart_service(_agent(request), request.path_params["name"])

    async def wait_service(self, request: Request) -> Any:
        timeout = float(request.query_params.get("timeout", _DEFAULT_WAIT_SECONDS))
        return await self._control.wait_service(_agent(request), request.path_params["name"], timeout)

    async def list_tools(self, request: Request) -> Any:
        return await self._control.list_tools(_agent(request), request.query_params.get("session"))

    async def resolve_tool(self, request: Request) -> Any:
        name, session = request.query_params["name"], request.query_params.get("session")
        opens = request.query_params.get("open", "") in ("1", "true")
        return await self._control.resolve_tool(_agent(request), session, name, opens=opens)

    async def list_sessions(self, request: Request) -> Any:
        return await self._control.list_sessions(_agent(request))

    async def open_session(self, request: Request) -> Any:
        return await self._control.open_session(_agent(request), request.path_params["session"])

    async def session_info(self, request: Request) -> Any:
        return await self._control.session_info(_agent(request), request.path_params["session"])

    async def close_session(self, request: Request) -> Any:
        await self._control.close_session(_agent(request), request.path_params["session"])
        return {"closed": request.path_params["session"]}

    async def bind_service(self, request: Request) -> Any:
        service = (await _body(request))["service"]
        return await self._control.bind_service(_agent(request), request.path_params["session"], str(service))

    async def extend_session(self, request: Request) -> Any:
        seconds = float((await _body(request)).get("seconds", 3600))
        return await self._control.extend_session(_agent(request), request.path_params["session"], seconds)

    async def restart_session(self, request: Request) -> Any:
        return await self._control.restart_session(_agent(request), request.path_params["session"])

    async def clear_cache(self, request: Request) -> Any:
        return await self._control.clear_cache(_agent(request), request.path_params["session"])


def _agent(request: Request) -> str:
    return request.query_params.get("agent", "")


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as error:
        raise ValueError(f"the body is not JSON ({error})") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return cast(dict[str, Any], body)


def _json(payload: Any) -> JSONResponse:
    if isinstance(payload, BaseModel):
        return JSONResponse(payload.model_dump(mode="json"))
    if isinstance(payload, list) and all(isinstance(item, BaseModel) for item in cast(list[Any], payload)):
        return JSONResponse([cast(BaseModel, item).model_dump(mode="json") for item in cast(list[Any], payload)])
    return JSONResponse(payload)


def _error(status: int, kind: str, message: str, code: int | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, "code": code}}, status_code=status)
