"""The egress client: how a service calls its upstreams.

One pooled :class:`aiohttp.ClientSession` per service, created and closed with
the application. Every call

* carries the incoming request's trace context and allow-listed headers
  (read from :mod:`usvc.context`, so the handler passes nothing by hand),
* is bounded by the request's deadline (``REQUEST_DEADLINE``, shortened by
  Envoy's ``x-envoy-expected-rq-timeout-ms``), retries included,
* retries only idempotent methods, only on connection errors and 502/503/504,
  with exponential backoff and full jitter, never past the deadline,
* gets one client span and one metrics observation per attempt.

Failures raise :class:`UpstreamError`; the server middleware turns it into a
502 (unreachable or bad reply) or 504 (deadline) problem+json response.

The instrumentation lives here rather than in ``aiohttp.TraceConfig`` hooks:
the span has to exist before the headers are written (its id goes into
them), and a hook pair would have to carry it across callbacks by hand.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDict
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
)
from opentelemetry.util.types import AttributeValue
from yarl import URL

from .context import RequestContext, current_request
from .metrics import Metrics, method_label
from .propagation import EMPTY, Propagator, Sampling, new_span_id, new_trace_id
from .settings import Settings
from .spans import UsvcSpan
from .tracing import Tracing

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRYABLE_STATUS = frozenset({502, 503, 504})
_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, ConnectionError)


class UpstreamError(Exception):
    """An upstream could not give a usable answer within the deadline."""

    def __init__(self, status: int, upstream: str, detail: str, attempts: int = 1) -> None:
        super().__init__(f"{upstream}: {detail}")
        self.status = status
        self.upstream = upstream
        self.detail = detail
        self.attempts = attempts


def upstream_name(url: URL) -> str:
    host = url.host or "unknown"
    return (
        host if url.port in (None, 80, 443) or url.explicit_port is None else f"{host}:{url.port}"
    )


class Egress:
    """Calls upstreams on behalf of one service; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        propagator: Propagator,
        tracing: Tracing,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.propagator = propagator
        self.tracing = tracing
        self.metrics = metrics
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise RuntimeError("the egress session exists only while the service runs")
        return self._session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=30)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def request(self, method: str, url: str | URL, **kwargs: Any) -> EgressCall:
        """Start a call; use as ``async with svc.egress.request("GET", url) as resp``."""
        return EgressCall(self, method.upper(), URL(url), kwargs)

    def get(self, url: str | URL, **kwargs: Any) -> EgressCall:
        return self.request("GET", url, **kwargs)

    def post(self, url: str | URL, **kwargs: Any) -> EgressCall:
        return self.request("POST", url, **kwargs)

    def put(self, url: str | URL, **kwargs: Any) -> EgressCall:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str | URL, **kwargs: Any) -> EgressCall:
        return self.request("DELETE", url, **kwargs)

    def deadline(self, ctx: RequestContext | None) -> float:
        if ctx is None:  # a background call: bounded by one call's timeout
            return asyncio.get_running_loop().time() + self.settings.egress_timeout
        return ctx.deadline

    def backoff(self, attempt: int, remaining: float) -> float:
        # Full jitter (AWS architecture blog): spreads synchronized retries.
        ceiling = self.settings.egress_retry_backoff * (2**attempt)
        return min(random.uniform(0, ceiling), max(remaining, 0.0))

    def headers_for(
        self,
        ctx: RequestContext | None,
        span: Span,
        span_id: int,
        given: Mapping[str, str] | None,
    ) -> CIMultiDict[str]:
        out: dict[str, str] = {}
        if ctx is not None:
            self.propagator.inject(
                ctx.incoming,
                ctx.trace_id,
                span_id,
                ctx.sampled,
                out,
                parent_span_id=ctx.span_id,
                request_id=ctx.request_id,
            )
        else:  # a call made outside any request starts its own trace
            sc = span.get_span_context()
            if sc.is_valid:
                self.propagator.inject(EMPTY, sc.trace_id, span_id, sc.trace_flags.sampled, out)
        if not given:
            return CIMultiDict(out)
        headers = CIMultiDict(given)
        headers.update(out)
        return headers


