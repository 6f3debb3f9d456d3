"""Egress instrumentation as an aiohttp client middleware (aiohttp >= 3.12).

:class:`ClientInstrumentation` runs once per attempt on the wire, for every
request through a :class:`aiohttp.ClientSession` it is given to — the
service's ``svc.egress.session`` has it, and so can a session of your own::

    aiohttp.ClientSession(
        middlewares=[svc.egress.middleware], response_class=usvc.UpstreamResponse
    )

For each attempt it starts the client span (recording only when the request
is sampled) before the headers are written, injects the trace headers and the
allow-listed pass-through headers from :mod:`usvc.context`, runs the request
and response hooks, and observes ``http_client_requests_total`` once with the
attempt's outcome.

An attempt ends when its body has been read or the response is released:
with :class:`UpstreamResponse` (the egress session's response class) a body
that breaks off, is malformed or does not arrive in time is part of the
attempt's outcome, and reading it raises :class:`UpstreamError`, which the
service turns into a 502 or 504 naming the upstream. With aiohttp's own
response class the attempt ends when the response head has arrived.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue
from yarl import URL

from .context import current_request
from .deadlines import BodyTimeoutError, Deadline
from .metrics import KNOWN_METHODS, Metrics, method_label
from .propagation import EMPTY, Propagator, Sampling
from .spans import NOT_SAMPLED, SAMPLED, UnsampledSpan, UsvcSpan, span_context
from .tracing import Tracing

__all__ = [
    "ClientInstrumentation",
    "RequestHook",
    "ResponseHook",
    "UpstreamError",
    "UpstreamResponse",
    "failure",
    "upstream_name",
    "upstream_of",
]

log = logging.getLogger("usvc.egress")

# Called with the attempt's client span and the request, after the trace
# headers are set and before anything is sent.
RequestHook = Callable[[Span, ClientRequest], None]
# Called with the client span, the request and the response head (or the
# exception the attempt failed with), before the span ends.
ResponseHook = Callable[[Span, ClientRequest, "ClientResponse | BaseException"], None]

# Set by usvc.egress.EgressCall around each retry: the span's resend count.
resend_count: ContextVar[int] = ContextVar("usvc_resend_count", default=0)
# Set by usvc.egress.EgressCall around each attempt: its deadline, which the
# middleware makes the request's timer (usvc.deadlines).
attempt_deadline: ContextVar[Deadline | None] = ContextVar("usvc_attempt_deadline", default=None)


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


def failure(exc: BaseException, *, reading_body: bool = False) -> tuple[str, int, str]:
    """(metrics outcome, status to answer, detail) for an attempt that failed with ``exc``.

    Outcomes: ``timeout`` (504) — no answer, or no complete body, in time;
    ``connect_error`` — no connection; ``reset`` — the connection closed
    before a complete response head; ``bad_response`` — the status line or
    headers are not HTTP; ``body_error`` — the body broke off or is malformed
    (Content-Length not met, chunked encoding cut); ``error`` — anything else
    aiohttp raised. All but ``timeout`` answer 502. (An attempt cut short by
    cancellation, e.g. the caller went away, is counted as ``cancelled``.)
    """
    if isinstance(exc, TimeoutError):
        # aiohttp's ServerTimeoutError and ConnectionTimeoutError are TimeoutErrors too.
        return "timeout", 504, "body not complete in time" if reading_body else "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error", 502, f"unreachable: {exc}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "body_error", 502, f"broken response body: {_reason(exc)}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "bad_response", 502, f"invalid response: {exc.message}"
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError):
        return "reset", 502, f"connection lost: {_reason(exc)}"
    return "error", 502, f"request failed: {_reason(exc)}"


def upstream_of(exc: aiohttp.ClientError) -> str | None:
    """The upstream an aiohttp exception names, if it names one."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return upstream_name(URL.build(scheme="http", host=exc.host, port=exc.port))
    if isinstance(exc, aiohttp.ClientResponseError):
        return upstream_name(exc.request_info.real_url)
    if isinstance(exc, BodyTimeoutError):
        return upstream_name(exc.url)
    return None


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# Distinct URLs whose span attributes and upstream name are kept.
_TARGET_CACHE_SIZE = 256


