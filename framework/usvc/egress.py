"""The egress client: how a service calls its upstreams.

One pooled :class:`aiohttp.ClientSession` per service, created and closed with
the application. The session carries usvc's client middleware
(:class:`usvc.client.ClientInstrumentation`, aiohttp's own extension point
for wrapping every request), so every request through ``svc.egress.session``
— through :meth:`Egress.request` or not — carries the incoming request's
trace context and allow-listed headers (read from :mod:`usvc.context`, so the
handler passes nothing by hand) and gets one client span and one metrics
observation per attempt on the wire. A middleware, unlike a pair of
``TraceConfig`` hooks, wraps the attempt in one call: the span exists before
the headers are written (its id goes into them) and needs no carrying from
one callback to another.

:meth:`Egress.request` adds what a single request cannot know, the policy
across attempts:

* every call is bounded by the request's deadline (``REQUEST_DEADLINE``,
  shortened by Envoy's ``x-envoy-expected-rq-timeout-ms``), retries included,
  and by ``timeout`` seconds when the call gives one; each attempt by
  ``EGRESS_TIMEOUT`` too; the response body must arrive within the attempt's
  bound. Attempt deadlines share one loop timer (:mod:`usvc.deadlines`);
* only idempotent methods are retried, on a failed attempt (no connection, a
  lost connection, a broken or late reply) and on 502/503/504, with
  exponential backoff and full jitter, never past the deadline.

Failures raise :class:`UpstreamError`, also when the handler reads a body
that breaks off (see :class:`usvc.client.UpstreamResponse`); the server
middleware turns it into a 502 (unreachable or bad reply) or 504 (deadline)
problem+json response naming the upstream.
"""

from __future__ import annotations

import asyncio
import random
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from .client import (
    ClientInstrumentation,
    RequestHook,
    ResponseHook,
    UpstreamError,
    UpstreamResponse,
    attempt_deadline,
    failure,
    resend_count,
    upstream_name,
)
from .context import RequestContext, current_request
from .deadlines import Deadlines
from .metrics import Metrics
from .propagation import Propagator
from .settings import Settings
from .tracing import Tracing

__all__ = ["Egress", "EgressCall", "UpstreamError", "upstream_name"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRYABLE_STATUS = frozenset({502, 503, 504})
_NOT_RUNNING = "the egress session exists only while the service runs"
# Distinct URL strings whose parse is kept (a service calls a few upstreams).
_URL_CACHE_SIZE = 256


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
        # Give it to a ClientSession of your own to instrument that one too.
        self.middleware = ClientInstrumentation(propagator, tracing, metrics)
        self._session: aiohttp.ClientSession | None = None
        # The loop the session runs on, kept at start: asyncio.get_running_loop() costs a
        # getpid() system call in CPython 3.11 (it checks for a fork), once per call.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every attempt's deadline, on one timer (usvc.deadlines): set at start.
        self.deadlines: Deadlines | None = None
        # Built once, not per call: a service calls the same few URLs.
        self._urls: dict[str, tuple[URL, str]] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise RuntimeError(_NOT_RUNNING)
        return self._session

    def request_hook(self, hook: RequestHook) -> RequestHook:
        """Register ``hook(span, request)``, called before each attempt is sent."""
        self.middleware.request_hooks.append(hook)
        return hook

    def response_hook(self, hook: ResponseHook) -> ResponseHook:
        """Register ``hook(span, request, response_or_exception)``, called when an
        attempt's response head arrives or the attempt fails, before its span ends."""
        self.middleware.response_hooks.append(hook)
        return hook

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.deadlines = Deadlines(self._loop)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=30)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # No total: an attempt's deadline is usvc's own (EgressCall), which
            # costs no loop timer per request as aiohttp's total would.
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.settings.egress_connect_timeout
            ),
            auto_decompress=True,
            trust_env=False,
            middlewares=(self.middleware,),
            response_class=UpstreamResponse,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.deadlines is not None:
            self.deadlines.close()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        return asyncio.get_running_loop() if loop is None else loop

    def request(
        self, method: str, url: str | URL, *, timeout: float | None = None, **kwargs: Any
    ) -> EgressCall:
        """Start a call; use as ``async with svc.egress.request("GET", url) as resp``.

        ``timeout`` (seconds) bounds this call, retries included, within the
        request's deadline; ``kwargs`` go to aiohttp's ``ClientSession.request``.
        """
        return self._call(method.upper(), url, timeout, kwargs)

    def _call(
        self, method: str, url: str | URL, timeout: float | None, kwargs: dict[str, Any]
    ) -> EgressCall:
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            raise TypeError(f"timeout must be a positive number of seconds, not {timeout!r}")
        return EgressCall(self, method, *self._target(url), timeout, kwargs)

    def _target(self, url: str | URL) -> tuple[URL, str]:
        """The URL and its upstream's name, parsed once per distinct URL string."""
        if isinstance(url, URL):
            return url, upstream_name(url)
        target = self._urls.get(url)
        if target is None:
            parsed = URL(url)
            target = (parsed, upstream_name(parsed))
            if len(self._urls) < _URL_CACHE_SIZE:  # URLs built per call would grow it
                self._urls[url] = target
        return target

    def get(self, url: str | URL, *, timeout: float | None = None, **kwargs: Any) -> EgressCall:
        return self._call("GET", url, timeout, kwargs)

    def post(self, url: str | URL, *, timeout: float | None = None, **kwargs: Any) -> EgressCall:
        return self._call("POST", url, timeout, kwargs)

    def put(self, url: str | URL, *, timeout: float | None = None, **kwargs: Any) -> EgressCall:
        return self._call("PUT", url, timeout, kwargs)

    def delete(self, url: str | URL, *, timeout: float | None = None, **kwargs: Any) -> EgressCall:
        return self._call("DELETE", url, timeout, kwargs)

    def deadline(self, ctx: RequestContext | None) -> float:
        if ctx is None:  # a background call: bounded by one call's timeout
            return self._running_loop().time() + self.settings.egress_timeout
        return ctx.deadline

    def backoff(self, attempt: int, remaining: float) -> float:
        # Full jitter (AWS architecture blog): spreads synchronized retries.
        ceiling = self.settings.egress_retry_backoff * (2**attempt)
        return min(random.uniform(0, ceiling), max(remaining, 0.0))


