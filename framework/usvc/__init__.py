"""usvc: a small layer over aiohttp for services in a service mesh.

A service is an aiohttp application with trace propagation, OpenTelemetry
spans, Prometheus RED metrics, an egress client, health endpoints and
graceful shutdown already wired in::

    import usvc
    from aiohttp import web

    svc = usvc.Service("front")

    @svc.get("/")
    async def index(request: web.Request) -> web.Response:
        async with svc.egress.get(svc.settings.upstream_uri) as upstream:
            return web.Response(text=await upstream.text())
"""

from .client import ClientInstrumentation, UpstreamResponse
from .context import RequestContext, current
from .egress import Egress, UpstreamError
from .service import Service, problem, serve
from .settings import Settings, SettingsError
from .version import USVC_VERSION

__all__ = [
    "ClientInstrumentation",
    "Egress",
    "RequestContext",
    "Service",
    "Settings",
    "SettingsError",
    "UpstreamError",
    "UpstreamResponse",
    "current",
    "problem",
    "serve",
]
__version__ = USVC_VERSION