class _Target:
    """What the attempts to one URL report: its upstream, and the span's URL attributes."""

    __slots__ = ("full", "host", "port", "upstream")

    def __init__(self, url: URL) -> None:
        self.upstream = upstream_name(url)
        self.full = str(url.with_query(None))
        self.host = url.host or ""
        self.port = url.port or 80


class _Attempt:
    """One attempt's span and metrics observation, finished exactly once."""

    __slots__ = (
        "deadline",
        "done",
        "method",
        "metrics",
        "span",
        "started",
        "status",
        "upstream",
    )

    def __init__(
        self, metrics: Metrics, span: Span, upstream: str, method: str, deadline: Deadline | None
    ) -> None:
        self.metrics = metrics
        self.span = span
        self.upstream = upstream
        self.method = method
        self.deadline = deadline
        self.status: int | None = None
        self.done = False
        self.started = time.perf_counter()

    def finish(self, outcome: str | None = None, error: str | None = None) -> None:
        """End the attempt: with the response status, or with a failure ``outcome``."""
        if self.done:
            return
        self.done = True
        if self.deadline is not None:
            self.deadline.close()
        span = self.span
        if outcome is None:
            outcome = str(self.status)
        elif type(span) is UsvcSpan:
            span.outcome(None, error_from=400, error=f"{outcome} {error}" if error else outcome)
        self.metrics.observe_egress(
            self.upstream, self.method, outcome, time.perf_counter() - self.started
        )
        span.end()


class UpstreamResponse(ClientResponse):
    """aiohttp's response, whose body failures end the attempt and name the upstream.

    ``read()`` (and so ``text()`` and ``json()``) raises :class:`UpstreamError`
    (status 502, or 504 when the body did not arrive in time) from aiohttp's
    exception, so a handler that reads an upstream's body needs no error
    handling of its own to answer 502/504 problem+json.
    """

    _usvc_attempt: _Attempt | None = None
    _usvc_reading = False

    async def read(self) -> bytes:
        attempt = self._usvc_attempt
        if attempt is None:
            return await super().read()
        self._usvc_reading = True
        try:
            body = await super().read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome, status, detail = failure(exc, reading_body=True)
            attempt.finish(outcome, detail)
            raise UpstreamError(status, attempt.upstream, detail) from exc
        except BaseException:
            attempt.finish("cancelled")
            raise
        finally:
            self._usvc_reading = False
        attempt.finish()
        return body

    def release(self) -> Any:
        attempt = self._usvc_attempt
        if attempt is not None and not attempt.done:  # read() has ended it, usually
            self._usvc_end()
        return super().release()

    def close(self) -> None:
        if not self._usvc_reading:  # read() ends the attempt with what went wrong
            self._usvc_end()
        super().close()

    def _usvc_end(self) -> None:
        attempt = self._usvc_attempt
        if attempt is None or attempt.done:
            return
        # A body streamed through .content may have failed on the way.
        exc = self.content.exception() if self.content is not None else None
        if exc is not None:
            outcome, _, detail = failure(exc, reading_body=True)
            attempt.finish(outcome, detail)
        else:
            attempt.finish()


