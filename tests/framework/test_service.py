"""A usvc.Service: routes, health, metrics, faults, logs and the server span."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import usvc
from usvc.logs import configure

from .conftest import Serve, ServiceFactory


def add_hello(svc: usvc.Service) -> None:
    @svc.get("/hello/{name}")
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": request.match_info["name"]})


HelloServer = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def hello_server(make_service: ServiceFactory, serve: Serve) -> HelloServer:
    """Serve a Service (``make_service``'s arguments) with GET /hello/{name} and nothing else."""

    async def start(*args: str, **env: str) -> TestServer:
        svc = make_service(*args, **env)
        add_hello(svc)
        return await serve(svc.app)

    return start


async def test_a_plain_aiohttp_handler_is_served(hello_server: HelloServer) -> None:
    server = await hello_server()
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/hello/ana")) as resp:
            assert resp.status == 200
            assert await resp.json() == {"hello": "ana"}
            assert len(resp.headers["x-request-id"]) == 32


async def test_an_incoming_request_id_is_kept(hello_server: HelloServer) -> None:
    server = await hello_server()
    async with (
        aiohttp.ClientSession() as client,
        client.get(server.make_url("/hello/x"), headers={"x-request-id": "abc-123"}) as resp,
    ):
        assert resp.headers["x-request-id"] == "abc-123"


async def test_healthz_and_readyz_answer_200_when_started(
    make_service: ServiceFactory, serve: Serve
) -> None:
    server = await serve(make_service().app)
    async with aiohttp.ClientSession() as client:
        for path in ("/healthz", "/readyz"):
            async with client.get(server.make_url(path)) as resp:
                assert resp.status == 200, path


async def test_readyz_is_503_while_draining_but_healthz_stays_200(
    make_service: ServiceFactory, serve: Serve
) -> None:
    svc = make_service()
    server = await serve(svc.app)
    svc.health.draining = True
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/readyz")) as resp:
            assert resp.status == 503
            assert await resp.json() == {"status": "draining"}
        async with client.get(server.make_url("/healthz")) as resp:
            assert resp.status == 200


async def test_a_failing_readiness_check_makes_readyz_503(
    make_service: ServiceFactory, serve: Serve
) -> None:
    svc = make_service()

    @svc.readiness_check
    async def database() -> bool:
        return False

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/readyz")) as resp:
            assert resp.status == 503
            assert "database" in (await resp.json())["status"]


async def test_metrics_count_requests_by_route_template_not_raw_path(
    hello_server: HelloServer,
) -> None:
    server = await hello_server()
    async with aiohttp.ClientSession() as client:
        for name in ("a", "b", "c"):
            async with client.get(server.make_url(f"/hello/{name}")):
                pass
        for junk in ("/x1", "/x2", "/../etc"):
            async with client.get(server.make_url(junk)):
                pass
        async with client.get(server.make_url("/metrics")) as resp:
            text = await resp.text()
    assert 'http_server_requests_total{code="200",method="GET",route="/hello/{name}"} 3.0' in text
    assert 'http_server_requests_total{code="404",method="GET",route="unmatched"} 3.0' in text
    assert "/x1" not in text and "/hello/a" not in text
    assert 'usvc_build_info{env="dev",service="svc"' in text
    assert "http_server_requests_in_flight 0.0" in text


async def test_probes_and_scrapes_are_not_counted_as_traffic(
    make_service: ServiceFactory, serve: Serve
) -> None:
    server = await serve(make_service().app)
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(server.make_url("/readyz")):
                pass
        async with client.get(server.make_url("/metrics")) as resp:
            text = await resp.text()
    assert 'route="/readyz"' not in text


async def test_excluded_paths_are_configurable(
    hello_server: HelloServer, spans: InMemorySpanExporter
) -> None:
    server = await hello_server(TELEMETRY_EXCLUDED_PATHS="/hello/probe,/metrics")
    async with aiohttp.ClientSession() as client:
        for path in ("/hello/probe", "/hello/ana", "/readyz"):
            async with client.get(server.make_url(path)) as resp:
                assert resp.status == 200
        async with client.get(server.make_url("/metrics")) as resp:
            text = await resp.text()
    # only the excluded path is missing: /readyz is traffic once it is not excluded
    assert 'route="/hello/{name}"' in text and 'code="200"' in text
    assert text.count('http_server_requests_total{code="200",method="GET",route=') == 2
    paths = sorted(str((span.attributes or {})["url.path"]) for span in spans.get_finished_spans())
    assert paths == ["/hello/ana", "/readyz"]


async def test_server_span_is_named_by_method_and_route_and_carries_the_resource(
    hello_server: HelloServer, spans: InMemorySpanExporter
) -> None:
    server = await hello_server(
        "front", SERVICE_VERSION="v7", SERVICE_ENV="canary", SERVICE_INSTANCE="front-7d9f-abcde"
    )
    async with aiohttp.ClientSession() as client, client.get(server.make_url("/hello/bo")):
        pass
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /hello/{name}"
    assert span.kind is SpanKind.SERVER
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 200
    resource = span.resource.attributes
    assert resource["service.name"] == "front"
    assert resource["service.version"] == "v7"
    assert resource["deployment.environment"] == "canary"
    assert resource["service.instance.id"] == "front-7d9f-abcde"


async def test_server_span_continues_the_incoming_w3c_trace(
    hello_server: HelloServer, spans: InMemorySpanExporter
) -> None:
    server = await hello_server()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            server.make_url("/hello/x"),
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        ),
    ):
        pass
    (span,) = spans.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"


