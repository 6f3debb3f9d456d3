"""middle: runs as dev, canary and prod (SERVICE_ENV). Calls core-svc (UPSTREAM_URI)."""

from aiohttp import web

import usvc
from services.chain import add_hello, relay

svc = usvc.Service("middle")
add_hello(svc)


@svc.get("/")
async def index(request: web.Request) -> web.Response:
    return await relay(svc, request, svc.settings.upstream_uri or "http://core-svc/")


if __name__ == "__main__":
    svc.run()