class ClientInstrumentation:
    """The aiohttp client middleware; see the module docstring.

    ``request_hooks`` and ``response_hooks`` (see :data:`RequestHook`,
    :data:`ResponseHook`) may add attributes to the span; a hook that raises
    is logged and does not fail the call.
    """

    def __init__(self, propagator: Propagator, tracing: Tracing, metrics: Metrics) -> None:
        self.propagator = propagator
        self.tracing = tracing
        self.metrics = metrics
        self.request_hooks: list[RequestHook] = []
        self.response_hooks: list[ResponseHook] = []
        # Per distinct URL, what each attempt to it reports: worked out once.
        self._targets: dict[URL, _Target] = {}

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        target = self._targets.get(request.url) or self._target(request.url)
        span = self._inject(request, target)
        if self.request_hooks:
            for request_hook in self.request_hooks:
                _run_hook(request_hook, span, request)
        deadline = attempt_deadline.get()
        method = request.method  # aiohttp's, upper case: method_label without a call
        attempt = _Attempt(
            self.metrics,
            span,
            target.upstream,
            method if method in KNOWN_METHODS else method_label(method),
            deadline,
        )
        try:
            if deadline is None:
                response = await handler(request)
            else:
                with deadline:  # the connection and the response head
                    response = await handler(request)
                deadline.response = response  # and then its body
        except BaseException as exc:
            if self.response_hooks:
                self._response_hooks(span, request, exc)
            if isinstance(exc, Exception):
                outcome, _, detail = failure(exc)
                attempt.finish(outcome, detail)
            else:
                attempt.finish("cancelled")
            raise
        attempt.status = response.status
        if type(span) is UsvcSpan:
            span.outcome(response.status, error_from=400)
        if self.response_hooks:
            self._response_hooks(span, request, response)
        if isinstance(response, UpstreamResponse):
            response._usvc_attempt = attempt
        else:
            attempt.finish()
        return response

    def _response_hooks(
        self, span: Span, request: ClientRequest, result: ClientResponse | BaseException
    ) -> None:
        for response_hook in self.response_hooks:
            _run_hook(response_hook, span, request, result)

    def _target(self, url: URL) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) < _TARGET_CACHE_SIZE:  # URLs built per call would grow it
                self._targets[url] = target
        return target

    def _inject(self, request: ClientRequest, target: _Target) -> Span:
        """Start the attempt's span and write the headers that carry it on."""
        tracing = self.tracing
        ctx = current_request.get()
        span_id = tracing.new_span_id()
        headers = request.headers
        if ctx is not None:
            trace_id = ctx.trace_id
            self.propagator.inject(
                ctx.incoming,
                trace_id,
                span_id,
                ctx.sampled,
                headers,
                parent_span_id=ctx.span_id,
                request_id=ctx.request_id,
                random_trace_id=tracing.random_trace_ids,
                # Formatted once per request: its log line reads them too.
                trace_hex=ctx.trace_id_hex,
                parent_hex=ctx.span_id_hex,
            )
            server = ctx.span
            # Unsampled (or tracing off): record nothing. usvc made this span, so its
            # fields are read directly (is_recording(), get_span_context()).
            if type(server) is not UsvcSpan or server._end is not None:
                return UnsampledSpan(trace_id, span_id, SAMPLED if ctx.sampled else NOT_SAMPLED)
            parent = server._context
        else:  # a call outside any request starts a trace of its own
            trace_id, parent = tracing.new_trace_id(), None
            sampled = tracing.enabled and tracing.head_sampler.sampled(Sampling.DEFER, trace_id)
            self.propagator.inject(
                EMPTY, trace_id, span_id, sampled, headers, random_trace_id=tracing.random_trace_ids
            )
            if not sampled:
                return UnsampledSpan(trace_id, span_id, NOT_SAMPLED)
        attributes: dict[str, AttributeValue] = {
            "http.request.method": request.method,
            "url.full": target.full,
            "server.address": target.host,
            "server.port": target.port,
        }
        resent = resend_count.get()
        if resent:
            attributes["http.request.resend_count"] = resent
        return UsvcSpan(
            tracing,
            request.method,
            span_context(trace_id, span_id, SAMPLED),
            parent,
            SpanKind.CLIENT,
            attributes,
        )


def _run_hook(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.warning("egress hook %r failed", hook, exc_info=True)
