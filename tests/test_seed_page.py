"""The MCPStore docs' "Session" page (doc.mcpstore.wiki/session/sessions.html), run as written but for the import,
the way the store is set up in remote mode, and the browser URL, against a real Playwright MCP started with
`--port` (its SSE endpoint), embedded and against a running proxy, each mode twice in a row as a script run twice
would (the service persists, so the second run's `add_service` must be a no-op).

`https://baidu.com` is a local page here. The page's `llm` is `BrowsingModel`, a chat model that asks for
`browser_navigate`, then `browser_take_screenshot`, then answers. Checks added to the page (`assert ...`) show
that state is kept where the page relies on it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from langchain_classic import agents
from langchain_classic.agents import AgentExecutor
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import Field

from mcpstore_proxy import MCPStore, StoreContext, UnknownToolError
from mcpstore_proxy.config import CONFIG_PATH_ENV
from tests.browser import running_playwright_sse
from tests.conversation import text_of
from tests.inprocess import running_app
from tests.support import write_config

pytestmark = [pytest.mark.anyio, pytest.mark.playwright]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

create_tool_calling_agent = cast(
    Callable[[BaseChatModel, Sequence[BaseTool], ChatPromptTemplate], Runnable[Any, Any]],
    agents.create_tool_calling_agent,  # pyright: ignore[reportUnknownMemberType]  # its llm is BaseLanguageModel[Unknown]
)
"""langchain_classic's, typed once here so that the page reads as written."""


class BrowsingModel(BaseChatModel):
    """The page's `llm`: opens `page_url`, takes a screenshot, then answers; keeps every prompt and tool list."""

    page_url: str
    prompts: list[list[BaseMessage]] = Field(default_factory=list[list[BaseMessage]])
    tool_names: list[str] = Field(default_factory=list[str])

    @property
    def _llm_type(self) -> str:
        return "browsing-script"

    def bind_tools(
        self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool], **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        self.tool_names = [tool.name for tool in tools if isinstance(tool, BaseTool)]
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.prompts.append(list(messages))
        answered = sum(isinstance(message, ToolMessage) for message in messages)
        if answered == 0:
            calls = [{"name": "browser_navigate", "args": {"url": self.page_url}, "id": "navigate"}]
            reply = AIMessage(content="", tool_calls=calls)
        elif answered == 1:
            reply = AIMessage(content="", tool_calls=[{"name": "browser_take_screenshot", "args": {}, "id": "shot"}])
        else:
            reply = AIMessage(content="页面已打开并截图")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def page_title(context: StoreContext) -> str:
    """What the current session's browser shows (the page's title line of a snapshot)."""
    snapshot = text_of(context.use_tool("browser_snapshot", {}))
    return next(line for line in snapshot.splitlines() if "Page Title:" in line).strip()


def check_the_agent_saw_the_screenshot_of_the_page(llm: BrowsingModel, context: StoreContext) -> None:
    assert {"browser_navigate", "browser_take_screenshot"} <= set(llm.tool_names)  # no doubled prefix
    *_, navigated, shot = [message for message in llm.prompts[-1] if isinstance(message, ToolMessage)]
    assert "Page Title: Alpha page" in str(navigated.content)
    # The classic AgentExecutor hands a tool's content blocks to the model JSON-encoded (format_to_tool_messages).
    blocks = json.loads(str(shot.content))
    [image] = [block for block in blocks if block["type"] == "image"]
    assert image["mime_type"] == "image/png"
    assert base64.b64decode(image["base64"]).startswith(PNG_MAGIC)
    assert page_title(context) == "- Page Title: Alpha page"  # the screenshot was taken of the navigated page


