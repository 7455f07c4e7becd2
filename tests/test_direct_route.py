"""`DirectRoute`: the MCP path reaches its endpoint past Starlette's router; every other request, the app."""

from __future__ import annotations

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mcpstore_proxy.direct_route import DirectRoute

pytestmark = pytest.mark.anyio


class _Endpoint:
    """An ASGI app, as the proxy's guarded MCP endpoint is (Starlette routes every method to such an endpoint)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What only Starlette's router adds to a scope tells which way the request came.
        await PlainTextResponse("direct" if "router" not in scope else "routed")(scope, receive, send)


_endpoint = _Endpoint()


async def _other(request: Request) -> Response:
    return PlainTextResponse("other")


async def _answers(app: DirectRoute, path: str, root_path: str = "") -> tuple[int, str]:
    transport = httpx2.ASGITransport(app=app, root_path=root_path)
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.post(path)
    return response.status_code, response.text


@pytest.fixture
def app() -> DirectRoute:
    starlette = Starlette(routes=[Route("/mcp", endpoint=_endpoint), Route("/other", _other, methods=["POST"])])
    return DirectRoute(starlette, "/mcp", _endpoint)


async def test_a_request_for_exactly_the_mcp_path_reaches_the_endpoint_without_the_router(app: DirectRoute) -> None:
    assert await _answers(app, "/mcp") == (200, "direct")


async def test_every_other_path_goes_through_the_app_as_before(app: DirectRoute) -> None:
    assert await _answers(app, "/other") == (200, "other")
    assert await _answers(app, "/missing") == (404, "Not Found")
    assert (await _answers(app, "/mcp/"))[0] == 307  # Starlette's own redirect to the path without the slash


async def test_under_a_root_path_the_app_routes_the_mcp_path_itself(app: DirectRoute) -> None:
    assert await _answers(app, "/base/mcp", root_path="/base") == (200, "routed")
