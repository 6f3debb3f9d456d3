"""usvc's propagation as an OpenTelemetry propagator, and where it differs from OpenTelemetry's.

Each ``test_difference_*`` feeds the same header to usvc's propagation and to
OpenTelemetry's own propagator for that format (opentelemetry-api's
TraceContextTextMapPropagator, opentelemetry-propagator-b3's B3SingleFormat
and B3MultiFormat) and shows the deliberate difference; the specs (W3C Trace
Context Level 2, openzipkin/b3-propagation) are the reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from usvc.otel_propagator import UsvcTextMapPropagator
from usvc.propagation import Propagator, Sampling

from .conftest import Serve, ServiceFactory
from .test_egress import recording_upstream

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACE_64 = "463ac35c9f6413ad"
TP = f"00-{TRACE}-{SPAN}-01"


def span_context(ctx: Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def round_trip(propagator: TextMapPropagator, carrier: dict[str, str]) -> dict[str, str]:
    """What the propagator writes for a span continuing the carrier's context."""
    out: dict[str, str] = {}
    propagator.inject(out, propagator.extract(carrier))
    return out


def usvc_round_trip(carrier: dict[str, str], formats: tuple[str, ...]) -> dict[str, str]:
    return round_trip(UsvcTextMapPropagator(Propagator(formats, ())), carrier)


@pytest.fixture
def global_usvc_propagator() -> Iterator[UsvcTextMapPropagator]:
    before = propagate.get_global_textmap()
    mine = UsvcTextMapPropagator(Propagator(passthrough=("x-dev-user",)))
    propagate.set_global_textmap(mine)
    yield mine
    propagate.set_global_textmap(before)


# --------------------------------------------------------------------------
# the propagator in OpenTelemetry's machinery


