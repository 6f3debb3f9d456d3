"""usvc's own spans behave as OpenTelemetry spans for users and exporters."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode

import usvc
from usvc.spans import NOT_SAMPLED, SAMPLED, UnsampledSpan, UsvcSpan, span_context
from usvc.tracing import Tracing

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
        span.set_attribute("tags", ["a", "b"])
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


class Recorder(SpanProcessor):
    """A user's own span processor: what it saw start and end."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int, Context | None]] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started.append((span.name, span.context.span_id, parent_context))
        span.set_attribute("added.on_start", "yes")

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


class Sequential(IdGenerator):
    """Ids anyone can predict: 1, 2, 3... for spans, 0xabc... for traces."""

    def __init__(self) -> None:
        self.spans = 0
        self.traces = 0

    def generate_span_id(self) -> int:
        self.spans += 1
        return self.spans

    def generate_trace_id(self) -> int:
        self.traces += 1
        return 0xABC0 + self.traces

    def is_trace_id_random(self) -> bool:
        return False


async def test_usvcs_spans_honour_the_processor_contract_limits_and_id_generator(
    serve: Serve, spans: InMemorySpanExporter
) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers["traceparent"])
        return web.Response()

    upstream_app = web.Application()
    upstream_app.router.add_get("/", record)
    upstream = await serve(upstream_app)
    settings = usvc.Settings.from_env("front", {"OTEL_TRACES_EXPORTER": "none"})
    tracing = Tracing(
        settings,
        spans,
        batch=False,
        id_generator=Sequential(),
        span_limits=SpanLimits(max_span_attributes=6, max_span_attribute_length=8, max_events=2),
    )
    recorder = Recorder()
    tracing.provider.add_span_processor(recorder)
    svc = usvc.Service("front", settings=settings, tracing=tracing)

    @svc.get("/work")
    async def work(request: web.Request) -> web.Response:
        span = trace.get_current_span()
        span.set_attribute("long", "x" * 100)
        for i in range(10):
            span.set_attribute(f"many.{i}", i)
        for i in range(3):
            span.add_event(f"event {i}")
        async with svc.egress.get(upstream.make_url("/")):
            pass
        return web.Response()

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/work")) as resp:
            assert resp.status == 200

    # on_start and on_end, both, for the server span and the client span
    assert [(name, span_id) for name, span_id, _ in recorder.started] == [
        ("GET /work", 1),
        ("GET", 2),
    ]
    assert [s.name for s in recorder.ended] == ["GET", "GET /work"]
    client_parent = recorder.started[1][2]
    assert client_parent is not None
    assert trace.get_current_span(client_parent).get_span_context().span_id == 1
    # ids from the generator; not random, so no W3C random-trace-id flag goes out
    server_span = recorder.ended[1]
    assert server_span.context.trace_id == 0xABC1
    assert seen == [f"00-{0xABC1:032x}-{2:016x}-01"]
    # span limits: values cut to 8 characters, at most 6 attributes, drops counted
    attributes = server_span.attributes or {}
    assert len(attributes) == 6
    assert all(len(v) <= 8 for v in attributes.values() if isinstance(v, str))
    assert server_span.dropped_attributes > 0
    assert [event.name for event in server_span.events] == ["event 1", "event 2"]
    assert (recorder.ended[0].attributes or {}).get("added.on_start") == "yes"


async def test_with_no_processor_no_span_is_built_for_export_and_one_added_later_gets_spans(
    serve: Serve,
) -> None:
    # OTEL_TRACES_EXPORTER=none: the provider has no processor, so nothing is
    # handed over; a processor added while the service runs gets what ends after.
    settings = usvc.Settings.from_env("quiet", {"OTEL_TRACES_EXPORTER": "none"})
    svc = usvc.Service("quiet", settings=settings)
    built: list[str] = []
    readable = UsvcSpan.readable

    def counting(span: UsvcSpan) -> ReadableSpan:
        built.append(span.name)
        return readable(span)

    @svc.get("/")
    async def index(request: web.Request) -> web.Response:
        assert trace.get_current_span().is_recording()  # sampled all the same
        return web.Response(text="ok")

    server = await serve(svc.app)
    UsvcSpan.readable = counting  # type: ignore[method-assign,assignment]
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(server.make_url("/")) as resp:
                assert resp.status == 200
            assert built == []
            mine = InMemorySpanExporter()
            svc.tracing.provider.add_span_processor(SimpleSpanProcessor(mine))
            async with client.get(server.make_url("/")) as resp:
                assert resp.status == 200
    finally:
        UsvcSpan.readable = readable  # type: ignore[method-assign]
    assert built == ["GET /"]
    assert [span.name for span in mine.get_finished_spans()] == ["GET /"]


async def test_svc_span_is_a_child_of_the_server_span_recorded_only_when_sampled(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    svc = make_service(OTEL_TRACES_SAMPLER="parentbased_always_on")
    seen: dict[str, object] = {}  # of the last request (the unsampled one)
    first: dict[str, object] = {}

    @svc.get("/")
    async def index(request: web.Request) -> web.Response:
        span = svc.span("ask", kind=SpanKind.CLIENT, attributes={"server.address": "clock"})
        seen["recording"] = span.is_recording()
        seen["same trace"] = (
            span.get_span_context().trace_id == trace.get_current_span().get_span_context().trace_id
        )
        seen["own id"] = (
            span.get_span_context().span_id != trace.get_current_span().get_span_context().span_id
        )
        span.set_attribute("usvc.outcome", "ok")
        span.set_attribute("usvc.fallback", False)
        span.end()
        with svc.tracer.start_as_current_span("mine"):
            nested = svc.span("nested")
            nested.end()
        first.setdefault("nested", nested)
        return web.Response(text="ok")

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/")) as resp:
            assert resp.status == 200
        # An unsampled caller: a non-recording span, still with an id of its own.
        unsampled = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-00"}
        async with client.get(server.make_url("/"), headers=unsampled) as resp:
            assert resp.status == 200
    assert seen["recording"] is False and seen["same trace"] and seen["own id"]
    by_name = {span.name: span for span in spans.get_finished_spans()}
    ask, server_span = by_name["ask"], by_name["GET /"]
    assert ask.kind is SpanKind.CLIENT
    assert ask.parent is not None and ask.parent.span_id == server_span.context.span_id
    assert ask.context.trace_id == server_span.context.trace_id
    assert dict(ask.attributes or {}) == {
        "server.address": "clock",
        "usvc.outcome": "ok",
        "usvc.fallback": False,
    }
    # Under a span the handler made current: the SDK's span, a child of that one.
    nested = by_name["nested"]
    assert not isinstance(first["nested"], UsvcSpan)
    assert nested.parent is not None and nested.parent.span_id == by_name["mine"].context.span_id


def test_usvc_builds_the_same_span_context_as_the_constructor() -> None:
    for flags in (SAMPLED, NOT_SAMPLED):
        for remote in (True, False):
            made = span_context((1 << 128) - 1, 7, flags, remote)
            expected = SpanContext((1 << 128) - 1, 7, remote, flags)
            assert made == expected
            assert (made.is_valid, made.is_remote, made.trace_flags) == (True, remote, flags)


def test_an_unsampled_span_makes_its_context_when_asked() -> None:
    span = UnsampledSpan(5, 6, NOT_SAMPLED)
    assert isinstance(span, NonRecordingSpan)
    assert not span.is_recording()
    assert span.get_span_context() == SpanContext(5, 6, False, NOT_SAMPLED)
    assert span.get_span_context() is span.get_span_context()
    assert "trace_id=0x" in repr(span)
