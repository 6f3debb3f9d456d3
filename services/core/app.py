"""core: prod asks worldtimeapi (egress through the mesh); test asks clock.

The upstream is UPSTREAM_URI either way; the reply's shape says which it
was. worldtimeapi is on the public internet, often slow or rate-limited and
unreachable from many clusters: when it fails within TIME_API_TIMEOUT the
reply says so in one line and, when FALLBACK_URI is set, answers from clock.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from opentelemetry.trace import Span, SpanKind, StatusCode
from prometheus_client import Counter
from yarl import URL

import usvc
from services.chain import HopFailed, add_hello, call_json, failed, hop, respond

svc = usvc.Service("core")
add_hello(svc)
UPSTREAM = svc.settings.upstream_uri or "http://clock-svc/"
FALLBACK = svc.settings.env.url("FALLBACK_URI")
TIME_API_TIMEOUT = svc.settings.env.seconds("TIME_API_TIMEOUT", 2.0, high=60.0)
# One per request: what came of asking the time source, and whether the
# fallback answered instead (the egress dashboard and the fallback alert).
TIME_SOURCE = Counter(
    "core_time_source_requests",
    "Requests core served, by its time source's outcome and whether it fell back",
    ["upstream", "outcome", "fallback"],
    registry=svc.metrics.registry,
)


def host_of(url: str) -> str:
    return URL(url).host or url


# Parsed once: every request names the same upstream.
UPSTREAM_HOST = host_of(UPSTREAM)
SOURCE_SPAN = f"GET {UPSTREAM_HOST}"
# The series nearly every request counts in, looked up once (labels() takes a lock).
COUNTED_OK = TIME_SOURCE.labels(UPSTREAM_HOST, "ok", "false")


def describe_worldtime(body: dict[str, Any]) -> str:
    """worldtimeapi's JSON (/api/timezone/Area/City) in one line."""
    return (
        f"worldtimeapi: {body['datetime']} in {body['timezone']}"
        f" ({body.get('abbreviation', '?')}, UTC{body.get('utc_offset', '?')})"
    )


@svc.get("/")
async def index(request: web.Request) -> web.Response:
    started = time.perf_counter()
    # The time source call as one client span of its own (the egress client's
    # spans are per attempt): what came of it and whether the fallback answered,
    # so a trace search for usvc.fallback=true finds the requests clock served.
    source = svc.span(
        SOURCE_SPAN,
        kind=SpanKind.CLIENT,
        attributes={"server.address": UPSTREAM_HOST, "url.full": UPSTREAM},
    )
    try:
        # Bounded by TIME_API_TIMEOUT, retries included: a 504 UpstreamError past it.
        body = await call_json(svc, UPSTREAM, TIME_API_TIMEOUT)
    except (HopFailed, usvc.UpstreamError) as exc:
        # A mesh hop (clock) that failed says so itself: passed on, never masked.
        hop_failed = exc if isinstance(exc, HopFailed) and "service" in exc.problem else None
        reason = why(exc)
        falls_back = FALLBACK is not None and hop_failed is None
        outcome(source, outcome_of(exc), reason, fallback=falls_back)
        if hop_failed is not None:
            return failed(svc, hop_failed)
        if FALLBACK is None:
            status = exc.status if isinstance(exc, usvc.UpstreamError) else 502
            raise usvc.UpstreamError(status, UPSTREAM_HOST, reason) from None
        try:
            clock = await call_json(svc, FALLBACK)
        except HopFailed as inner:
            return failed(svc, inner)
        ctx = usvc.current()
        if ctx is not None:
            ctx.span.set_attribute("usvc.fallback", True)
        note = f"{UPSTREAM_HOST} {reason}; answered from {host_of(FALLBACK)} (fallback)"
        return respond(
            request, hop(svc, started, FALLBACK, upstream=clock, note=note, fallback=True)
        )
    if "service" in body:  # another hop of the chain (clock)
        outcome(source, "ok")
        return respond(request, hop(svc, started, UPSTREAM, upstream=body))
    try:
        line = describe_worldtime(body)
    except KeyError:
        outcome(source, "bad_reply", "not worldtimeapi's timezone format")
        raise usvc.UpstreamError(
            502, UPSTREAM_HOST, "answered JSON that is not worldtimeapi's timezone format"
        ) from None
    outcome(source, "ok")
    return respond(request, hop(svc, started, UPSTREAM, upstream=line, worldtime=body))


def outcome(span: Span, result: str, reason: str = "", *, fallback: bool = False) -> None:
    """End the time source span with ``usvc.outcome`` (``ok`` or why not) and ``usvc.fallback``."""
    counter = COUNTED_OK if result == "ok" and not fallback else None
    if counter is None:
        counter = TIME_SOURCE.labels(UPSTREAM_HOST, result, str(fallback).lower())
    counter.inc()
    span.set_attribute("usvc.outcome", result)
    span.set_attribute("usvc.fallback", fallback)
    if result != "ok":
        span.set_status(StatusCode.ERROR, reason)
    span.end()


def outcome_of(exc: HopFailed | usvc.UpstreamError) -> str:
    if exc.status == 504:
        return "timeout"
    return f"http_{exc.status}" if isinstance(exc, HopFailed) else "unreachable"


def why(exc: HopFailed | usvc.UpstreamError) -> str:
    return f"answered {exc.status}" if isinstance(exc, HopFailed) else exc.detail


if __name__ == "__main__":
    svc.run()
