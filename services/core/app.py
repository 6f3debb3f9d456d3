"""core: prod asks worldtimeapi (egress through the mesh); test asks clock.

The upstream is UPSTREAM_URI either way; the reply's shape says which it
was. worldtimeapi is on the public internet, often slow or rate-limited and
unreachable from many clusters: when it fails within TIME_API_TIMEOUT the
reply says so in one line and, when FALLBACK_URI is set, answers from clock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from yarl import URL

import usvc
from services.chain import HopFailed, add_hello, call_json, failed, hop, respond

svc = usvc.Service("core")
add_hello(svc)
UPSTREAM = svc.settings.upstream_uri or "http://clock-svc/"
FALLBACK = svc.settings.env.url("FALLBACK_URI")
TIME_API_TIMEOUT = svc.settings.env.seconds("TIME_API_TIMEOUT", 2.0, high=60.0)


def describe_worldtime(body: dict[str, Any]) -> str:
    """worldtimeapi's JSON (/api/timezone/Area/City) in one line."""
    return (
        f"worldtimeapi: {body['datetime']} in {body['timezone']}"
        f" ({body.get('abbreviation', '?')}, UTC{body.get('utc_offset', '?')})"
    )


async def ask(url: str) -> dict[str, Any]:
    async with asyncio.timeout(TIME_API_TIMEOUT):
        return await call_json(svc, url)


@svc.get("/")
async def index(request: web.Request) -> web.Response:
    started = time.perf_counter()
    try:
        body = await ask(UPSTREAM)
    except (HopFailed, usvc.UpstreamError, TimeoutError) as exc:
        if isinstance(exc, HopFailed) and "service" in exc.problem:
            return failed(svc, exc)  # a mesh hop (clock) failed: say so, don't mask it
        reason = why(exc)
        if FALLBACK is None:
            raise usvc.UpstreamError(
                504 if isinstance(exc, TimeoutError) else 502, host_of(UPSTREAM), reason
            ) from None
        try:
            clock = await call_json(svc, FALLBACK)
        except HopFailed as inner:
            return failed(svc, inner)
        note = f"{host_of(UPSTREAM)} {reason}; answered from {host_of(FALLBACK)} (fallback)"
        return respond(
            request, hop(svc, started, FALLBACK, upstream=clock, note=note, fallback=True)
        )
    if "service" in body:  # another hop of the chain (clock)
        return respond(request, hop(svc, started, UPSTREAM, upstream=body))
    try:
        line = describe_worldtime(body)
    except KeyError:
        raise usvc.UpstreamError(
            502, host_of(UPSTREAM), "answered JSON that is not worldtimeapi's timezone format"
        ) from None
    return respond(request, hop(svc, started, UPSTREAM, upstream=line, worldtime=body))


def host_of(url: str) -> str:
    return URL(url).host or url


def why(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"did not answer within {TIME_API_TIMEOUT:g}s"
    if isinstance(exc, HopFailed):
        return f"answered {exc.status}"
    assert isinstance(exc, usvc.UpstreamError)
    return str(exc.detail)


if __name__ == "__main__":
    svc.run()
