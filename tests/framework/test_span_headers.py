"""SPAN_HEADERS: the request headers users search traces by, on the server span."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import usvc

from .conftest import Serve, ServiceFactory


async def server_span_attributes(
    make_service: ServiceFactory,
    serve: Serve,
    spans: InMemorySpanExporter,
    headers: dict[str, str],
    **env: str,
) -> dict[str, object]:
    svc = make_service("front", **env)

    @svc.get("/")
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    server = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/"), headers=headers) as resp:
            assert resp.status == 200
    (span,) = spans.get_finished_spans()
    return dict(span.attributes or {})


async def test_x_dev_user_is_recorded_as_usvc_dev_user_by_default(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    attributes = await server_span_attributes(
        make_service, serve, spans, {"x-dev-user": "betaUser", "x-tenant": "acme"}
    )
    assert attributes["usvc.dev_user"] == "betaUser"
    assert "http.request.header.x-tenant" not in attributes


async def test_other_listed_headers_become_http_request_header_attributes(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    attributes = await server_span_attributes(
        make_service, serve, spans, {"X-Tenant": "acme"}, SPAN_HEADERS="x-dev-user, X-Tenant"
    )
    assert attributes["http.request.header.x-tenant"] == "acme"
    assert "usvc.dev_user" not in attributes  # not sent: not recorded


async def test_a_header_left_out_of_span_headers_is_not_recorded(
    make_service: ServiceFactory, serve: Serve, spans: InMemorySpanExporter
) -> None:
    attributes = await server_span_attributes(
        make_service, serve, spans, {"x-dev-user": "betaUser"}, SPAN_HEADERS="x-tenant"
    )
    assert not any(k == "usvc.dev_user" or k.startswith("http.request.header.") for k in attributes)


def test_a_malformed_span_headers_stops_start_up_naming_it() -> None:
    with pytest.raises(usvc.SettingsError, match="SPAN_HEADERS"):
        usvc.Settings.from_env("front", {"SPAN_HEADERS": "x-dev-user, not a header"})