class EgressCall:
    """One logical call: the deadline, the retries and the final response's lifetime.

    Each attempt is instrumented by the session's middleware, not here.
    """

    def __init__(
        self,
        egress: Egress,
        method: str,
        url: URL,
        upstream: str,
        timeout: float | None,
        kwargs: dict[str, Any],
    ) -> None:
        self.egress = egress
        self.method = method
        self.url = url
        self.kwargs = kwargs
        self.upstream = upstream
        self.timeout = timeout
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        """Send the call's attempts; the answer, or UpstreamError."""
        egress = self.egress
        settings = egress.settings
        session = egress._session
        if session is None:  # aiohttp says so itself once it is closed
            raise RuntimeError(_NOT_RUNNING)
        loop, deadlines = egress._loop, egress.deadlines
        assert loop is not None and deadlines is not None  # set with the session
        ctx = current_request.get()
        deadline = egress.deadline(None) if ctx is None else ctx.deadline
        if self.timeout is not None:
            deadline = min(deadline, loop.time() + self.timeout)
        retries = settings.egress_retries if self.method in IDEMPOTENT_METHODS else 0
        attempt = 0
        while True:
            now = loop.time()
            if deadline <= now:
                raise UpstreamError(504, self.upstream, "deadline exceeded", attempt)
            # The attempt's own end, which covers its body too (the attempt ends when
            # that has been read). Calls bounded by the request's deadline end at
            # exactly it: none is earlier than the one the timer is armed for.
            ends = min(now + settings.egress_timeout, deadline)
            per_try = ends - now
            token = resend_count.set(attempt) if attempt else None
            timer = deadlines.start(ends)
            timer_token = attempt_deadline.set(timer)
            try:
                response = await session.request(
                    self.method,
                    self.url,
                    proxy=settings.egress_proxy,
                    allow_redirects=False,
                    **self.kwargs,
                )
            except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                timer.close()
                _, status, detail = failure(exc)
                if isinstance(exc, TimeoutError):
                    detail = f"no answer within {per_try:.3g}s"
                answer: aiohttp.ClientResponse | None = None
            except BaseException:
                timer.close()
                raise
            else:
                answer = response
                if response.status not in RETRYABLE_STATUS:  # the usual answer: done
                    self._response = response
                    return response
                status, detail = 502, f"answered {response.status}"
            finally:
                attempt_deadline.reset(timer_token)
                if token is not None:
                    resend_count.reset(token)
            may_retry = attempt < retries and deadline - loop.time() > 0
            if answer is not None:
                if not may_retry:
                    self._response = answer
                    return answer
                answer.release()
            if not may_retry:
                raise UpstreamError(status, self.upstream, detail, attempt + 1)
            attempt += 1
            await asyncio.sleep(egress.backoff(attempt, deadline - loop.time()))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._response is not None:
            self._response.release()
