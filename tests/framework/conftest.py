"""Fixtures: real usvc services on loopback, spans captured in memory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import usvc
from usvc.tracing import Tracing

ServiceFactory = Callable[..., usvc.Service]
Serve = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def make_service(spans: InMemorySpanExporter) -> ServiceFactory:
    """Build a Service from an explicit environment (never the test runner's)."""

    def build(name: str = "svc", **env: Any) -> usvc.Service:
        environ = {"OTEL_TRACES_EXPORTER": "none", **{k: str(v) for k, v in env.items()}}
        settings = usvc.Settings.from_env(name, environ)
        return usvc.Service(name, settings=settings, tracing=Tracing(settings, spans, batch=False))

    return build


@pytest.fixture
async def serve(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Serve:
    async def start(app: web.Application) -> TestServer:
        return await aiohttp_server(app, host="127.0.0.1")

    return start