def test_otel_propagators_usvc_loads_usvcs_propagator_through_its_entry_point() -> None:
    # opentelemetry.propagate reads OTEL_PROPAGATORS once, at import: a fresh process.
    script = (
        "import json\n"
        "from opentelemetry import propagate\n"
        "ctx = propagate.extract({'b3': '" + f"{TRACE_64}-{SPAN}-d" + "'})\n"
        "out = {}\n"
        "propagate.inject(out, ctx)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "OTEL_PROPAGATORS": "usvc"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    out = json.loads(done.stdout)
    # usvc's default formats, and the B3 caller answered in kind with its debug state and
    # 64-bit width carried through OpenTelemetry: none of OpenTelemetry's own propagators
    # writes B3's debug or a 16-character id
    assert out["b3"] == f"{TRACE_64}-{SPAN}-d"
    assert out["traceparent"] == f"00-{'0' * 16}{TRACE_64}-{SPAN}-01"
    assert "x-b3-traceid" not in out


def test_a_usvc_service_accepts_otel_propagators_usvc(make_service: ServiceFactory) -> None:
    svc = make_service(OTEL_PROPAGATORS="usvc")
    assert svc.settings.otel_propagators == ("tracecontext", "baggage")


async def test_other_instrumentation_in_a_request_sends_usvcs_headers(
    make_service: ServiceFactory, serve: Serve, global_usvc_propagator: UsvcTextMapPropagator
) -> None:
    svc = make_service("front")
    written: dict[str, str] = {}

    @svc.get("/")
    async def index(request: web.Request) -> web.Response:
        # what an instrumented client (httpx, grpc...) does: a client span, then inject
        with svc.tracer.start_as_current_span("other client") as span:
            propagate.inject(written)
            written["span"] = f"{span.get_span_context().span_id:016x}"
        return web.Response()

    server = await serve(svc.app)
    headers = {"b3": f"{TRACE_64}-{SPAN}-d", "x-dev-user": "betaUser", "x-request-id": "r-1"}
    async with aiohttp.ClientSession() as client, client.get(server.make_url("/"), headers=headers):
        pass
    assert written["traceparent"] == f"00-{'0' * 16}{TRACE_64}-{written['span']}-01"
    assert written["b3"].startswith(f"{TRACE_64}-{written['span']}-d")
    assert written["x-dev-user"] == "betaUser"
    assert written["x-request-id"] == "r-1"


async def test_the_egress_and_the_otel_propagator_write_the_same_context(
    make_service: ServiceFactory, serve: Serve
) -> None:
    upstream, seen = await recording_upstream(serve)
    svc = make_service("front")
    written: dict[str, str] = {}

    @svc.get("/")
    async def index(request: web.Request) -> web.Response:
        UsvcTextMapPropagator(svc.propagator).inject(written)
        async with svc.egress.get(upstream.make_url("/")):
            pass
        return web.Response()

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        # a B3 caller (answered in kind) beside traceparent: both write B3 the same
        sent = {"traceparent": TP, "x-b3-traceid": TRACE, "x-b3-spanid": SPAN}
        async with client.get(server.make_url("/"), headers=sent):
            pass
    same = ("x-b3-traceid", "x-b3-sampled", "x-request-id")
    assert {k: written[k] for k in same} == {k: seen[0][k] for k in same}
    assert written["traceparent"].split("-")[1] == seen[0]["traceparent"].split("-")[1] == TRACE


def test_fields_name_every_header_it_may_write() -> None:
    fields = UsvcTextMapPropagator(Propagator(passthrough=("x-dev-user",))).fields
    assert {"traceparent", "tracestate", "baggage", "b3", "x-b3-flags", "x-dev-user"} <= fields


# --------------------------------------------------------------------------
# one test per deliberate difference from OpenTelemetry's propagators


def test_difference_a_duplicated_traceparent_starts_a_new_trace() -> None:
    # Two values leave no way to tell which is the caller's (W3C test suite:
    # test_traceparent_duplicated); OpenTelemetry takes the first.
    carrier = {"traceparent": [TP, f"00-{'1' * 32}-{SPAN}-01"]}
    otel = span_context(TraceContextTextMapPropagator().extract(carrier))
    ours = span_context(UsvcTextMapPropagator().extract(carrier))
    assert otel.is_valid and f"{otel.trace_id:032x}" == TRACE
    assert not ours.is_valid


def test_difference_a_duplicated_tracestate_key_drops_only_the_later_entry() -> None:
    # §Mutating the tracestate Field: duplicates MAY be discarded; OpenTelemetry
    # drops the whole tracestate instead.
    carrier = {"traceparent": TP, "tracestate": "a=1,b=2,a=3"}
    otel = span_context(TraceContextTextMapPropagator().extract(carrier))
    ours = span_context(UsvcTextMapPropagator().extract(carrier))
    assert otel.trace_state.to_header() == ""
    assert ours.trace_state.to_header() == "a=1,b=2"


def test_difference_a_level_2_tracestate_key_is_kept() -> None:
    # Level 2's key grammar lets a key start with a digit without a tenant@;
    # OpenTelemetry checks Level 1's and drops the whole tracestate.
    # (OpenTelemetry's TraceState cannot hold it either: usvc keeps what it
    # extracted beside the span context and writes that.)
    carrier = {"traceparent": TP, "tracestate": "0vendor=x,b=2"}
    theirs = round_trip(TraceContextTextMapPropagator(), carrier)
    ours = usvc_round_trip(carrier, ("tracecontext",))
    assert "tracestate" not in theirs
    assert ours["tracestate"] == "0vendor=x,b=2"


def test_difference_b3_defer_stays_a_deferred_decision() -> None:
    # "Defer is absence of the sampling field": the receiver decides. OpenTelemetry
    # makes the decision itself (1.45 reads it as accept); usvc keeps "defer", and
    # its sampler (usvc.tracing.HeadSampler) lets the root ratio decide.
    header = f"{TRACE}-{SPAN}"
    otel = span_context(B3SingleFormat().extract({"b3": header}))
    assert otel.trace_flags.sampled
    assert Propagator().extract(hdrs_of("b3", header)).sampling is Sampling.DEFER


@pytest.mark.parametrize(
    ("name", "value", "otel"),
    [("b3", "0", B3SingleFormat()), ("x-b3-sampled", "0", B3MultiFormat())],
)
def test_difference_a_sampling_only_header_is_honoured(
    name: str, value: str, otel: TextMapPropagator
) -> None:
    # "Sampling state can also be sent on its own"; OpenTelemetry ignores it, so
    # the next span would be sampled by its root sampler.
    assert not span_context(otel.extract({name: value})).is_valid
    assert Propagator().extract(hdrs_of(name, value)).sampling is Sampling.DENY


@pytest.mark.parametrize(
    ("carrier", "otel", "formats", "debug"),
    [
        ({"b3": f"{TRACE}-{SPAN}-d"}, B3SingleFormat(), ("b3",), ("b3", f"{TRACE}-{SPAN}-d")),
        (
            {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-flags": "1"},
            B3MultiFormat(),
            ("b3multi",),
            ("x-b3-flags", "1"),
        ),
    ],
)
def test_difference_b3_debug_is_passed_on(
    carrier: dict[str, str],
    otel: TextMapPropagator,
    formats: tuple[str, ...],
    debug: tuple[str, str],
) -> None:
    # "Debug implies an accept decision": OpenTelemetry keeps the accept, loses the debug.
    theirs = round_trip(otel, carrier)
    ours = usvc_round_trip(carrier, formats)
    name, value = debug
    assert theirs.get(name) != value
    assert ours[name] == value


def test_difference_a_64_bit_trace_id_is_re_emitted_as_received() -> None:
    carrier = {"b3": f"{TRACE_64}-{SPAN}-1"}
    theirs = round_trip(B3SingleFormat(), carrier)
    ours = usvc_round_trip(carrier, ("b3",))
    assert theirs["b3"].startswith(f"{'0' * 16}{TRACE_64}-")
    assert ours["b3"].startswith(f"{TRACE_64}-")


def hdrs_of(name: str, value: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict([(name, value)]))
