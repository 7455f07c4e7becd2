"""Small stateful MCP servers bundled so the default config works offline.

    python -m mcpstore_proxy.demo notes     # per-session notebook: shows isolation
    python -m mcpstore_proxy.demo counter   # one counter: shows a shared upstream

Both keep their state in process memory, so the state lives exactly as long
as the upstream session the proxy holds.
"""

from __future__ import annotations

import os
import sys

from mcp.server import MCPServer

__all__ = ["counter_server", "notes_server"]


def notes_server() -> MCPServer:
    server = MCPServer("notes", instructions="A notebook that remembers what you wrote in this session.")
    notes: list[str] = []

    @server.tool()
    def add_note(text: str) -> str:
        """Write a note into this session's notebook."""
        notes.append(text)
        return f"Noted. This session's notebook has {len(notes)} note(s)."

    @server.tool()
    def list_notes() -> list[str]:
        """Every note written in this session, oldest first."""
        return list(notes)

    @server.tool()
    def clear_notes() -> str:
        """Erase this session's notebook."""
        notes.clear()
        return "The notebook is empty."

    @server.tool()
    def notebook_process() -> int:
        """The process id of the notes server behind this session (each session has its own)."""
        return os.getpid()

    return server


def counter_server() -> MCPServer:
    server = MCPServer("counter", instructions="One counter that every client shares.")
    count = 0

    @server.tool()
    def increment(by: int = 1) -> int:
        """Add `by` to the shared counter and return its new value."""
        nonlocal count
        count += by
        return count

    @server.tool()
    def current() -> int:
        """The shared counter's value."""
        return count

    return server


_SERVERS = {"notes": notes_server, "counter": counter_server}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in _SERVERS:
        print(f"usage: python -m mcpstore_proxy.demo {{{'|'.join(_SERVERS)}}}", file=sys.stderr)
        return 2
    _SERVERS[argv[0]]().run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
