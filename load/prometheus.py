"""A Prometheus of our own (Debian's ``prometheus`` package) scraping the local mesh.

Shared by the load test and tests/telemetry: what to scrape, the configuration
file, starting and stopping the server, and instant queries. Every workload is
its own job, as the kubernetes-pods job of a cluster has one target per pod;
the gateway Envoy's own stats (``/stats/prometheus`` on its admin port) are the
job ``envoy``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from usvc_mesh.procs import free_port, http_ok, terminate

MISSING = "Debian's prometheus package is not installed (apt-get install prometheus)"
PROMETHEUS = shutil.which("prometheus")
ENVOY_JOB = "envoy"

# Loopback only: a proxy named by the environment must not get the queries.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusError(RuntimeError):
    """Prometheus could not be started, or refused a query (its own message)."""


@dataclass(frozen=True)
class Target:
    """One scrape target: a job of one address, with target labels."""

    job: str
    addresses: tuple[str, ...]  # host:port, one per replica
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"


def scrape_config(
    targets: Iterable[Target], rules: Sequence[Path] = (), interval: str = "1s"
) -> dict[str, Any]:
    """A prometheus.yml scraping each target every ``interval``."""
    jobs = []
    for target in targets:
        job: dict[str, Any] = {
            "job_name": target.job,
            "static_configs": [{"targets": list(target.addresses), "labels": dict(target.labels)}],
        }
        if target.metrics_path != "/metrics":
            job["metrics_path"] = target.metrics_path
        jobs.append(job)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(path) for path in rules],
        "scrape_configs": jobs,
    }


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


class Prometheus:
    """``prometheus`` started on a free loopback port with ``config``; stopped by its pid.

    Use as a context manager. ``workdir`` receives prometheus.yml,
    prometheus.log and the TSDB (``data/``).
    """

    def __init__(self, config: Mapping[str, Any], workdir: Path, binary: str | None = None):
        found = binary or shutil.which("prometheus")
        if found is None:
            raise PrometheusError(MISSING)
        self.binary = found
        self.config = dict(config)
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not http_ok(f"{self.url}/-/ready"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(
                    f"prometheus did not start:\n{self.log_path.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        return self.url

    def wait_scraped(self, targets: int, scrapes: int = 1, timeout: float = 30.0) -> None:
        """Block until each of ``targets`` targets is up and was scraped ``scrapes`` times."""
        expr = f"count(count_over_time(up[1m]) >= {scrapes} and up == 1)"
        deadline = time.monotonic() + timeout
        while (scalar(self.url, expr) or 0) < targets:
            if time.monotonic() > deadline:
                down = [
                    r["metric"].get("job", "?") for r in query(self.url, "up == 0")
                ] or "none up yet"
                raise PrometheusError(f"not every target was scraped in {timeout:g}s; down: {down}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