async def test_a_malformed_traceparent_starts_a_new_trace_instead_of_failing(
    hello_server: HelloServer, spans: InMemorySpanExporter
) -> None:
    server = await hello_server()
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            server.make_url("/hello/x"), headers={"traceparent": "00-zzzz-not-valid"}
        ) as resp,
    ):
        assert resp.status == 200
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id != 0


async def test_b3_deny_is_honoured_and_no_span_is_recorded(
    hello_server: HelloServer, spans: InMemorySpanExporter
) -> None:
    server = await hello_server()
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/hello/x"), headers={"b3": "0"}) as resp:
            assert resp.status == 200
    assert spans.get_finished_spans() == ()


async def test_ratio_sampler_at_zero_lets_a_deferred_b3_parent_be_dropped_but_keeps_accept(
    hello_server: HelloServer, spans: InMemorySpanExporter
) -> None:
    server = await hello_server(
        OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0"
    )
    trace_id, span_id = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
    async with aiohttp.ClientSession() as client:
        # defer: no sampled flag, so this service's (zero) ratio decides
        async with client.get(server.make_url("/hello/x"), headers={"b3": f"{trace_id}-{span_id}"}):
            pass
        assert spans.get_finished_spans() == ()
        async with client.get(
            server.make_url("/hello/x"), headers={"b3": f"{trace_id}-{span_id}-1"}
        ):
            pass
    assert len(spans.get_finished_spans()) == 1


async def test_an_unhandled_error_is_a_problem_json_500_without_traceback(
    make_service: ServiceFactory, serve: Serve
) -> None:
    svc = make_service()

    @svc.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client, client.get(server.make_url("/boom")) as resp:
        assert resp.status == 500
        assert resp.content_type == "application/problem+json"
        body = await resp.json(content_type=None)
    assert body["status"] == 500 and len(body["trace_id"]) == 32
    assert "secret internals" not in json.dumps(body)
    assert "Traceback" not in json.dumps(body)


async def test_aiohttp_http_exceptions_keep_their_status(
    make_service: ServiceFactory, serve: Serve
) -> None:
    svc = make_service()

    @svc.get("/teapot")
    async def teapot(request: web.Request) -> web.Response:
        raise web.HTTPForbidden(text="no")

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/teapot")) as resp:
            assert resp.status == 403
            assert resp.headers["x-request-id"]


class TestFaultInjection:
    async def test_the_fail_header_is_ignored_when_fault_injection_is_off(
        self, hello_server: HelloServer
    ) -> None:
        server = await hello_server()
        async with aiohttp.ClientSession() as client:
            for _ in range(20):
                async with client.get(server.make_url("/hello/x"), headers={"fail": "1"}) as resp:
                    assert resp.status == 200

    async def test_fail_probability_one_always_fails_and_zero_never(
        self, hello_server: HelloServer
    ) -> None:
        server = await hello_server(FAULT_INJECTION="true")
        async with aiohttp.ClientSession() as client:
            for value, status in (("1", 500), ("0", 200), ("1.0", 500), (" .0 ", 200), ("1.", 500)):
                async with client.get(server.make_url("/hello/x"), headers={"fail": value}) as resp:
                    assert resp.status == status, value

    async def test_fail_half_fails_about_half_of_the_requests(
        self, hello_server: HelloServer
    ) -> None:
        server = await hello_server(FAULT_INJECTION="true", ACCESS_LOG="false")
        failures = 0
        async with aiohttp.ClientSession() as client:
            for _ in range(400):
                async with client.get(server.make_url("/hello/x"), headers={"fail": "0.3"}) as resp:
                    failures += resp.status == 500
        # binomial(400, 0.3): mean 120, sd 9.2; +-5 sd
        assert 74 <= failures <= 166

    @pytest.mark.parametrize(
        "value", ["often", "1.5", "-0.1", "nan", "", "0.\u0665", "\u0660.5", "0_5", "1e-1", "inf"]
    )
    async def test_a_malformed_fail_header_is_a_400_saying_what_is_accepted(
        self, hello_server: HelloServer, value: str
    ) -> None:
        server = await hello_server(FAULT_INJECTION="true")
        async with aiohttp.ClientSession() as client:
            async with client.get(server.make_url("/hello/x"), headers={"fail": value}) as resp:
                assert resp.status == 400
                body = await resp.json(content_type=None)
        assert "probability between 0 and 1" in body["detail"]


