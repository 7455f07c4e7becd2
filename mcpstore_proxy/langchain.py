"""LangChain tools over a store scope (`pip install "mcpstore-proxy[langchain]"`).

`for_langchain().list_tools()` returns `langchain_core` tools, one per MCP tool
the scope's current session sees. Each is bound to the session current when it
was listed (the `with_session` block's, or the automatic one), so an agent
running them later still works in that session. Each tool's arguments schema is
the upstream's own, without the proxy's session argument.

Names are the proxy's, except that a tool already named after its service's
prefix keeps its own name rather than a doubled one: service `browser`'s
`browser_navigate` is `browser_navigate`, not `browser_browser_navigate`
(while no other tool listed has that name).

Results reach the agent whole (`response_format="content_and_artifact"`): a
text-only result as its text (or, without text, its structured content as
JSON), any other as LangChain standard content blocks (`text`, `image`,
`file`; audio goes as a `file` of its audio type, since a tool message takes
no audio blocks), so that a screenshot arrives as an image. The artifact is the
MCP `CallToolResult` itself. An error answer becomes an error `ToolMessage`
(`Error: ...`), logged at WARNING like every SDK call's.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from mcp import types

from mcpstore_proxy.control import ToolInfo
from mcpstore_proxy.session import checked_result, error_text

if TYPE_CHECKING:
    from langchain_core.messages.content import FileContentBlock, ImageContentBlock, TextContentBlock
    from langchain_core.tools import BaseTool

    from mcpstore_proxy.store import StoreContext

    ToolOutputBlock = TextContentBlock | ImageContentBlock | FileContentBlock
    ToolOutput = tuple[str | list[ToolOutputBlock], types.CallToolResult]

__all__ = ["LangChainAdapter", "langchain_names"]

_UNTYPED_BLOB: Final = "application/octet-stream"


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
        names = langchain_names(tools)
        return [
            StructuredTool.from_function(
                func=self._caller(tool.name, names[tool.name], *target),
                coroutine=self._async_caller(tool.name, names[tool.name], *target),
                name=names[tool.name],
                description=tool.description or names[tool.name],
                args_schema=tool.input_schema,
                infer_schema=False,
                response_format="content_and_artifact",
                handle_tool_error=_error_output,
            )
            for tool in tools
        ]

    def _caller(self, exposed: str, name: str, session: str | None, opens: bool) -> Callable[..., ToolOutput]:
        store, agent = self._context.store, self._context.agent_id or ""

        def call(**arguments: Any) -> ToolOutput:
            return _output(name, store.bridge.call(store.backend.call_tool, agent, session, exposed, arguments, opens))

        return call

    def _async_caller(
        self, exposed: str, name: str, session: str | None, opens: bool
    ) -> Callable[..., Coroutine[Any, Any, ToolOutput]]:
        store, agent = self._context.store, self._context.agent_id or ""

        async def call(**arguments: Any) -> ToolOutput:
            call_tool = store.backend.call_tool
            return _output(name, await store.bridge.call_async(call_tool, agent, session, exposed, arguments, opens))

        return call


def langchain_names(tools: list[ToolInfo]) -> dict[str, str]:
    """The name LangChain sees for each tool, by the proxy's name (see the module docstring)."""
    exposed = {tool.name for tool in tools}
    wanted = {tool.name: _undoubled(tool) for tool in tools}
    counts = Counter(wanted.values())
    return {
        name: own if counts[own] == 1 and (own == name or own not in exposed) else name for name, own in wanted.items()
    }


def _undoubled(tool: ToolInfo) -> str:
    """The tool's own name where the proxy's prefixed it with what it already starts with, else the proxy's."""
    suffix = f"_{tool.tool}"
    if tool.name.endswith(suffix) and tool.tool.startswith(f"{tool.name.removesuffix(suffix)}_"):
        return tool.tool
    return tool.name


def _output(name: str, result: types.CallToolResult) -> ToolOutput:
    """What the agent gets of `result`, with the result itself as the artifact.

    Raises:
        ToolException: the tool answered `isError: true` (LangChain hands the agent `_error_output`'s text).
    """
    from langchain_core.tools import ToolException

    checked_result(name, result, raise_on_error=False)
    if result.is_error:
        raise ToolException(error_text(result) or "(no text)")
    if all(isinstance(block, types.TextContent) for block in result.content):
        text = "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))
        if text or result.structured_content is None:
            return text, result
        return json.dumps(result.structured_content), result
    return [_block(content) for content in result.content], result


def _block(content: types.ContentBlock) -> ToolOutputBlock:
    """One MCP content block as a LangChain standard content block."""
    from langchain_core.messages.content import create_file_block, create_image_block, create_text_block

    if isinstance(content, types.TextContent):
        return create_text_block(text=content.text)
    if isinstance(content, types.ImageContent):
        return create_image_block(base64=content.data, mime_type=content.mime_type)
    if isinstance(content, types.AudioContent):
        # A tool message takes no audio blocks (langchain-core would turn the whole result into a string).
        return create_file_block(base64=content.data, mime_type=content.mime_type)
    if isinstance(content, types.ResourceLink):
        if content.mime_type and content.mime_type.startswith("image/"):
            return create_image_block(url=str(content.uri), mime_type=content.mime_type)
        return create_file_block(url=str(content.uri), mime_type=content.mime_type)
    resource = content.resource
    if isinstance(resource, types.TextResourceContents):
        return create_text_block(text=resource.text)
    mime_type = resource.mime_type or _UNTYPED_BLOB
    if mime_type.startswith("image/"):
        return create_image_block(base64=resource.blob, mime_type=mime_type)
    return create_file_block(base64=resource.blob, mime_type=mime_type)


def _error_output(error: Exception) -> str:
    """What the agent reads of a tool's error answer (LangChain marks its ToolMessage as an error)."""
    return f"Error: {error}"
