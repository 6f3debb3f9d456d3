"""A plain aiohttp service (no usvc) for the local mesh's non-demo test.

It answers ``NAME`` and, when UPSTREAM is set, what the upstream answered,
calling it through EGRESS_PROXY as a workload behind a sidecar would.
"""

import os

from aiohttp import ClientSession, web

NAME = os.environ["GREETER_NAME"]
UPSTREAM = os.environ.get("UPSTREAM", "")
PROXY = os.environ.get("EGRESS_PROXY") or None


async def hello(request: web.Request) -> web.Response:
    text = NAME
    if UPSTREAM:
        headers = {k: v for k, v in request.headers.items() if k.lower() == "x-variant"}
        async with ClientSession() as client:
            async with client.get(UPSTREAM, proxy=PROXY, headers=headers) as upstream:
                text += " > " + await upstream.text()
    return web.Response(text=text)


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


app = web.Application()
app.router.add_get("/", hello)
app.router.add_get("/ready", ready)

if __name__ == "__main__":
    web.run_app(app, host=os.environ["HOST"], port=int(os.environ["PORT"]), print=None)
