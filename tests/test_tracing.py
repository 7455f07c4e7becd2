"""Tracing (`tracing: true`): a span per request, continuing the client's W3C trace from `_meta` and passing it
on to the upstream in `_meta`; off by default, and a clear start-up error without the `otel` extra.

In process (`running_app`, upstreams in memory). Spans go to this process's tracer provider, as they would under
`opentelemetry-instrument`; an `InMemorySpanExporter` collects them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any, Final

import pytest
from mcp import types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind

from mcpstore_proxy.errors import ConfigError
from mcpstore_proxy.tracing import INSTALL_HINT, start_tracing
from tests.conversation import text_of
from tests.inprocess import running_app
from tests.memory import MemoryUpstreams
from tests.support import connect, write_config

pytestmark = pytest.mark.anyio

META_ECHO: Final = Path(__file__)
"""The script the config names for the `_meta` echo upstream, which `MemoryUpstreams` serves in memory."""


def meta_echo_server() -> Server[Any]:
    """An upstream with one tool, `meta`, that answers the `_meta` of the request it received, as JSON."""

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="meta", input_schema={"type": "object"})])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(dict(ctx.meta or {})))])

    return Server("meta", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.fixture(scope="module")
def spans() -> Generator[InMemorySpanExporter]:
    """The spans this process records while the module's tests run (into its SDK tracer provider, set once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # the provider stays for the process; later spans are dropped


def config_with_meta_echo(directory: Path, **settings: Any) -> Path:
    return write_config(directory, {"meta": {"command": sys.executable, "args": [str(META_ECHO)]}}, **settings)


def upstreams() -> MemoryUpstreams:
    return MemoryUpstreams(scripts={META_ECHO: meta_echo_server})


def trace_id_of(traceparent: str) -> int:
    return int(traceparent.split("-")[1], 16)


def only(spans: list[ReadableSpan], name: str, trace_id: int) -> tuple[ReadableSpan, SpanContext]:
    """The one span called `name` in the trace, and its context."""
    [span] = [span for span in spans if span.name == name and span.context and span.context.trace_id == trace_id]
    assert span.context is not None
    return span, span.context


async def test_a_call_continues_the_clients_trace_and_the_upstream_receives_it_in_meta(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    config = config_with_meta_echo(tmp_path, tracing=True)
    tracer = trace.get_tracer("tests")
    async with running_app(config, upstreams=upstreams()) as proxy, connect(proxy.url) as client:
        # The client's SDK writes the current span's traceparent into the request's _meta (SEP-414).
        with tracer.start_as_current_span("agent step") as step:
            result = await client.call_tool("meta_meta", {})
    trace_id = step.get_span_context().trace_id
    received = json.loads(text_of(result))
    assert trace_id_of(received["traceparent"]) == trace_id

    finished = list(spans.get_finished_spans())
    _, sent = only(finished, "MCP send tools/call meta_meta", trace_id)  # the client's request, carrying traceparent
    served, served_context = only(finished, "tools/call meta_meta", trace_id)
    assert served.kind is SpanKind.SERVER
    assert served.parent is not None
    assert served.parent.span_id == sent.span_id
    assert served.instrumentation_scope is not None
    assert served.instrumentation_scope.name == "mcpstore_proxy"
    attributes = dict(served.attributes or {})
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == "meta_meta"
    assert attributes["mcpstore.upstream"] == "meta"
    assert not any("session" in name for name in attributes)  # a session id is a secret
    # The upstream's traceparent is the proxy's own request to it, a child of the proxy's span.
    forwarded, forwarded_context = only(finished, "MCP send tools/call meta", trace_id)
    assert forwarded.parent is not None
    assert forwarded.parent.span_id == served_context.span_id
    assert received["traceparent"].split("-")[2] == f"{forwarded_context.span_id:016x}"


async def test_without_tracing_the_proxy_records_no_span(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    spans.clear()
    config = config_with_meta_echo(tmp_path)
    async with running_app(config, upstreams=upstreams()) as proxy, connect(proxy.url) as client:
        await client.call_tool("meta_meta", {})
    scopes = {span.instrumentation_scope.name for span in spans.get_finished_spans() if span.instrumentation_scope}
    assert "mcpstore_proxy" not in scopes


def test_without_the_otel_extra_tracing_is_a_config_error_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError) as missing:
        start_tracing()
    assert missing.value.message == INSTALL_HINT
    assert 'pip install "mcpstore-proxy[otel]"' in INSTALL_HINT
