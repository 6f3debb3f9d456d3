"""Spans leave the process through real exporters and arrive whole on shutdown."""

from __future__ import annotations

import json
import time

import aiohttp
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import usvc
from usvc.tracing import Tracing, build_sampler

from .conftest import Serve


def collector() -> tuple[web.Application, list[tuple[str, bytes]]]:
    received: list[tuple[str, bytes]] = []

    async def accept(request: web.Request) -> web.Response:
        received.append((request.path, await request.read()))
        return web.Response(status=200 if request.path == "/v1/traces" else 202)

    app = web.Application()
    app.router.add_post("/{tail:.*}", accept)
    return app, received


async def run_one_request(settings: usvc.Settings, serve: Serve) -> None:
    svc = usvc.Service(settings.service_name, settings=settings)

    @svc.get("/")
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/")) as resp:
            assert resp.status == 200
    await server.close()  # runs cleanup_ctx: the exporter is flushed


async def test_otlp_http_exporter_delivers_the_server_span_on_shutdown(serve: Serve) -> None:
    app, received = collector()
    receiver = await serve(app)
    settings = usvc.Settings.from_env(
        "front",
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": str(receiver.make_url("")).rstrip("/"),
            "SERVICE_VERSION": "v9",
        },
    )
    await run_one_request(settings, serve)
    bodies = [body for path, body in received if path == "/v1/traces"]
    assert bodies, received
    export = ExportTraceServiceRequest.FromString(bodies[0])
    (resource_spans,) = export.resource_spans
    attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attrs["service.name"] == "front"
    assert attrs["service.version"] == "v9"
    names = [s.name for ss in resource_spans.scope_spans for s in ss.spans]
    assert names == ["GET /"]


async def test_zipkin_exporter_delivers_json_spans_on_shutdown(serve: Serve) -> None:
    app, received = collector()
    receiver = await serve(app)
    settings = usvc.Settings.from_env(
        "clock",
        {
            "OTEL_TRACES_EXPORTER": "zipkin",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": str(receiver.make_url("/api/v2/spans")),
        },
    )
    await run_one_request(settings, serve)
    (path, body), *_ = received
    assert path == "/api/v2/spans"
    (span,) = json.loads(body)
    assert span["name"] == "GET /"
    assert span["kind"] == "SERVER"
    assert span["localEndpoint"]["serviceName"] == "clock"


async def test_an_unreachable_collector_does_not_block_or_fail_requests(serve: Serve) -> None:
    settings = usvc.Settings.from_env(
        "front",
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
    )
    started = time.monotonic()
    await run_one_request(settings, serve)  # asserts the 200 itself
    # bounded by OTEL_EXPORTER_OTLP_TIMEOUT (2 s): well before the spec's 10 s default
    # (with retries) would have run out once
    assert time.monotonic() - started < 10 / 2


def test_sdk_disabled_creates_no_recording_spans() -> None:
    settings = usvc.Settings.from_env("x", {"OTEL_SDK_DISABLED": "true"})
    tracing = Tracing(settings)
    assert tracing.enabled is False
    assert not tracing.provider._active_span_processor._span_processors


def test_sampler_description_names_the_ratio() -> None:
    settings = usvc.Settings.from_env(
        "x", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )
    assert "0.25" in build_sampler(settings).get_description()
