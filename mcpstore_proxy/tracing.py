"""OpenTelemetry spans for the requests the proxy answers (`tracing: true`; `pip install "mcpstore-proxy[otel]"`).

Each request gets a server span, named like `tools/call notes_add_note`, with
the attributes `mcp.method.name`, `gen_ai.tool.name` (a tools/call's),
`mcp.protocol.version`, `jsonrpc.request.id` and `mcpstore.upstream` (where
it was forwarded), and never the session id, which is a secret. Its parent is
the W3C `traceparent` (and `tracestate`) in the request's `params._meta`, as
the MCP spec allows (SEP-414); without one, it starts a trace. While it runs
it is the current span, so the SDK's client span for the upstream request is
its child, and the SDK writes that span's `traceparent` into the upstream
request's `_meta`.

Spans go to the tracer provider already set (by `opentelemetry-instrument`, or
a program that embeds the proxy); without one, `start_tracing` sets up export
over OTLP/HTTP, configured by the standard `OTEL_EXPORTER_OTLP_*` variables.
This module is imported only with `tracing: true`: off, the proxy pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any, Final, cast

from mcp import MCPError
from mcp.server.context import ServerRequestContext
from opentelemetry import trace
from opentelemetry.context import Context as TraceContext
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mcpstore_proxy.__about__ import __version__
from mcpstore_proxy.errors import ConfigError
from mcpstore_proxy.operations import Operation

__all__ = ["RequestTracing", "start_tracing"]

Context = ServerRequestContext[Any, Any]

INSTALL_HINT: Final = 'tracing: true needs OpenTelemetry: pip install "mcpstore-proxy[otel]"'
_SERVICE_NAME: Final = "mcpstore-proxy"
_W3C: Final = TraceContextTextMapPropagator()


def start_tracing() -> RequestTracing:
    """Tracing as the config asks: to the tracer provider already set, else exported over OTLP/HTTP.

    Raises:
        ConfigError: the `otel` extra is not installed.
    """
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # pyright: ignore[reportMissingImports]  # the otel extra
                OTLPSpanExporter,  # pyright: ignore[reportUnknownVariableType]
            )
        except ImportError:
            raise ConfigError(INSTALL_HINT) from None
        service_name = os.environ.get("OTEL_SERVICE_NAME") or _SERVICE_NAME
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # pyright: ignore[reportUnknownArgumentType]
        trace.set_tracer_provider(provider)  # flushed at exit: the SDK's provider shuts down then
    return RequestTracing(provider.get_tracer("mcpstore_proxy", __version__))


class RequestTracing:
    """The spans of the requests one server answers (an `operations.OperationTracer`)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @contextmanager
    def span(self, ctx: Context, operation: Operation) -> Generator[None]:
        name = ctx.params.get("name") if ctx.params else None
        tool = name if ctx.method == "tools/call" and isinstance(name, str) else None
        attributes: dict[str, str] = {"mcp.method.name": ctx.method, "mcp.protocol.version": ctx.protocol_version}
        if ctx.request_id is not None:
            attributes["jsonrpc.request.id"] = str(ctx.request_id)
        if tool is not None:
            attributes["gen_ai.tool.name"] = tool
            attributes["gen_ai.operation.name"] = "execute_tool"
        with self._tracer.start_as_current_span(
            f"{ctx.method} {tool}" if tool else ctx.method,
            context=_parent(ctx.meta),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except MCPError as error:
                span.set_attribute("error.type", str(error.error.code))
                span.set_status(StatusCode.ERROR, error.error.message)
                raise
            except Exception as error:
                span.set_attribute("error.type", type(error).__qualname__)
                span.set_status(StatusCode.ERROR)
                raise
            finally:
                if operation.upstream:
                    span.set_attribute("mcpstore.upstream", operation.upstream)
            if operation.outcome == "error":
                span.set_attribute("error.type", "tool_error")
                span.set_status(StatusCode.ERROR)


def _parent(meta: Any) -> TraceContext | None:
    """The trace context of a `_meta` that carries a valid `traceparent`, else None (the span starts a trace)."""
    if not isinstance(meta, dict):
        return None
    fields = cast(dict[str, Any], meta)
    carrier = {key: str(fields[key]) for key in ("traceparent", "tracestate") if key in fields}
    if "traceparent" not in carrier:
        return None
    try:
        context = _W3C.extract(carrier)
    except (ValueError, TypeError):
        return None
    return context if trace.get_current_span(context).get_span_context().is_valid else None
