"""``usvc.Service``: an aiohttp application with everything a mesh service needs.

Every request is observed once, in this order: parse the trace headers, start
the server span, set the request context (which egress calls and log lines
read), apply opt-in fault injection, call the handler, map upstream failures
to problem+json, then record metrics and the access line. The paths in
``TELEMETRY_EXCLUDED_PATHS`` (by default ``/healthz``, ``/readyz`` and
``/metrics``) are served outside it: probes and scrapes are not traffic, and
would drown the RED metrics and traces.

Where that runs: the routes registered through the service (``svc.get``,
``svc.route``, ...) are wrapped when they are registered, and a catch-all
route, added when the app starts (after every other route), observes the
requests no route matches (404, or 405 with ``Allow`` as aiohttp answers)
under the route label ``unmatched``. aiohttp then runs no middleware at all,
which saves its middleware machinery on every request. An app that has more
than usvc put in it when it starts — routes added to ``svc.app.router``
directly, sub-apps, middlewares — is observed by a middleware instead, the
outermost one, exactly as before, so every aiohttp feature keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import (
    Span,
    SpanKind,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.util.types import AttributeValue

from . import faults, logs
from .client import failure, upstream_of
from .connections import with_head_timeout
from .context import RequestContext, current_request
from .egress import Egress, UpstreamError
from .health import Health, ReadinessCheck
from .metrics import UNMATCHED_ROUTE, Metrics
from .propagation import Incoming, Propagator, new_request_id
from .settings import Settings, SettingsError, configuration_error
from .spans import NOT_SAMPLED, SAMPLED, UnsampledSpan, UsvcSpan, span_context
from .tracing import Tracing, header_attributes
from .version import USVC_VERSION

log = logging.getLogger("usvc")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ENVOY_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"
PROBLEM_TYPE = "application/problem+json"


def _span_attacher() -> tuple[
    Callable[[Span], object], Callable[[Any], None], Callable[[], Span | None]
]:
    """(attach, detach, current) for making a request's span current and reading it.

    With OpenTelemetry's default runtime context (one ContextVar holding a
    Context) the span is set in that variable directly, which is what
    ``context.attach(trace.set_span_in_context(span))`` does through four
    calls, and read from it as ``trace.get_current_span()`` does through
    three; with any other runtime context, through the API.
    """
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:

        def attach_by_api(span: Span) -> object:
            return otel_context.attach(set_span_in_context(span))

        return attach_by_api, otel_context.detach, get_current_span
    variable = runtime._current_context

    def attach(span: Span) -> object:
        current = variable.get()
        if current:
            values = dict(current)
            values[_SPAN_KEY] = span
            return variable.set(Context(values))
        return variable.set(Context({_SPAN_KEY: span}))

    def detach(token: Any) -> None:
        try:
            variable.reset(token)
        except Exception:  # as otel_context.detach: never fail the request over it
            log.exception("Failed to detach context")

    def current() -> Span | None:
        return variable.get().get(_SPAN_KEY)  # type: ignore[return-value]

    return attach, detach, current


_attach_span, _detach, _current_span = _span_attacher()


def problem(
    status: int, title: str, detail: str, ctx: RequestContext | None, **extra: Any
) -> web.Response:
    """An RFC 9457 problem+json response carrying the trace id."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail
    body.update(extra)
    if ctx is not None:
        body["trace_id"] = ctx.trace_id_hex
        body["request_id"] = ctx.request_id
    return web.json_response(body, status=status, content_type=PROBLEM_TYPE)


