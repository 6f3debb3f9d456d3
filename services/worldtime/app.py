"""A stand-in for worldtimeapi.org, for tests and offline demos.

Speaks the real API's JSON for ``GET /api/timezone/<Area>/<City>`` (and
``/api/timezone/Etc/UTC``), and its 404 for an unknown location. Only a few
zones are known, each with a fixed offset: enough for the demo, no tz database
needed in a minimal container. It is not a usvc service on purpose: it plays
the public internet, outside the mesh.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone

from aiohttp import web

ZONES: dict[str, tuple[int, str]] = {  # name: (offset in seconds, abbreviation)
    "Asia/Jakarta": (7 * 3600, "WIB"),
    "Asia/Tokyo": (9 * 3600, "JST"),
    "Asia/Kolkata": (19800, "IST"),
    "Europe/London": (0, "GMT"),
    "America/Sao_Paulo": (-3 * 3600, "-03"),
    "Etc/UTC": (0, "UTC"),
}


def offset_text(seconds: int) -> str:
    sign = "+" if seconds >= 0 else "-"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def describe(zone: str, now: datetime, client_ip: str) -> dict[str, object]:
    offset, abbreviation = ZONES[zone]
    local = now.astimezone(timezone(timedelta(seconds=offset)))
    return {
        "utc_offset": offset_text(offset),
        "timezone": zone,
        "day_of_week": local.isoweekday() % 7,
        "day_of_year": local.timetuple().tm_yday,
        "datetime": local.isoformat(timespec="microseconds"),
        "utc_datetime": now.isoformat(timespec="microseconds"),
        "unixtime": int(now.timestamp()),
        "raw_offset": offset,
        "week_number": local.isocalendar().week,
        "dst": False,
        "abbreviation": abbreviation,
        "dst_offset": 0,
        "dst_from": None,
        "dst_until": None,
        "client_ip": client_ip,
    }


async def timezone_handler(request: web.Request) -> web.Response:
    zone = f"{request.match_info['area']}/{request.match_info['city']}"
    if zone not in ZONES:
        return web.json_response({"error": "unknown location"}, status=404)
    now = datetime.now(UTC)
    return web.json_response(describe(zone, now, request.remote or ""))


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/timezone/{area}/{city}", timezone_handler)
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8080")),
        print=None,
    )