class EgressCall:
    """One logical call: attempts, retries and the final response's lifetime."""

    def __init__(self, egress: Egress, method: str, url: URL, kwargs: dict[str, Any]) -> None:
        self.egress = egress
        self.method = method
        self.url = url
        self.kwargs = kwargs
        self.upstream = upstream_name(url)
        self._response: aiohttp.ClientResponse | None = None
        self._span: Span | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        return await self._send()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._response is not None:
            self._response.release()
        if self._span is not None:
            self._span.end()

    async def _send(self) -> aiohttp.ClientResponse:
        egress = self.egress
        settings = egress.settings
        loop = asyncio.get_running_loop()
        ctx = current_request.get()
        deadline = egress.deadline(ctx)
        retries = settings.egress_retries if self.method in IDEMPOTENT_METHODS else 0
        given_headers = self.kwargs.pop("headers", None)
        method = method_label(self.method)
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UpstreamError(504, self.upstream, "deadline exceeded", attempt)
            span, span_id = self._start_span(ctx, attempt)
            per_try = min(settings.egress_timeout, remaining)
            response: aiohttp.ClientResponse | None = None
            started = time.perf_counter()
            try:
                response = await egress.session.request(
                    self.method,
                    self.url,
                    headers=egress.headers_for(ctx, span, span_id, given_headers),
                    timeout=aiohttp.ClientTimeout(
                        total=per_try, sock_connect=settings.egress_connect_timeout
                    ),
                    proxy=settings.egress_proxy,
                    allow_redirects=False,
                    **self.kwargs,
                )
            except TimeoutError:
                outcome, status, detail = "timeout", 504, f"no answer within {per_try:.3g}s"
            except _CONNECTION_ERRORS as exc:
                outcome, status, detail = "connect_error", 502, f"unreachable: {exc}"
            except BaseException:
                span.end()
                raise
            else:
                outcome, status = str(response.status), 502
                detail = f"answered {response.status}"
            egress.metrics.observe_egress(
                self.upstream, method, outcome, time.perf_counter() - started
            )
            may_retry = attempt < retries and deadline - loop.time() > 0
            if response is not None:
                if type(span) is UsvcSpan:
                    span.outcome(response.status, error_from=400)
                if response.status not in RETRYABLE_STATUS or not may_retry:
                    self._response, self._span = response, span
                    return response
                response.release()
            elif type(span) is UsvcSpan:
                span.outcome(None, error_from=400, error=f"{outcome} {detail}")
            span.end()
            if not may_retry:
                raise UpstreamError(status, self.upstream, detail, attempt + 1)
            attempt += 1
            await asyncio.sleep(egress.backoff(attempt, deadline - loop.time()))

    def _start_span(self, ctx: RequestContext | None, attempt: int) -> tuple[Span, int]:
        """A client span for one attempt: recording only when the request is sampled."""
        tracing = self.egress.tracing
        span_id = new_span_id()
        if ctx is None:  # a call outside any request starts a trace of its own
            trace_id, parent = new_trace_id(), None
            sampled = tracing.enabled and tracing.decider.sampled(Sampling.DEFER, trace_id)
        else:
            trace_id, parent = ctx.trace_id, ctx.span.get_span_context()
            sampled = ctx.span.is_recording()
            if not sampled:  # unsampled (or tracing off): pass the decision on, record nothing
                return NonRecordingSpan(
                    SpanContext(trace_id, span_id, False, parent.trace_flags)
                ), span_id
        if not sampled:
            return NonRecordingSpan(SpanContext(trace_id, span_id, False, TraceFlags(0))), span_id
        url = self.url
        attributes: dict[str, AttributeValue] = {
            "http.request.method": self.method,
            "url.full": str(url.with_query(None)),
            "server.address": url.host or "",
            "server.port": url.port or 80,
        }
        if attempt:
            attributes["http.request.resend_count"] = attempt
        span = UsvcSpan(
            tracing,
            self.method,
            SpanContext(trace_id, span_id, False, TraceFlags(TraceFlags.SAMPLED)),
            parent,
            SpanKind.CLIENT,
            attributes,
        )
        return span, span_id