class Service:
    """A named service: settings, app, egress client, tracing, metrics, health.

    ``Service("front")`` reads its settings from the environment at once and
    raises :class:`usvc.SettingsError` naming the bad variable, if any.
    """

    def __init__(
        self,
        name: str,
        *,
        settings: Settings | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(name)
        self.name = self.settings.service_name
        self.propagator = Propagator(
            [f for f in self.settings.otel_propagators if f != "none"],
            self.settings.passthrough_headers,
        )
        self.tracing = tracing or _tracing(self.settings)
        self._span_headers = header_attributes(self.settings.span_headers)
        self.tracer = self.tracing.tracer
        self.metrics = Metrics(
            self.name,
            self.settings.service_version,
            self.settings.service_env,
            USVC_VERSION,
            instance=self.settings.service_instance,
        )
        self.health = Health()
        # Read at scrape time: nothing to update per request.
        self.metrics.in_flight.set_function(lambda: self.health.in_flight)
        self.egress = Egress(self.settings, self.propagator, self.tracing, self.metrics)
        self.access_log = logs.AccessLog(
            self.name, self.settings.access_log, instance=self.settings.service_instance
        )
        # Set by serve(): the loop time shutdown must be done by, and whether
        # it is cutting the requests still in flight (recorded as 503, not 499).
        self.stop_by: float | None = None
        self.cutting = False
        self._header_problems = ProblemLog()
        self._excluded_paths = frozenset(self.settings.telemetry_excluded_paths)
        self._request_deadline = self.settings.request_deadline
        self._fault_injection = self.settings.fault_injection
        # W3C baggage may be 8192 bytes; aiohttp's default header limit is 8190.
        self.app = web.Application(handler_args={"max_field_size": 16384})
        self.app[SERVICE_KEY] = self
        # The handlers aiohttp calls for the routes registered through us.
        self._own_handlers: list[Handler] = []
        # Set when the app starts: whether the middleware observes every request.
        self._observed_by_middleware = False
        self._sealed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._catch_all: web.AbstractResource | None = None
        self.route("GET", "/healthz")(self.health.healthz)
        self.route("GET", "/readyz")(self.health.readyz)
        self.route("GET", "/metrics")(self._metrics)
        self.app.on_startup.append(self._seal)
        self.app.cleanup_ctx.append(self._lifetime)

    # -- routes -------------------------------------------------------------
    def route(self, method: str, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        """Register ``handler`` for ``method`` and ``path``, as ``app.router.add_route`` does.

        The handler is wrapped now: aiohttp calls the wrapper, which observes
        the request under the route's template; the handler itself is
        returned unchanged.
        """

        def register(handler: Handler) -> Handler:
            options = dict(kwargs)
            resource = self.app.router.add_resource(path, name=options.pop("name", None))
            route = resource.canonical
            excluded = self._excluded_paths
            observed: Handler
            if isinstance(resource, web.PlainResource) and route in excluded:
                observed = handler  # a probe or a scrape: not traffic
            else:
                # Only a template can match an excluded path some requests and not others.
                check = bool(excluded) and not isinstance(resource, web.PlainResource)
                observed = functools.update_wrapper(
                    functools.partial(self._observe, handler, route, check), handler
                )
            self._own_handlers.append(observed)
            resource.add_route(method, observed, **options)
            return handler

        return register

    def get(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kwargs)

    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> Span:
        """Start a span under the request being served, as cheap as usvc's own.

        Like ``svc.tracer.start_span(name, kind=..., attributes=...)``: a child
        of the current span, not made current, ended by the caller. When the
        current span is the request's server span it is a
        :class:`usvc.spans.UsvcSpan` (recorded only when the request is
        sampled; an unsampled request gets a non-recording span with a span id
        of its own), which skips the SDK span's per-span cost; anywhere else
        (outside a request, under a span the handler made current) it is
        ``svc.tracer``'s span.
        """
        ctx = current_request.get()
        if ctx is None or _current_span() is not ctx.span:
            return self.tracer.start_span(name, kind=kind, attributes=attributes)
        tracing = self.tracing
        span_id = tracing.new_span_id()
        if type(ctx.span) is not UsvcSpan or not ctx.span.is_recording():
            # Unsampled (or tracing off): the request's own flags, as its span has.
            return UnsampledSpan(ctx.trace_id, span_id, SAMPLED if ctx.sampled else NOT_SAMPLED)
        parent = ctx.span.get_span_context()
        span = UsvcSpan(
            tracing, name, span_context(ctx.trace_id, span_id, SAMPLED), parent, kind, {}
        )
        if attributes:
            span.set_attributes(attributes)  # users' values, cleaned as the SDK cleans them
        return span

    def readiness_check(self, check: ReadinessCheck) -> ReadinessCheck:
        """Register ``async def check() -> bool``; /readyz is 503 while any is False."""
        self.health.checks.append(check)
        return check

    # -- lifetime -----------------------------------------------------------
    async def _lifetime(self, app: web.Application) -> AsyncIterator[None]:
        # Kept for the request path (asyncio.get_running_loop() makes a system call).
        self._loop = asyncio.get_running_loop()
        await self.egress.start()
        self.health.started = True
        yield
        self.health.started = False
        self.access_log.flush()
        await self.egress.close()
        await self._flush_spans()

    async def _flush_spans(self) -> None:
        """Flush spans in a thread (the OTLP/zipkin exporters block on HTTP), within stop_by.

        A daemon thread, not the loop's executor: asyncio.run() joins the
        executor's threads at exit, so an exporter stuck on an absent
        collector would hold the process past its shutdown bound.
        """
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def flush() -> None:
            try:
                self.tracing.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(_resolve, done)

        threading.Thread(target=flush, name="usvc-span-flush", daemon=True).start()
        timeout = None if self.stop_by is None else max(self.stop_by - loop.time(), 0.0)
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            log.warning("spans not flushed within SHUTDOWN_TIMEOUT; exiting without them")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": Metrics.content_type}
        )

    # -- the request path ---------------------------------------------------
    def _start(self, request: web.Request, incoming: Incoming, route: str) -> RequestContext:
        # Decide sampling first: an unsampled request then costs an
        # UnsampledSpan, not an SDK span the exporter would drop anyway.
        tracing = self.tracing
        trace_id = incoming.trace_id or tracing.new_trace_id()
        sampled = tracing.head_sampler.sampled(incoming.sampling, trace_id)
        span_id = tracing.new_span_id()
        span: Span
        if sampled and tracing.enabled:
            parent = None
            if incoming.trace_id is not None and incoming.parent_span_id is not None:
                flags = SAMPLED if incoming.trace_flags & 1 else NOT_SAMPLED
                parent = span_context(incoming.trace_id, incoming.parent_span_id, flags, True)
            method = request.method
            attributes: dict[str, AttributeValue] = {
                "http.request.method": method,
                "http.route": route,
                "url.path": request.path,
            }
            if self._span_headers:
                headers = request.headers
                for header, key in self._span_headers:  # what users search traces by
                    value = headers.get(header)
                    if value is not None:
                        attributes[key] = value
            span = UsvcSpan(
                tracing,
                f"{method} {route}",
                span_context(trace_id, span_id, SAMPLED),
                parent,
                SpanKind.SERVER,
                attributes,
            )
        else:
            span = UnsampledSpan(trace_id, span_id, SAMPLED if sampled else NOT_SAMPLED)
        # The deadline: REQUEST_DEADLINE, or Envoy's shorter one.
        deadline = self._request_deadline
        raw = request.headers.get(ENVOY_TIMEOUT_HEADER)
        if raw is not None and raw.isdigit() and int(raw) > 0:
            deadline = min(deadline, int(raw) / 1000)
        return RequestContext(
            incoming,
            span,
            trace_id,
            span_id,
            sampled,
            incoming.request_id or new_request_id(),
            (self._loop or asyncio.get_running_loop()).time() + deadline,
            trace_id.to_bytes(16, "big").hex(),
            span_id.to_bytes(8, "big").hex(),
            route,
        )

    async def _seal(self, app: web.Application) -> None:
        """At startup, after every route: choose how requests are observed (module docstring)."""
        if self._sealed:
            return
        self._sealed = True
        own = {id(handler) for handler in self._own_handlers}
        foreign = any(id(route.handler) not in own for route in app.router.routes())
        if foreign or len(app.middlewares) > 0:
            self._observed_by_middleware = True
            app.middlewares.insert(0, self._middleware)
            return
        catch_all = app.router.add_resource("/{tail:.*}")
        check = bool(self._excluded_paths)
        unmatched = functools.partial(self._observe, self._refuse, UNMATCHED_ROUTE, check)
        catch_all.add_route("*", unmatched)
        self._catch_all = catch_all

    async def _refuse(self, request: web.Request) -> web.StreamResponse:
        """No route matched: aiohttp's own answer, 405 when the path has other methods."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not self._catch_all:
                _, methods = await resource.resolve(request)
                allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Only when the app has routes, sub-apps or middlewares of its own (see _seal).
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        return await self._observe(handler, route, True, request, by_middleware=True)

    async def _observe(
        self,
        handler: Handler,
        route: str,
        check_excluded: bool,
        request: web.Request,
        *,
        by_middleware: bool = False,
    ) -> web.StreamResponse:
        if (self._observed_by_middleware and not by_middleware) or (
            check_excluded and request.path in self._excluded_paths
        ):
            return await handler(request)
        started = time.perf_counter()
        incoming = self.propagator.extract(request.headers)
        if incoming.problems:
            self._header_problems.report(incoming.problems)
        ctx = self._start(request, incoming, route)
        token = current_request.set(ctx)
        # One attach per request: trace.get_current_span() and spans users
        # start with svc.tracer see the server span as their parent.
        otel_token = _attach_span(ctx.span)
        health = self.health
        health.in_flight += 1
        status = 500
        try:
            if self._fault_injection:
                response = await self._serve(request, handler, ctx)
            else:  # _serve, inline: one coroutine less per request
                try:
                    response = await handler(request)
                except web.HTTPException:
                    raise
                except Exception as exc:
                    response = self._failed(request, exc, ctx)
            status = response.status
            response.headers["x-request-id"] = ctx.request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers["x-request-id"] = ctx.request_id
            raise
        except asyncio.CancelledError:
            # The client went away (nginx's 499), or shutdown cut the request
            # (503, what a proxy reports for a reset upstream).
            status = 503 if self.cutting else 499
            raise
        finally:
            duration = time.perf_counter() - started
            span = ctx.span
            if type(span) is UsvcSpan:
                span.outcome(status, error_from=500)  # a 4xx is the client's error
                span.end()
            health.in_flight -= 1
            method = request.method
            self.metrics.observe_request(method, route, status, duration)
            access_log = self.access_log
            if access_log.enabled:
                access_log.write_request(ctx, method, request.path, route, status, duration)
            _detach(otel_token)
            current_request.reset(token)

    async def _serve(
        self, request: web.Request, handler: Handler, ctx: RequestContext
    ) -> web.StreamResponse:
        """The handler's answer, or the problem+json answer for what it raised.

        :meth:`_observe` does the same inline when fault injection is off.
        """
        if self.settings.fault_injection:
            try:
                if faults.should_fail(request.headers.get(faults.FAULT_HEADER)):
                    return problem(
                        500,
                        "Injected fault",
                        "failed on purpose (fault injection)",
                        ctx,
                        service=self.name,
                    )
            except faults.FaultHeaderError as exc:
                return problem(400, "Bad fault header", str(exc), ctx, service=self.name)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            return self._failed(request, exc, ctx)

    def _failed(self, request: web.Request, exc: Exception, ctx: RequestContext) -> web.Response:
        """The answer for an exception a handler raised (not an HTTPException)."""
        if isinstance(exc, aiohttp.ClientError):
            # A call straight through svc.egress.session that failed before its body.
            _, status, detail = failure(exc)
            upstream = upstream_of(exc) or "an upstream"
            return self._upstream_problem(UpstreamError(status, upstream, detail), ctx)
        if isinstance(exc, UpstreamError):
            return self._upstream_problem(exc, ctx)
        log.exception("unhandled error in %s %s", request.method, ctx.route, exc_info=exc)
        return problem(500, "Internal Server Error", "unexpected error", ctx, service=self.name)

    def _upstream_problem(self, exc: UpstreamError, ctx: RequestContext) -> web.Response:
        title = "Gateway Timeout" if exc.status == 504 else "Bad Gateway"
        return problem(
            exc.status,
            title,
            f"{self.name} could not get an answer from {exc.upstream}: {exc.detail}",
            ctx,
            service=self.name,
            upstream=exc.upstream,
            attempts=exc.attempts,
        )

    # -- running ------------------------------------------------------------
    def run(self, host: str | None = None, port: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT, then drain and exit (see :func:`serve`).

        A configuration error (a bad HOST or PORT shows only here) ends the
        process with one line on stderr and exit status 2.
        """
        logs.configure(self.name, self.settings.log_level, instance=self.settings.service_instance)
        try:
            try:
                import uvloop
            except ImportError:
                asyncio.run(serve(self, host, port))
            else:
                uvloop.run(serve(self, host, port))
        except SettingsError as exc:
            print(configuration_error(exc), file=sys.stderr, flush=True)
            raise SystemExit(2) from None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _tracing(settings: Settings) -> Tracing:
    try:
        return Tracing(settings)
    except ImportError as exc:  # the zipkin exporter is an optional extra
        name = settings.otel_traces_exporter
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER={name!r} is invalid here: its exporter ({exc.name}) is not "
            f"installed; pip install 'usvc[{name}]'"
        ) from None


