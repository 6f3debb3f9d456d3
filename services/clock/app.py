"""clock: the bottom of the chain. Answers the time, calls nobody."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

import usvc
from services.chain import add_hello, hop, respond

svc = usvc.Service("clock")
add_hello(svc)


@svc.get("/")
async def index(request: web.Request) -> web.Response:
    started = time.perf_counter()
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    return respond(request, hop(svc, started, None, upstream=f"clock: {now}", time=now))


if __name__ == "__main__":
    svc.run()
