"""The benchmarked servers, one build per process: ``python -m bench.server BUILD``.

Builds (configuration comes from the environment, as for a real service):

``bare``   aiohttp alone: the ceiling.
``otel``   what a user assembles instead of usvc: OpenTelemetry's aiohttp
           server and client auto-instrumentation, an SDK tracer provider
           sampling every request into a BatchSpanProcessor whose exporter
           drops the spans, and a prometheus-client histogram middleware.
``usvc``   a ``usvc.Service`` answering "ok", or for a chain hop the real
           ``services/<role>/app.py``; ``BENCH_EXPORTER=drop`` adds the
           ``otel`` build's BatchSpanProcessor-into-a-dropping-exporter.

``BENCH_ROLE`` picks the route: ``single`` answers "ok"; ``front``,
``middle`` and ``core`` call UPSTREAM_URI for JSON and nest its reply, and
``clock`` answers the time, the way ``services/`` does.

Every build runs on the same event loop: uvloop when ``BENCH_LOOP=uvloop``,
asyncio's own loop otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHAIN_ROLES = ("front", "middle", "core", "clock")
CLIENT_KEY = web.AppKey("bench.client", aiohttp.ClientSession)


def render_text(reply: dict[str, Any], depth: int = 0) -> str:
    """One line per hop, the upstream indented beneath (the demo's text format)."""
    pad = "  " * depth
    where = f"{reply['service']} {reply['version']} ({reply['env']}) {reply['instance']}"
    line = f"{pad}took ({reply['took_ms']:g} ms) {where}"
    if reply.get("called"):
        line += f" --> {reply['called']}"
    upstream = reply.get("upstream")
    if isinstance(upstream, dict):
        return line + "\n" + render_text(upstream, depth + 1)
    return f"{line}\n{pad}  {upstream}"


def respond(request: web.Request, reply: dict[str, Any]) -> web.Response:
    if JSON in request.headers.get("Accept", ""):
        return web.json_response(reply)
    return web.Response(text=render_text(reply) + "\n")


def hop_handler(role: str, upstream: str | None) -> Handler:
    """A chain hop without any framework: the same work as ``services/``.

    The same reply, field for field, but for what only the framework knows
    (the trace id): the instance is the host's name, as a usvc service's is
    by default.
    """
    instance = socket.gethostname()

    async def index(request: web.Request) -> web.Response:
        started = time.perf_counter()
        reply: dict[str, Any] = {
            "service": role,
            "version": "v1",
            "env": "bench",
            "instance": instance,
        }
        if upstream is None:
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            reply.update(upstream=f"clock: {now}", time=now, called=None)
        else:
            client = request.app[CLIENT_KEY]
            async with client.get(upstream, headers={"Accept": JSON}) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise web.HTTPBadGateway(text=f"{role}: {upstream} answered {resp.status}")
            reply.update(upstream=body, called=upstream)
        reply["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return respond(request, reply)

    return index


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def plain_app(role: str, middlewares: Sequence[Any] = ()) -> web.Application:
    """The app of the ``bare`` and ``otel`` builds (``otel`` patches web.Application)."""
    app = web.Application(middlewares=list(middlewares))
    if role == "single":
        app.router.add_get("/", ok)
        return app
    upstream = os.environ.get("UPSTREAM_URI") if role != "clock" else None
    if role != "clock" and not upstream:
        raise SystemExit(f"bench.server: role {role} needs UPSTREAM_URI")
    app.router.add_get("/", hop_handler(role, upstream))
    if upstream is not None:

        async def client_lifetime(app: web.Application) -> Any:
            # The default connector pools keep-alive connections, as usvc's does.
            async with aiohttp.ClientSession() as client:
                app[CLIENT_KEY] = client
                yield

        app.cleanup_ctx.append(client_lifetime)
    return app


def otel_app(role: str) -> web.Application:
    """What the OpenTelemetry docs lead a user to assemble, plus prometheus-client."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from prometheus_client import Histogram, generate_latest

    provider = TracerProvider(resource=Resource.create({"service.name": f"bench-{role}"}))
    provider.add_span_processor(BatchSpanProcessor(drop_exporter()))
    trace.set_tracer_provider(provider)
    AioHttpServerInstrumentor().instrument()
    AioHttpClientInstrumentor().instrument()
    duration = Histogram(
        "http_request_duration_seconds",
        "Time to serve a request.",
        ("method", "route", "status"),
    )

    @web.middleware
    async def metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            duration.labels(request.method, route, str(status)).observe(
                time.perf_counter() - started
            )

    app = plain_app(role, [metrics])

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), content_type="text/plain")

    app.router.add_get("/metrics", scrape)
    return app


def drop_exporter() -> Any:
    """A span exporter that accepts every batch and keeps nothing: export without I/O."""
    # Imported here so that the bare build never loads OpenTelemetry.
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    return Drop()


def usvc_service(role: str) -> Any:
    """The one-route usvc service, or a real ``services/`` app for a chain hop."""
    import importlib

    import usvc

    if role in CHAIN_ROLES:
        svc = importlib.import_module(f"services.{role}.app").svc
    else:
        svc = usvc.Service("bench")

        @svc.get("/")
        async def index(request: web.Request) -> web.Response:
            return web.Response(text="ok")

    if os.environ.get("BENCH_EXPORTER") == "drop":
        # With OTEL_TRACES_EXPORTER=none the provider has no processor yet; this
        # gives it the same export path as the otel build.
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        svc.tracing.provider.add_span_processor(BatchSpanProcessor(drop_exporter()))
    return svc


async def serve_app(app: web.Application, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT: what ``web.run_app`` does, on the loop we chose."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(json.dumps({"serving": f"{host}:{port}"}), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(main: Coroutine[Any, Any, None]) -> None:
    if os.environ.get("BENCH_LOOP", "uvloop") == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def main(argv: Sequence[str]) -> None:
    if len(argv) != 1 or argv[0] not in ("bare", "otel", "usvc"):
        raise SystemExit("usage: python -m bench.server bare|otel|usvc  (env: BENCH_ROLE, PORT)")
    build = argv[0]
    role = os.environ.get("BENCH_ROLE", "single")
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    if build == "usvc":
        from usvc import logs, serve

        svc = usvc_service(role)
        logs.configure(svc.name, svc.settings.log_level)
        run(serve(svc, host, port))
        return
    app = plain_app(role) if build == "bare" else otel_app(role)
    run(serve_app(app, host, port))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