SERVICE_KEY = web.AppKey("usvc.service", Service)


class ProblemLog:
    """Says at DEBUG why trace headers were ignored, at most once per ``interval``.

    The headers are the client's to choose: logging each bad one would let any
    client flood the logs, so the rest are only counted until the next line.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.suppressed = 0
        self._next = 0.0

    def report(self, problems: tuple[str, ...]) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return
        self._next = now + self.interval
        log.debug(
            "ignored trace headers",
            extra={"problems": list(problems), "suppressed_since_last": self.suppressed},
        )
        self.suppressed = 0


# Of SHUTDOWN_TIMEOUT, the part kept for cutting late requests, closing the
# egress session and flushing spans (a quarter of it when that is shorter).
_SHUTDOWN_RESERVE = 1.0


async def serve(
    service: Service,
    host: str | None = None,
    port: int | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``service`` until ``stop`` is set or SIGTERM/SIGINT arrives.

    Shutdown takes at most DRAIN_SECONDS + SHUTDOWN_TIMEOUT: /readyz turns
    503 at once; new requests are still served for DRAIN_SECONDS (endpoints
    take a while to notice; a second signal skips the rest); then the
    listener closes and in-flight requests get SHUTDOWN_TIMEOUT, less a
    reserve for what follows, to finish. Those still running are cut (their
    connections closed, their handlers cancelled) and counted in one log
    line; the egress session closes and spans are flushed in what is left.

    Connections are served with ``handler_cancellation``: a client that goes
    away cancels its handler and the egress calls it awaits (recorded as 499).
    """
    settings = service.settings
    stop = stop or asyncio.Event()
    second_signal = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            second_signal.set()
        log.info("received %s, draining", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signum, on_signal, signum)
    reserve = min(_SHUTDOWN_RESERVE, settings.shutdown_timeout / 4)
    runner = web.AppRunner(
        service.app,
        access_log=None,
        handler_cancellation=True,
        # What aiohttp's own graceful wait gets once ours is over: only
        # handlers that ignored their cancellation are still running then.
        # Never 0, which aiohttp reads as "wait forever".
        shutdown_timeout=max(reserve / 4, 0.01),
    )
    await runner.setup()
    try:
        listener = await _listen(
            runner,
            host or settings.host,
            settings.port if port is None else port,
            settings.request_head_timeout,
        )
    except SettingsError:
        await runner.cleanup()
        raise
    log.info(
        "serving",
        extra={
            "addresses": [_address(sock) for sock in listener.sockets],
            "version": settings.service_version,
            "env": settings.service_env,
        },
    )
    # Objects alive now live for the whole run: keep them out of the
    # collector's generations, which shortens full-collection pauses.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
        service.health.draining = True
        if settings.drain_seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(second_signal.wait(), settings.drain_seconds)
    finally:
        stop_by = loop.time() + settings.shutdown_timeout
        service.stop_by = stop_by
        listener.close()
        server = runner.server
        if server is not None:
            server.pre_shutdown()  # idle keep-alive connections close now, busy ones after
            await _wait_idle(service, stop_by - reserve)
            if service.health.in_flight:
                await _cut(service, server, stop_by - reserve / 2)
        # aiohttp's graceful shutdown finds nothing left to wait for; then
        # cleanup_ctx runs (egress session, span flush bounded by stop_by).
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("stopped")


