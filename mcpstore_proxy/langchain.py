"""LangChain tools over a store scope (`pip install "mcpstore-proxy[langchain]"`).

`for_langchain().list_tools()` returns `langchain_core` tools, one per MCP tool
the scope's current session sees. Each is bound to the session current when it
was listed (the `with_session` block's, or the automatic one), so an agent
running them later still works in that session. Each tool's arguments schema is
the upstream's own, without the proxy's session argument.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mcp import types

from mcpstore_proxy.control import ToolInfo

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

    from mcpstore_proxy.store import StoreContext

__all__ = ["LangChainAdapter"]


class LangChainAdapter:
    """LangChain's view of one store scope."""

    def __init__(self, context: StoreContext) -> None:
        self._context = context

    def list_tools(self) -> list[BaseTool]:
        return self._as_tools(self._context.list_tools(), self._context.session_target())

    async def list_tools_async(self) -> list[BaseTool]:
        return self._as_tools(await self._context.list_tools_async(), self._context.session_target())

    def _as_tools(self, tools: list[ToolInfo], target: tuple[str | None, bool]) -> list[BaseTool]:
        try:
            from langchain_core.tools import StructuredTool
        except ImportError:
            raise ImportError('for_langchain() needs langchain-core: pip install "mcpstore-proxy[langchain]"') from None
        return [
            StructuredTool.from_function(
                func=self._caller(tool.name, *target),
                coroutine=self._async_caller(tool.name, *target),
                name=tool.name,
                description=tool.description or tool.name,
                args_schema=tool.input_schema,
                infer_schema=False,
            )
            for tool in tools
        ]

    def _caller(self, name: str, session: str | None, opens: bool) -> Any:
        store, agent = self._context.store, self._context.agent_id or ""

        def call(**arguments: Any) -> str:
            return _as_text(store.bridge.call(store.backend.call_tool, agent, session, name, arguments, opens))

        return call

    def _async_caller(self, name: str, session: str | None, opens: bool) -> Any:
        store, agent = self._context.store, self._context.agent_id or ""

        async def call(**arguments: Any) -> str:
            call_tool = store.backend.call_tool
            return _as_text(await store.bridge.call_async(call_tool, agent, session, name, arguments, opens))

        return call


def _as_text(result: types.CallToolResult) -> str:
    """What a LangChain agent reads: the text content, else the structured content as JSON."""
    text = "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))
    if text or result.structured_content is None:
        return f"Error: {text}" if result.is_error else text
    return json.dumps(result.structured_content)
