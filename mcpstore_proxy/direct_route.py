"""The MCP endpoint reached without Starlette's router and middleware in front of it.

Starlette's router tries each route's pattern in turn and its exception middleware builds a `Request` for every
request: a few percent of the CPU of a forwarded call, for a path known in advance. `DirectRoute` hands HTTP
requests for exactly that path to the endpoint the router would have reached, and everything else (other paths,
a `root_path`, lifespan) to the Starlette app unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["DirectRoute"]


class DirectRoute:
    def __init__(self, app: ASGIApp, path: str, endpoint: ASGIApp) -> None:
        self._app = app
        self._path = path
        self._endpoint = endpoint

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # The app's own coroutine, not one around it: a frame less on every request.
        if scope["type"] == "http" and scope["path"] == self._path and not scope.get("root_path"):
            return self._endpoint(scope, receive, send)
        return self._app(scope, receive, send)