async def _listen(
    runner: web.AppRunner, host: str, port: int, head_timeout: float
) -> asyncio.Server:
    """Listen with aiohttp's protocol behind :class:`usvc.connections.HeadTimeout`.

    ``loop.create_server`` directly rather than ``web.TCPSite``, whose
    protocol factory cannot be wrapped; serve() closes the listener itself.
    """
    server = runner.server
    assert server is not None, "runner.setup() first"
    factory = with_head_timeout(server, head_timeout)
    if not 0 <= port <= 65535:  # uvloop would quietly listen on port % 65536
        raise SettingsError(
            f"PORT={str(port)!r} is invalid: expected an integer between 0 and 65535"
        )
    try:
        return await asyncio.get_running_loop().create_server(factory, host, port)
    except OSError as exc:
        variable, value = ("PORT", str(port))
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            variable, value = ("HOST", host)
        reason = exc.strerror or str(exc)
        raise SettingsError(
            f"{variable}={value!r} is invalid: cannot listen on {host}:{port} ({reason})"
        ) from None


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    return f"{name[0]}:{name[1]}"


async def _wait_idle(service: Service, until: float) -> None:
    # Polled, not an Event: a signal per request would cost every request
    # for the sake of one shutdown.
    loop = asyncio.get_running_loop()
    while service.health.in_flight and loop.time() < until:  # noqa: ASYNC110
        await asyncio.sleep(min(0.02, max(until - loop.time(), 0.0)))


async def _cut(service: Service, server: web.Server, until: float) -> None:
    """Close the connections of the requests still in flight; say how many."""
    cut = service.health.in_flight
    service.cutting = True
    for connection in server.connections:
        connection.force_close()  # handler_cancellation then cancels its handler
    await _wait_idle(service, until)
    log.warning(
        "shutdown timeout cut %d request(s) short",
        cut,
        extra={"cut": cut, "shutdown_timeout": service.settings.shutdown_timeout},
    )
