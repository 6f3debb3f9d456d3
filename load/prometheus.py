"""Prometheus for the load test: the one the local mesh's telemetry starts, and queries.

Starting Debian's ``prometheus`` and its scrape configuration (one job per
workload, the job ``envoy`` for the gateway Envoy's admin stats) come from
usvc_mesh.telemetry.prometheus, the module ``usvc up --telemetry`` and
tests/telemetry use; this adds what the load test needs on top: waiting until
every target has been scraped, instant queries, and the scrape interval of a
Prometheus given by URL.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import yaml

from usvc_mesh.telemetry.prometheus import MISSING, Prometheus, scrape_config

__all__ = [
    "MISSING",
    "PROMETHEUS",
    "Prometheus",
    "PrometheusError",
    "query",
    "scalar",
    "scrape_config",
    "scrape_interval",
    "wait_scraped",
]

PROMETHEUS = shutil.which("prometheus")

# Loopback only: a proxy named by the environment must not get the queries.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusError(RuntimeError):
    """Prometheus refused a query (its own message) or did not scrape in time."""


def query(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """The result vector of an instant query at ``at`` (Unix time; default now)."""
    params = {"query": expr, **({} if at is None else {"time": f"{at:.3f}"})}
    request = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        with NO_PROXY.open(request, timeout=10) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as error:
        body = json.load(error)
    except (urllib.error.URLError, OSError) as error:
        raise PrometheusError(f"{url}: {error}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{expr}\n-> {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(url: str, expr: str, at: float | None = None) -> float | None:
    """The value of a one-element result, or None when the result is empty."""
    found = query(url, expr, at)
    return float(found[0]["value"][1]) if found else None


def wait_scraped(url: str, targets: int, scrapes: int = 1, timeout: float = 30.0) -> None:
    """Block until ``targets`` targets are up and each was scraped ``scrapes`` times."""
    expr = f"count(count_over_time(up[1m]) >= {scrapes} and up == 1)"
    deadline = time.monotonic() + timeout
    while (scalar(url, expr) or 0) < targets:
        if time.monotonic() > deadline:
            down = [r["metric"].get("job", "?") for r in query(url, "up == 0")]
            raise PrometheusError(
                f"not every target was scraped in {timeout:g}s; down: {down or 'none up yet'}"
            )
        time.sleep(0.25)


def scrape_interval(url: str) -> float | None:
    """The global scrape interval of the Prometheus at ``url``, in seconds (None: unknown)."""
    try:
        with NO_PROXY.open(f"{url.rstrip('/')}/api/v1/status/config", timeout=10) as resp:
            config = yaml.safe_load(json.load(resp)["data"]["yaml"])
        text = str(config["global"]["scrape_interval"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    return None
