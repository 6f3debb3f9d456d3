"""usvc's own spans behave as OpenTelemetry spans for users and exporters."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from .conftest import Serve, ServiceFactory


async def test_a_users_span_in_a_handler_is_a_child_of_the_server_span(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    svc = make_service()
    seen: dict[str, int] = {}

    @svc.get("/work")
    async def work(request: web.Request) -> web.Response:
        seen["current"] = trace.get_current_span().get_span_context().span_id
        with svc.tracer.start_as_current_span("compute") as inner:
            inner.set_attribute("items", 3)
        return web.Response(text="ok")

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/work")):
            pass
    by_name = {span.name: span for span in spans.get_finished_spans()}
    server_span, inner = by_name["GET /work"], by_name["compute"]
    assert seen["current"] == server_span.context.span_id
    assert inner.parent is not None and inner.parent.span_id == server_span.context.span_id
    assert inner.context.trace_id == server_span.context.trace_id
    assert inner.attributes == {"items": 3}


async def test_span_events_status_and_a_users_processor_reach_the_export(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    svc = make_service("front")
    mine = InMemorySpanExporter()
    svc.tracing.provider.add_span_processor(SimpleSpanProcessor(mine))

    @svc.get("/fails")
    async def fails(request: web.Request) -> web.Response:
        span = trace.get_current_span()
        span.set_attribute("order.id", "o-1")
        span.set_attribute("tags", ["a", "b"])  # type: ignore[arg-type]
        try:
            raise ValueError("no stock")
        except ValueError as exc:
            span.record_exception(exc)
        span.add_event("retrying", {"attempt": 2})
        return web.Response(status=503)

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/fails")) as resp:
            assert resp.status == 503
    (span,) = spans.get_finished_spans()
    assert mine.get_finished_spans()[0].context == span.context
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["order.id"] == "o-1"
    assert span.attributes["tags"] == ("a", "b")  # cleaned as the SDK cleans it
    assert span.attributes["http.response.status_code"] == 503
    names = [event.name for event in span.events]
    assert names == ["exception", "retrying"]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.type"] == "ValueError"
    assert span.instrumentation_scope is not None and span.instrumentation_scope.name == "usvc"
    assert span.resource.attributes["service.name"] == "front"
    assert span.end_time is not None and span.start_time is not None
    assert span.end_time >= span.start_time


async def test_an_unsampled_request_exports_nothing_but_still_propagates(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    svc = make_service(OTEL_TRACES_SAMPLER="always_off")

    @svc.get("/")
    async def index(request: web.Request) -> web.Response:
        current = trace.get_current_span()
        assert not current.is_recording()
        return web.Response(text=f"{current.get_span_context().trace_id:032x}")

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/")) as resp:
            trace_id = await resp.text()
    assert spans.get_finished_spans() == ()
    assert len(trace_id) == 32 and int(trace_id, 16) != 0
