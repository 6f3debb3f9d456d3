"""front: the edge of the chain. Calls middleware-svc (UPSTREAM_URI)."""

from aiohttp import web

import usvc
from services.chain import add_hello, relay

svc = usvc.Service("front")
add_hello(svc)


@svc.get("/")
async def index(request: web.Request) -> web.Response:
    return await relay(svc, request, svc.settings.upstream_uri or "http://middleware-svc/")


if __name__ == "__main__":
    svc.run()
