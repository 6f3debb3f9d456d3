"""The egress client: propagation, retries, deadlines and errors that name the hop."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind

import usvc
from tests.procs import free_port

from .conftest import Serve, ServiceFactory

Seen = list[dict[str, str]]


async def recording_upstream(
    serve: Serve, behaviour: Callable[[int], Awaitable[web.Response]] | None = None
) -> tuple[TestServer, Seen]:
    """A bare aiohttp upstream that records each request's headers."""
    seen: Seen = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        if behaviour is not None:
            return await behaviour(len(seen))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await serve(app), seen


SLOW = 10.0  # too_slow's answer time: a test that is cut short takes less than half of it


async def too_slow(n: int) -> web.Response:
    """An upstream that answers long after any deadline the tests set."""
    await asyncio.sleep(SLOW)
    return web.Response()


def caller(make_service: ServiceFactory, upstream: str, **env: str) -> usvc.Service:
    svc = make_service("front", UPSTREAM_URI=upstream, **env)

    @svc.route("*", "/call")
    async def call(request: web.Request) -> web.Response:
        assert svc.settings.upstream_uri is not None
        async with svc.egress.request(request.method, svc.settings.upstream_uri) as upstream:
            return web.Response(status=upstream.status, text=await upstream.text())

    return svc


async def test_trace_context_and_allow_listed_headers_reach_the_upstream(
    make_service: ServiceFactory, serve: Serve
) -> None:
    upstream, seen = await recording_upstream(serve)
    front = await serve(caller(make_service, str(upstream.make_url("/"))).app)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            front.make_url("/call"),
            headers={
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                "tracestate": "congo=t61rcWkgMzE",
                "baggage": "userId=alice",
                "x-dev-user": "betaUser",
                "x-request-id": "req-1",
                "authorization": "Bearer secret",
                "cookie": "session=secret",
                "x-custom": "nope",
            },
        ) as resp,
    ):
        assert resp.status == 200
    (lowered,) = seen
    assert lowered["traceparent"].startswith(f"00-{trace_id}-")
    assert not lowered["traceparent"].startswith(f"00-{trace_id}-00f067aa0ba902b7")
    assert lowered["tracestate"] == "congo=t61rcWkgMzE"
    assert lowered["baggage"] == "userId=alice"
    assert lowered["x-dev-user"] == "betaUser"
    assert lowered["x-request-id"] == "req-1"
    # OpenTelemetry's default formats: W3C only for a W3C caller.
    assert not {"b3", "x-b3-traceid", "x-b3-spanid"} & set(lowered)
    for leaked in ("authorization", "cookie", "x-custom"):
        assert leaked not in lowered