async def test_one_json_access_line_per_request_carries_the_trace_id(
    make_service: ServiceFactory, serve: Serve
) -> None:
    svc = make_service("front")
    add_hello(svc)
    svc.access_log.stream = io.StringIO()
    server = await serve(svc.app)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    async with aiohttp.ClientSession() as client:
        async with client.get(
            server.make_url("/hello/x"),
            headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01", "x-request-id": "r1"},
        ):
            pass
    svc.access_log.flush()
    (raw,) = svc.access_log.stream.getvalue().splitlines()
    line = json.loads(raw)
    assert line["trace_id"] == trace_id
    assert line["request_id"] == "r1"
    assert line["route"] == "/hello/{name}"
    assert line["path"] == "/hello/x"
    assert line["status"] == 200
    assert line["method"] == "GET"
    assert line["service"] == "front"
    assert line["logger"] == "usvc.access"
    assert line["level"] == "info"
    assert isinstance(line["duration_ms"], float)
    assert len(line["span_id"]) == 16
    assert line["time"].endswith("Z")


async def test_framework_log_records_are_json_with_the_requests_ids(
    make_service: ServiceFactory, serve: Serve
) -> None:
    svc = make_service("front")

    @svc.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("bad")

    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure("front", "INFO", stream)
    try:
        server = await serve(svc.app)
        async with aiohttp.ClientSession() as client:
            async with client.get(server.make_url("/boom"), headers={"x-request-id": "r2"}):
                pass
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    (error,) = [line for line in lines if line["level"] == "error"]
    assert error["message"] == "unhandled error in GET /boom"
    assert error["request_id"] == "r2" and len(error["trace_id"]) == 32
    assert "RuntimeError: bad" in error["exception"]


async def test_ignored_trace_headers_are_logged_at_debug_at_most_once_a_second(
    make_service: ServiceFactory, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    svc = make_service()
    add_hello(svc)
    server = await serve(svc.app)
    with caplog.at_level(logging.DEBUG, logger="usvc"):
        async with aiohttp.ClientSession() as client:
            for _ in range(50):
                async with client.get(
                    server.make_url("/hello/x"), headers={"traceparent": "00-bad"}
                ) as resp:
                    assert resp.status == 200
    lines = [r for r in caplog.records if r.getMessage() == "ignored trace headers"]
    assert len(lines) == 1
    assert "traceparent" in lines[0].__dict__["problems"][0]
    assert svc._header_problems.suppressed == 49


async def test_a_wrong_method_is_405_with_allow_and_counted_as_unmatched(
    hello_server: HelloServer,
) -> None:
    server = await hello_server()
    async with aiohttp.ClientSession() as client:
        async with client.post(server.make_url("/hello/ana")) as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET"
            assert len(resp.headers["x-request-id"]) == 32
        async with client.get(server.make_url("/metrics")) as resp:
            text = await resp.text()
    assert 'http_server_requests_total{code="405",method="POST",route="unmatched"} 1.0' in text


async def test_an_unmatched_excluded_path_is_not_counted(
    make_service: ServiceFactory, serve: Serve
) -> None:
    server = await serve(make_service().app)
    async with aiohttp.ClientSession() as client:
        async with client.post(server.make_url("/healthz")) as resp:
            assert resp.status == 405
            assert "x-request-id" not in resp.headers
        async with client.get(server.make_url("/metrics")) as resp:
            text = await resp.text()
    assert 'route="unmatched"' not in text


async def test_routes_added_to_the_app_directly_are_observed_too(
    make_service: ServiceFactory, serve: Serve
) -> None:
    svc = make_service()
    add_hello(svc)

    async def direct(request: web.Request) -> web.Response:
        return web.Response(text="direct")

    svc.app.router.add_get("/direct", direct)
    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        for path in ("/direct", "/hello/ana", "/nowhere"):
            async with client.get(server.make_url(path)) as resp:
                assert len(resp.headers["x-request-id"]) == 32, path
        async with client.get(server.make_url("/metrics")) as resp:
            text = await resp.text()
    for route, code in (("/direct", 200), ("/hello/{name}", 200), ("unmatched", 404)):
        line = f'http_server_requests_total{{code="{code}",method="GET",route="{route}"}} 1.0'
        assert line in text, line