async def session_page(setup_store: Callable[[], MCPStore], browser_url: str, page_url: str) -> None:
    """The page's snippets in order (between the page's lines, `assert`s that state was kept)."""
    store = setup_store()
    store.for_store().add_service({"name": "browser", "url": browser_url})
    store.for_store().wait_service("browser")
    with store.for_store().with_session("browser_task") as s:
        s.bind_service("browser")
        s.use_tool("browser_navigate", {"url": page_url})
        assert page_title(store.for_store()) == "- Page Title: Alpha page"

    # async
    async with store.for_store().with_session_async("browser_task") as s:
        await s.bind_service_async("browser")
        await s.use_tool_async("browser_navigate", {"url": page_url})
        assert "Page Title: Alpha page" in text_of(await s.use_tool_async("browser_snapshot", {}))
    # MCPStore 1.x's with_session_async is a coroutine: its users write `async with await`.
    async with await store.for_store().with_session_async("browser_task") as s:
        await s.bind_service_async("browser")
        await s.use_tool_async("browser_navigate", {"url": page_url})
        assert "Page Title: Alpha page" in text_of(await s.use_tool_async("browser_snapshot", {}))

    # auto session
    store.for_store().session_auto()
    store.for_store().use_tool("browser_navigate", {"url": page_url})
    assert page_title(store.for_store()) == "- Page Title: Alpha page"
    with pytest.raises(UnknownToolError, match="no tool named 'browser_screenshot' here; did you mean 'browser_take_"):
        store.for_store().use_tool("browser_screenshot", {})  # not a Playwright MCP tool
    store.for_store().session_manual()

    # explicit session object
    session = store.for_store().create_session("langchain_browser")
    session.bind_service("browser")
    session.use_tool("browser_navigate", {"url": page_url})
    assert "Page Title: Alpha page" in text_of(session.use_tool("browser_snapshot", {}))
    session.close_session()

    # store mode
    with store.for_store().with_session("store_browser") as s:
        s.bind_service("browser")
        s.use_tool("browser_navigate", {"url": page_url})
        assert "Page Title: Alpha page" in text_of(s.use_tool("browser_snapshot", {}))

    # agent mode
    agent = store.for_agent("team_1")
    with agent.with_session("team1_browser") as s:
        s.bind_service("browser")
        s.use_tool("browser_navigate", {"url": page_url})
        assert page_title(agent) == "- Page Title: Alpha page"

    # LangChain
    prompt = ChatPromptTemplate.from_messages(
        [("system", "你是一个浏览器助手"), ("human", "{input}"), ("placeholder", "{agent_scratchpad}")]
    )
    llm = BrowsingModel(page_url=page_url)
    with store.for_store().with_session("langchain_browser"):
        tools = store.for_store().for_langchain().list_tools()
        agent = create_tool_calling_agent(llm, tools, prompt)
        AgentExecutor(agent=agent, tools=tools).invoke({"input": "打开百度并截图"})
        check_the_agent_saw_the_screenshot_of_the_page(llm, store.for_store())

    # LangChain under session_auto()
    llm = BrowsingModel(page_url=page_url)
    store.for_store().session_auto()
    tools = store.for_store().for_langchain().list_tools()
    agent = create_tool_calling_agent(llm, tools, prompt)
    AgentExecutor(agent=agent, tools=tools).invoke({"input": "打开百度并截图"})
    check_the_agent_saw_the_screenshot_of_the_page(llm, store.for_store())
    store.for_store().session_manual()

    store.close()  # where the script would end


@pytest.fixture
async def browser_url(tmp_path: Path) -> AsyncGenerator[str]:
    async with running_playwright_sse(tmp_path) as url:
        yield url


async def test_the_session_page_runs_twice_embedded(
    tmp_path: Path, browser_url: str, site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_PATH_ENV, str(write_config(tmp_path, {})))  # what `MCPStore.setup_store()` reads
    for _ in range(2):
        await session_page(MCPStore.setup_store, browser_url, f"{site}/alpha.html")
    assert '"browser"' in (tmp_path / "proxy.runtime-services.json").read_text()  # kept for the next run


async def test_the_session_page_runs_twice_against_a_running_proxy(tmp_path: Path, browser_url: str, site: str) -> None:
    async with running_app(write_config(tmp_path, {})) as proxy:
        for _ in range(2):
            await session_page(partial(MCPStore.setup_store, url=proxy.url), browser_url, f"{site}/alpha.html")
