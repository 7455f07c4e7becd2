"""A benchmark upstream with many tools: the SDK's low-level server over stdio, `--count` tools named `NAME_tool_I`.

    python bench/many_tools_server.py --count 20 --name u00

Every tool takes one string argument and echoes it back. bench/scale.py starts 50 of these behind one proxy to
measure `tools/list` over 1,000 tools.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server


def tools(name: str, count: int) -> list[types.Tool]:
    return [
        types.Tool(
            name=f"{name}_tool_{index}",
            description=f"Tool {index} of {name}: return the text unchanged.",
            input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        )
        for index in range(count)
    ]


def build(name: str, count: int) -> Server[Any]:
    listing = types.ListToolsResult(tools=tools(name, count))

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return listing

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        text = str((params.arguments or {}).get("text", ""))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server: Server[Any] = Server(name, on_list_tools=list_tools, on_call_tool=call_tool)
    server.middleware.clear()
    return server


async def serve(name: str, count: int) -> None:
    server = build(name, count)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="how many tools to expose")
    parser.add_argument("--name", default="many", help="the server's name and its tools' prefix")
    arguments = parser.parse_args()
    anyio.run(serve, arguments.name, arguments.count)


if __name__ == "__main__":
    main()
