"""What every hop of the demo chain shares: calling the next hop and the reply.

Each hop answers with where it is (service, version, env, and the instance
that answered: SERVICE_INSTANCE, the pod's name in a cluster), how long it took
and what it called, with the upstream's own answer nested beneath. Plain text
by default, one line per hop as the original demo printed it; JSON with
``Accept: application/json``. Hops ask each other for JSON and render text
only at the edge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

import usvc

JSON = "application/json"


@dataclass
class HopFailed(Exception):
    """The next hop answered with an error; ``problem`` is what it said."""

    status: int
    upstream: str
    problem: dict[str, Any]


async def call_json(svc: usvc.Service, url: str, within: float | None = None) -> dict[str, Any]:
    """GET ``url`` as JSON through the egress client; raise HopFailed on an error answer.

    ``within`` (seconds) bounds the call, retries included, inside the request's deadline.
    """
    async with svc.egress.get(url, timeout=within, headers={"Accept": JSON}) as resp:
        try:
            body = await resp.json(content_type=None)
        except (ValueError, aiohttp.ContentTypeError):
            text = (await resp.text())[:200]
            body = {"detail": f"not JSON: {text!r}"}
        if resp.status >= 400 or not isinstance(body, dict):
            problem = body if isinstance(body, dict) else {"detail": repr(body)[:200]}
            raise HopFailed(resp.status, url, problem)
        return body


def hop(svc: usvc.Service, started: float, called: str | None, **fields: Any) -> dict[str, Any]:
    settings = svc.settings
    ctx = usvc.current()
    reply: dict[str, Any] = {
        "service": settings.service_name,
        "version": settings.service_version,
        "env": settings.service_env,
        "instance": settings.service_instance,
        "took_ms": round((time.perf_counter() - started) * 1000, 1),
        "called": called,
    }
    if ctx is not None:
        reply["trace_id"] = ctx.trace_id_hex
    reply.update(fields)
    return reply


def render_text(reply: dict[str, Any], depth: int = 0) -> str:
    """One line per hop, the upstream indented beneath, as the original demo printed."""
    pad = "  " * depth
    where = f"{reply['service']} {reply['version']} ({reply['env']})"
    if reply.get("instance"):
        where += f" {reply['instance']}"
    line = f"{pad}took ({reply['took_ms']:g} ms) {where}"
    if reply.get("called"):
        line += f" --> {reply['called']}"
    lines = [line]
    if reply.get("note"):
        lines.append(f"{pad}  note: {reply['note']}")
    upstream = reply.get("upstream")
    if isinstance(upstream, dict) and "service" in upstream:
        lines.append(render_text(upstream, depth + 1))
    elif upstream is not None:
        lines.append(f"{pad}  {upstream}")
    return "\n".join(lines)


def respond(request: web.Request, reply: dict[str, Any]) -> web.Response:
    if JSON in request.headers.get("Accept", ""):
        return web.json_response(reply)
    return web.Response(text=render_text(reply) + "\n")


def failed(svc: usvc.Service, exc: HopFailed) -> web.Response:
    """Our answer when the next hop failed: its problem nested as the cause."""
    status = 504 if exc.status == 504 else 502
    return usvc.problem(
        status,
        "Gateway Timeout" if status == 504 else "Bad Gateway",
        f"{svc.name} called {exc.upstream}, which answered {exc.status}: "
        f"{exc.problem.get('detail', exc.problem.get('title', ''))}",
        usvc.current(),
        service=svc.name,
        upstream=exc.upstream,
        cause=exc.problem,
    )


async def relay(svc: usvc.Service, request: web.Request, url: str) -> web.Response:
    """The body of a middle hop: call ``url``, nest its reply, say how long it took."""
    started = time.perf_counter()
    try:
        upstream = await call_json(svc, url)
    except HopFailed as exc:
        return failed(svc, exc)
    return respond(request, hop(svc, started, url, upstream=upstream))


def add_hello(svc: usvc.Service) -> None:
    @svc.get("/hello")
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world!"})
