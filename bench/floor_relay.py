"""REFERENCE ONLY, NEVER SHIPPED: the benchmark's "floor", a bare isolating MCP relay. Not imported by the package.

    python bench/floor_relay.py PORT -- COMMAND [ARGS...]

What the cheapest isolating relay written in Python costs, so that bench/forwarding.py can put the proxy's
figures next to it: raw ASGI on uvicorn (httptools and uvloop when installed), orjson when installed, one upstream
stdio process per MCP session (started on `initialize`, which mints the Mcp-Session-Id), asyncio pipes. It
forwards every JSON-RPC message to its session's process unchanged and answers a request with the matching
response as a plain JSON body. No validation, no auth, no batching, no features: messages the upstream sends on
its own (notifications, requests to the client) are dropped, and a GET stream is held open but never written to.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn


def json_loader() -> tuple[str, Callable[[bytes], Any]]:
    """orjson when installed, else the standard library (the relay never serializes: it forwards raw bytes)."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - depends on the venv
        return "json", json.loads
    return "orjson", orjson.loads


JSON_LIBRARY, loads = json_loader()
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Session:
    """One upstream process and the requests waiting for its answers, matched by JSON-RPC id."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pending: dict[Any, asyncio.Future[bytes]] = {}
        self.reader = asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = loads(line)
            waiter = self.pending.pop(message.get("id"), None) if "method" not in message else None
            if waiter is not None and not waiter.done():
                waiter.set_result(line)
        for waiter in self.pending.values():
            waiter.cancel()

    async def request(self, message_id: Any, body: bytes) -> bytes:
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[message_id] = waiter
        self.write(body)
        return await waiter

    def write(self, body: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(body.strip() + b"\n")

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        self.reader.cancel()


COMMAND: list[str] = []
SESSIONS: dict[str, Session] = {}


async def respond(send: Send, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await asyncio.gather(*(session.close() for session in SESSIONS.values()))
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http" or scope["path"] != "/mcp":
        await respond(send, 404)
        return
    session_id = dict(scope["headers"]).get(b"mcp-session-id", b"").decode()
    method = scope["method"]
    if method == "GET":  # the client's stream for server-initiated messages: held open, never written to
        if session_id not in SESSIONS:
            await respond(send, 404)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    if method == "DELETE":
        session = SESSIONS.pop(session_id, None)
        if session is not None:
            await session.close()
        await respond(send, 200 if session is not None else 404)
        return
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    message = loads(body)
    if message.get("method") == "initialize":
        process = await asyncio.create_subprocess_exec(
            *COMMAND, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=64 * 1024 * 1024
        )
        session_id = secrets.token_hex(16)
        SESSIONS[session_id] = session = Session(process)
        answer = await session.request(message["id"], body)
        await respond(send, 200, answer, [(b"mcp-session-id", session_id.encode())])
        return
    session = SESSIONS.get(session_id)
    if session is None:
        await respond(send, 404 if session_id else 400)
        return
    if "method" in message and "id" in message:
        await respond(send, 200, await session.request(message["id"], body))
    else:  # a notification, or the client's answer to a request the upstream made
        session.write(body)
        await respond(send, 202)


def main() -> None:
    port = int(sys.argv[1])
    COMMAND.extend(sys.argv[sys.argv.index("--") + 1 :])
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    print(f"floor relay: loop={loop} http={http} json={JSON_LIBRARY}", file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop=loop,
        http=http,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
