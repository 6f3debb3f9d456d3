"""Liveness, readiness and the drain that graceful shutdown needs.

``/healthz`` answers 200 while the event loop runs. ``/readyz`` answers 200
once start-up finished and every readiness check passes, and 503 from the
moment draining starts, so load balancers (and Kubernetes endpoints, and the
local mesh) stop sending new work while in-flight work completes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

ReadinessCheck = Callable[[], Awaitable[bool]]


class Health:
    def __init__(self) -> None:
        self.started = False
        self.draining = False
        self.checks: list[ReadinessCheck] = []
        self.in_flight = 0

    async def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if not self.started:
            return False, "starting"
        for check in self.checks:
            try:
                if not await check():
                    return False, f"check {getattr(check, '__name__', 'unnamed')} failed"
            except Exception as exc:  # a broken check means not ready, not a 500
                return False, f"check {getattr(check, '__name__', 'unnamed')} raised {exc!r}"
        return True, "ready"

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ok, reason = await self.ready()
        return web.json_response({"status": reason}, status=200 if ok else 503)
