"""A local trace collector: OTLP/HTTP and Zipkin v2 in, one OTLP JSON line per request out.

Without Jaeger on this machine something still has to receive the spans that
``usvc up --telemetry`` makes. This is the least that does: an aiohttp server
with the two endpoints the chain reports to —

* ``POST /v1/traces``: OTLP/HTTP, ``application/x-protobuf`` (what the
  OpenTelemetry SDK's exporter sends) or ``application/json``
  (https://opentelemetry.io/docs/specs/otlp/#otlphttp);
* ``POST /api/v2/spans``: Zipkin v2 JSON (what Envoy's Zipkin tracer sends,
  https://zipkin.io/zipkin-api/#/default/post_spans), converted to OTLP;

and writes every request it accepts as one line of OTLP JSON (an
``ExportTraceServiceRequest``: hex ids, integer enums, the file format of
OpenTelemetry's file exporter) to the run's spans file. :mod:`.waterfall` reads
it back. The scenario the mesh runs when a batch arrives is added to each span
as ``usvc.scenario`` (read from the mesh's state file), since a scenario switch
restarts nothing and a workload cannot know it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

OTLP_PATH = "/v1/traces"
ZIPKIN_PATH = "/api/v2/spans"
PROTOBUF = "application/x-protobuf"
# OTLP's SpanKind values (opentelemetry/proto/trace/v1/trace.proto)
KIND = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
STATUS_ERROR = 2
ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class BadPayload(ValueError):
    """The body is not what its content type says; the sender gets a 400."""


def otlp_from_protobuf(body: bytes) -> dict[str, Any]:
    """An OTLP protobuf ExportTraceServiceRequest as OTLP JSON (hex ids, integer enums)."""
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    message = ExportTraceServiceRequest()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise BadPayload(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    # protobuf's JSON mapping writes bytes as base64; OTLP JSON wants hex ids.
    request: dict[str, Any] = MessageToDict(message, use_integers_for_enums=True)
    for span in spans_of(request):
        for name in ID_FIELDS:
            if span.get(name):
                span[name] = base64.b64decode(span[name]).hex()
        for link in span.get("links", []):
            for name in ("traceId", "spanId"):
                if link.get(name):
                    link[name] = base64.b64decode(link[name]).hex()
    return request


def otlp_from_json(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise BadPayload(f"not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("resourceSpans", []), list):
        raise BadPayload("not an OTLP ExportTraceServiceRequest: no resourceSpans list")
    return request


def otlp_from_zipkin(body: bytes) -> dict[str, Any]:
    """Zipkin v2 spans as OTLP JSON, one resource per local service name."""
    try:
        spans = json.loads(body)
    except ValueError as exc:
        raise BadPayload(f"not JSON: {exc}") from None
    if not isinstance(spans, list):
        raise BadPayload("Zipkin v2 expects a JSON list of spans")
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if not isinstance(span, dict) or not {"traceId", "id"} <= span.keys():
            raise BadPayload(f"a Zipkin span needs traceId and id: {str(span)[:200]}")
        service = _service_name(span)
        by_service.setdefault(service, []).append(_zipkin_span(span))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attribute("service.name", service)]},
                "scopeSpans": [{"scope": {"name": "zipkin"}, "spans": converted}],
            }
            for service, converted in by_service.items()
        ]
    }


def _service_name(span: Mapping[str, Any]) -> str:
    """The span's service: the sidecar Istio's tags name, else its Zipkin local endpoint.

    In a cluster each sidecar is an Envoy of its own, whose Zipkin spans carry
    istiod's ``node.cluster``, ``<app>.<namespace>``. The one local Envoy has
    one node for every sidecar, so its spans say whose sidecar they are in
    the tags istiod adds to every span (``istio.canonical_service``,
    ``istio.namespace``); the same name is made from them here.
    """
    tags = span.get("tags") or {}
    app, namespace = tags.get("istio.canonical_service"), tags.get("istio.namespace")
    if app and namespace:
        return f"{app}.{namespace}"
    return str((span.get("localEndpoint") or {}).get("serviceName") or "unknown")


def _zipkin_span(span: Mapping[str, Any]) -> dict[str, Any]:
    start_ns = int(span.get("timestamp", 0)) * 1000
    tags: dict[str, str] = {str(k): str(v) for k, v in (span.get("tags") or {}).items()}
    converted: dict[str, Any] = {
        "traceId": str(span["traceId"]).rjust(32, "0"),
        "spanId": str(span["id"]),
        "name": span.get("name") or "",
        "kind": KIND.get(str(span.get("kind", "")), 1),
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(start_ns + int(span.get("duration", 0)) * 1000),
        "attributes": [_attribute(k, v) for k, v in tags.items()],
    }
    if span.get("parentId"):
        converted["parentSpanId"] = str(span["parentId"])
    # Envoy tags a failed request "error" (https://zipkin.io/pages/instrumenting).
    if "error" in tags:
        converted["status"] = {"code": STATUS_ERROR, "message": tags["error"]}
    return converted


def _attribute(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def spans_of(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        span
        for resource_spans in request.get("resourceSpans", [])
        for scope_spans in resource_spans.get("scopeSpans", [])
        for span in scope_spans.get("spans", [])
    ]


class Collector:
    """Appends what it receives to ``spans_file``; see the module docstring."""

    def __init__(self, spans_file: Path, state_file: Path | None = None) -> None:
        self.spans_file = spans_file
        self.state_file = state_file
        self.received = 0  # spans
        self._out: TextIO | None = None
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_post(OTLP_PATH, self.otlp)
        self.app.router.add_post(ZIPKIN_PATH, self.zipkin)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.cleanup_ctx.append(self._file)

    async def _file(self, app: web.Application) -> Any:
        self.spans_file.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.spans_file.open("a", encoding="utf-8")
        yield
        self._out.close()

    def scenario(self) -> str | None:
        if self.state_file is None:
            return None
        try:
            scenario = json.loads(self.state_file.read_text()).get("scenario")
        except (OSError, ValueError):
            return None
        return scenario if isinstance(scenario, str) else None

    def write(self, request: dict[str, Any]) -> int:
        spans = spans_of(request)
        scenario = self.scenario()
        if scenario is not None:
            for span in spans:
                span.setdefault("attributes", []).append(_attribute("usvc.scenario", scenario))
        assert self._out is not None
        self._out.write(json.dumps(request, separators=(",", ":")) + "\n")
        self._out.flush()  # `usvc trace` reads it while we run
        self.received += len(spans)
        return len(spans)

    async def otlp(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            if request.content_type == PROTOBUF:
                self.write(otlp_from_protobuf(body))
                # An empty ExportTraceServiceResponse: full success.
                return web.Response(body=b"", content_type=PROTOBUF)
            if request.content_type == "application/json":
                self.write(otlp_from_json(body))
                return web.json_response({})
        except BadPayload as exc:
            return web.Response(status=400, text=f"{exc}\n")
        return web.Response(
            status=415, text=f"send {PROTOBUF} or application/json, not {request.content_type}\n"
        )

    async def zipkin(self, request: web.Request) -> web.Response:
        try:
            self.write(otlp_from_zipkin(await request.read()))
        except BadPayload as exc:
            return web.Response(status=400, text=f"{exc}\n")
        return web.Response(status=202)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"spans": self.received, "file": str(self.spans_file)})


async def serve(collector: Collector, listener: socket.socket) -> None:
    runner = web.AppRunner(collector.app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, listener).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m usvc_mesh.telemetry.collector --port P --out FILE``; ``usvc up`` passes
    ``--fd``, a listening socket it made (so the port was taken before the mesh chose its own)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--fd", type=int, help="an inherited listening socket")
    parser.add_argument("--out", type=Path, required=True, help="the spans file (appended)")
    parser.add_argument("--state", type=Path, default=None, help="the mesh's state file")
    args = parser.parse_args(argv)
    import signal

    if args.fd is not None:
        listener = socket.socket(fileno=args.fd)
    else:
        listener = socket.create_server((args.host, args.port))
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(Collector(args.out, args.state), listener))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