@pytest.mark.parametrize(
    ("env", "sent", "expected"),
    [
        # A B3 caller (a Zipkin-tracer sidecar) is answered in kind, whatever is configured.
        ({}, {"b3": "4bf92f3577b34da6-00f067aa0ba902b7-1"}, {"b3"}),
        (
            {},
            {"x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736", "x-b3-spanid": "00f067aa0ba902b7"},
            {"x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled"},
        ),
        # Configured, B3 goes out for a W3C caller too.
        (
            {"OTEL_PROPAGATORS": "tracecontext,baggage,b3multi"},
            {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
            {"x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled"},
        ),
    ],
)
async def test_b3_reaches_the_upstream_in_the_callers_form_or_when_configured(
    make_service: ServiceFactory,
    serve: Serve,
    env: dict[str, str],
    sent: dict[str, str],
    expected: set[str],
) -> None:
    upstream, seen = await recording_upstream(serve)
    front = await serve(caller(make_service, str(upstream.make_url("/")), **env).app)
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/call"), headers=sent):
        pass
    (lowered,) = seen
    b3_written = {name for name in lowered if name == "b3" or name.startswith("x-b3-")}
    assert b3_written == expected
    trace = lowered["traceparent"].split("-")[1]
    b3_trace = lowered["b3"].split("-")[0] if "b3" in lowered else lowered["x-b3-traceid"]
    assert int(trace, 16) == int(b3_trace, 16)  # one trace, in both (a 64-bit id widened)


async def test_a_request_and_its_egress_call_make_no_get_running_loop_call(
    make_service: ServiceFactory, serve: Serve
) -> None:
    # CPython 3.11's asyncio.get_running_loop() makes a getpid() system call each time;
    # the service and its egress keep the loop they started on instead.
    upstream, _ = await recording_upstream(serve)
    front = await serve(caller(make_service, str(upstream.make_url("/"))).app)
    calls: list[str] = []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") == "get_running_loop":
            calls.append(event)

    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/call")) as resp:  # connections made, warm
            assert resp.status == 200
        sys.setprofile(profile)
        try:
            async with client.get(front.make_url("/call")) as resp:
                assert resp.status == 200
        finally:
            sys.setprofile(None)
    assert calls == []


async def test_the_egress_span_is_a_child_of_the_server_span_and_parent_of_the_upstream(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    upstream, seen = await recording_upstream(serve)
    front = await serve(caller(make_service, str(upstream.make_url("/"))).app)
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/call")):
        pass
    by_kind = {span.kind: span for span in spans.get_finished_spans()}
    server, client_span = by_kind[SpanKind.SERVER], by_kind[SpanKind.CLIENT]
    assert client_span.parent is not None and client_span.parent.span_id == server.context.span_id
    assert client_span.context.trace_id == server.context.trace_id
    sent = seen[0]["traceparent"].split("-")
    assert int(sent[1], 16) == server.context.trace_id
    assert int(sent[2], 16) == client_span.context.span_id


async def test_idempotent_calls_are_retried_on_503_until_success(
    make_service: ServiceFactory, serve: Serve
) -> None:
    async def flaky(n: int) -> web.Response:
        return web.Response(status=503 if n < 3 else 200, text=str(n))

    upstream, seen = await recording_upstream(serve, flaky)
    front = await serve(caller(make_service, str(upstream.make_url("/")), EGRESS_RETRIES="2").app)
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/call")) as resp:
        assert resp.status == 200
        assert await resp.text() == "3"
    assert len(seen) == 3
    # each attempt is its own client span: its own span id in traceparent
    assert len({h["traceparent"] for h in seen}) == 3


async def test_post_is_never_retried(make_service: ServiceFactory, serve: Serve) -> None:
    async def unavailable(n: int) -> web.Response:
        return web.Response(status=503)

    upstream, seen = await recording_upstream(serve, unavailable)
    front = await serve(caller(make_service, str(upstream.make_url("/")), EGRESS_RETRIES="3").app)
    async with aiohttp.ClientSession() as client, client.post(front.make_url("/call")) as resp:
        assert resp.status == 503
    assert len(seen) == 1


async def test_a_500_is_handed_to_the_handler_not_retried(
    make_service: ServiceFactory, serve: Serve
) -> None:
    async def broken(n: int) -> web.Response:
        return web.Response(status=500, text="bad")

    upstream, seen = await recording_upstream(serve, broken)
    front = await serve(caller(make_service, str(upstream.make_url("/")), EGRESS_RETRIES="3").app)
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/call")) as resp:
        assert resp.status == 500
        assert await resp.text() == "bad"
    assert len(seen) == 1


async def test_an_unreachable_upstream_is_a_fast_502_naming_it(
    make_service: ServiceFactory, serve: Serve
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    front = await serve(caller(make_service, url, EGRESS_RETRIES="2", EGRESS_TIMEOUT="10").app)
    started = time.monotonic()
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/call")) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 502
        assert resp.content_type == "application/problem+json"
    # each refusal noticed at once: all three attempts long before one egress timeout
    assert time.monotonic() - started < 10 / 2
    assert body["upstream"] == f"127.0.0.1:{port}"
    assert body["service"] == "front"
    assert body["attempts"] == 3
    assert f"127.0.0.1:{port}" in body["detail"]
    assert len(body["trace_id"]) == 32


async def test_a_slow_upstream_is_a_504_within_the_request_deadline(
    make_service: ServiceFactory, serve: Serve
) -> None:
    upstream, seen = await recording_upstream(serve, too_slow)
    front = await serve(
        caller(
            make_service,
            str(upstream.make_url("/")),
            REQUEST_DEADLINE="0.6",
            EGRESS_TIMEOUT="0.25",
            EGRESS_RETRIES="5",
        ).app
    )
    started = time.monotonic()
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/call")) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 504
    elapsed = time.monotonic() - started
    # retried until the deadline, not past it: the deadline, not the 6 attempts, ended it
    assert 2 <= len(seen) < 6, len(seen)
    assert elapsed < SLOW / 2, elapsed
    assert body["title"] == "Gateway Timeout"
    assert body["upstream"].startswith("127.0.0.1:")


async def test_envoys_expected_timeout_header_shortens_the_deadline(
    make_service: ServiceFactory, serve: Serve
) -> None:
    upstream, _ = await recording_upstream(serve, too_slow)
    front = await serve(
        caller(make_service, str(upstream.make_url("/")), REQUEST_DEADLINE="10").app
    )
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            front.make_url("/call"), headers={"x-envoy-expected-rq-timeout-ms": "300"}
        ) as resp,
    ):
        assert resp.status == 504
    assert time.monotonic() - started < 10 / 2  # the header's 300 ms, not REQUEST_DEADLINE's 10 s


async def test_egress_metrics_count_calls_by_upstream_and_outcome(
    make_service: ServiceFactory, serve: Serve
) -> None:
    async def flaky(n: int) -> web.Response:
        return web.Response(status=503 if n == 1 else 200)

    upstream, _ = await recording_upstream(serve, flaky)
    svc = caller(make_service, str(upstream.make_url("/")), EGRESS_RETRIES="1")
    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/call")):
            pass
        async with client.get(front.make_url("/metrics")) as resp:
            text = await resp.text()
    host = f"127.0.0.1:{upstream.port}"
    assert f'http_client_requests_total{{method="GET",outcome="503",upstream="{host}"}} 1.0' in text
    assert f'http_client_requests_total{{method="GET",outcome="200",upstream="{host}"}} 1.0' in text


async def test_egress_outside_a_request_starts_a_trace_of_its_own(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    upstream, seen = await recording_upstream(serve)
    svc = make_service()
    await serve(svc.app)  # starts the egress session
    async with svc.egress.get(upstream.make_url("/")) as resp:
        assert resp.status == 200
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert seen[0]["traceparent"].split("-")[1] == f"{span.context.trace_id:032x}"


async def test_a_generated_request_id_is_forwarded_and_returned(
    make_service: ServiceFactory, serve: Serve
) -> None:
    upstream, seen = await recording_upstream(serve)
    front = await serve(caller(make_service, str(upstream.make_url("/"))).app)
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/call")) as resp:
        returned = resp.headers["x-request-id"]
    assert seen[0]["x-request-id"] == returned


async def test_a_baggage_header_at_the_specs_8192_byte_limit_is_accepted_and_forwarded(
    make_service: ServiceFactory, serve: Serve
) -> None:
    upstream, seen = await recording_upstream(serve)
    front = await serve(caller(make_service, str(upstream.make_url("/"))).app)
    members = [f"k{i:03d}={'v' * 120}" for i in range(64)]
    baggage = ",".join(members)[:8192].rsplit(",", 1)[0]
    assert len(baggage) > 7900
    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/call"), headers={"baggage": baggage}) as resp:
            assert resp.status == 200
    assert seen[0]["baggage"] == baggage


async def test_client_spans_record_the_outcome_of_each_attempt(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    async def flaky(n: int) -> web.Response:
        return web.Response(status=503 if n == 1 else 200)

    upstream, _ = await recording_upstream(serve, flaky)
    front = await serve(caller(make_service, str(upstream.make_url("/")), EGRESS_RETRIES="1").app)
    port = free_port()
    dead = await serve(caller(make_service, f"http://127.0.0.1:{port}/", EGRESS_RETRIES="0").app)
    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/call")) as resp:
            assert resp.status == 200
        async with client.get(dead.make_url("/call")) as resp:
            assert resp.status == 502
    clients = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    outcomes = [
        (
            s.attributes.get("http.response.status_code"),
            s.attributes.get("error.type"),
            s.status.status_code.name,
            s.attributes.get("http.request.resend_count", 0),
        )
        for s in clients
        if s.attributes is not None
    ]
    assert outcomes == [
        (503, None, "ERROR", 0),
        (200, None, "UNSET", 1),
        (None, "connect_error", "ERROR", 0),
    ]


async def test_a_call_straight_through_the_egress_session_is_propagated_traced_and_counted(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    upstream, seen = await recording_upstream(serve)
    svc = make_service("front")

    @svc.get("/direct")
    async def direct(request: web.Request) -> web.Response:
        async with svc.egress.session.get(upstream.make_url("/")) as resp:
            return web.Response(text=await resp.text())

    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/direct"), headers={"x-dev-user": "betaUser"}):
            pass
        async with client.get(front.make_url("/metrics")) as resp:
            text = await resp.text()
    (client_span,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    sent = seen[0]["traceparent"].split("-")
    assert int(sent[1], 16) == client_span.context.trace_id
    assert int(sent[2], 16) == client_span.context.span_id
    assert seen[0]["x-dev-user"] == "betaUser"
    host = f"127.0.0.1:{upstream.port}"
    assert f'http_client_requests_total{{method="GET",outcome="200",upstream="{host}"}} 1.0' in text


async def test_a_users_own_session_with_the_middleware_is_instrumented(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    upstream, seen = await recording_upstream(serve)
    svc = make_service("front")

    @svc.get("/own")
    async def own(request: web.Request) -> web.Response:
        async with (
            aiohttp.ClientSession(
                middlewares=[svc.egress.middleware], response_class=usvc.UpstreamResponse
            ) as session,
            session.get(upstream.make_url("/")) as resp,
        ):
            return web.Response(text=await resp.text())

    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/own")) as resp:
        assert resp.status == 200
        request_id = resp.headers["x-request-id"]
    by_kind = {span.kind: span for span in spans.get_finished_spans()}
    server, client_span = by_kind[SpanKind.SERVER], by_kind[SpanKind.CLIENT]
    assert client_span.parent is not None and client_span.parent.span_id == server.context.span_id
    assert seen[0]["x-request-id"] == request_id


async def test_request_and_response_hooks_add_attributes_to_each_attempts_span(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    async def flaky(n: int) -> web.Response:
        return web.Response(status=503 if n == 1 else 200, headers={"x-served-by": f"pod-{n}"})

    upstream, _ = await recording_upstream(serve, flaky)
    svc = caller(make_service, str(upstream.make_url("/")), EGRESS_RETRIES="1")

    @svc.egress.request_hook
    def tag_request(span: Span, request: aiohttp.ClientRequest) -> None:
        span.set_attribute("app.path", request.url.path)

    @svc.egress.response_hook
    def tag_response(
        span: Span, request: aiohttp.ClientRequest, result: aiohttp.ClientResponse | BaseException
    ) -> None:
        if isinstance(result, aiohttp.ClientResponse):
            span.set_attribute("app.served_by", result.headers["x-served-by"])

    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/call")) as resp:
        assert resp.status == 200
    clients = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [(s.attributes or {}).get("app.served_by") for s in clients] == ["pod-1", "pod-2"]
    assert all((s.attributes or {}).get("app.path") == "/" for s in clients)


async def test_a_hook_that_raises_does_not_fail_the_call(
    make_service: ServiceFactory, serve: Serve
) -> None:
    upstream, seen = await recording_upstream(serve)
    svc = caller(make_service, str(upstream.make_url("/")))

    @svc.egress.request_hook
    def broken(span: Span, request: aiohttp.ClientRequest) -> None:
        raise RuntimeError("bug in a hook")

    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/call")) as resp:
        assert resp.status == 200
    assert len(seen) == 1


async def test_duplicated_pass_through_headers_are_not_forwarded(
    make_service: ServiceFactory, serve: Serve
) -> None:
    upstream, seen = await recording_upstream(serve)
    front = await serve(caller(make_service, str(upstream.make_url("/"))).app)
    sent = [
        ("x-dev-user", "betaUser"),
        ("x-dev-user", "stressTest"),
        ("x-request-id", "req-1"),
        ("x-request-id", "req-2"),
    ]
    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/call"), headers=CIMultiDict(sent)) as resp:
            assert resp.status == 200
            returned = resp.headers["x-request-id"]
    assert "x-dev-user" not in seen[0]
    assert returned not in ("req-1", "req-2") and seen[0]["x-request-id"] == returned


async def test_with_aiohttps_own_response_class_the_attempt_ends_at_the_response_head(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    upstream, seen = await recording_upstream(serve)
    svc = make_service("front")
    ended_before_body: list[int] = []

    @svc.get("/plain")
    async def plain(request: web.Request) -> web.Response:
        async with (
            aiohttp.ClientSession(middlewares=[svc.egress.middleware]) as session,
            session.get(upstream.make_url("/")) as resp,
        ):
            ended_before_body.append(len(spans.get_finished_spans()))
            return web.Response(text=await resp.text())

    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/plain")) as resp:
            assert resp.status == 200
        async with client.get(front.make_url("/metrics")) as resp:
            text = await resp.text()
    assert ended_before_body == [1]  # the client span, before the body was read
    assert "traceparent" in seen[0]
    host = f"127.0.0.1:{upstream.port}"
    assert f'http_client_requests_total{{method="GET",outcome="200",upstream="{host}"}} 1.0' in text


async def test_urls_built_per_call_do_not_grow_the_parsed_url_caches_without_bound(
    make_service: ServiceFactory, serve: Serve
) -> None:
    upstream, seen = await recording_upstream(serve)
    svc = make_service("front")

    @svc.get("/fan-out")
    async def fan_out(request: web.Request) -> web.Response:
        for n in range(300):  # more distinct URLs than either cache keeps
            async with svc.egress.get(upstream.make_url(f"/item/{n}").human_repr()) as resp:
                assert resp.status == 200
        return web.Response(text="ok")

    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client, client.get(front.make_url("/fan-out")) as resp:
        assert resp.status == 200
    assert len(seen) == 300
    assert len(svc.egress._urls) == 256
    assert len(svc.egress.middleware._targets) == 256
