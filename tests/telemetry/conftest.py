"""A real Prometheus scraping the local mesh while traffic runs through it.

The mesh runs the `current` scenario with the retry scenario's environment
(fault injection at clock, the `fail` header forwarded), so that
`fail: 1` gives 5xx on every hop of the betaUser path. Prometheus (Debian's
`prometheus` package) runs with the configuration `usvc up --telemetry` gives
it (usvc_mesh.telemetry.prometheus): every workload each second, one job per
workload, with the Deployment's pod labels app/version/env as target labels,
as the kubernetes-pods job of a cluster adds them (the queries must work
despite the clash with usvc_build_info's own env and version), and Envoy's
admin /stats/prometheus as job `envoy`. One more job, `istio`, scrapes a
process serving crafted series in the shape Istio's sidecars emit
(tests/telemetry/istio_metrics.py), for the cluster dashboard.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from load.prometheus import PrometheusError
from load.prometheus import query as prometheus_query
from tests.procs import ROOT, free_port
from usvc_mesh.manifests import Layout
from usvc_mesh.procs import terminate
from usvc_mesh.supervisor import LocalMesh
from usvc_mesh.telemetry import scrape_targets
from usvc_mesh.telemetry.prometheus import Prometheus, scrape_config

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MISSING = "Debian's prometheus package is not installed (apt-get install prometheus)"
RULES = ROOT / "telemetry" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "telemetry" / "prometheus" / "rules.test.yml"
# Scrapes of every target that must have seen traffic before anything is asked.
SCRAPES = 3
DRIVE_SECONDS = 30.0
# Envoy's admin shows histograms as of its last stats flush (every 5 s): a
# rate over them needs two flushes with traffic between.
ENVOY_HISTOGRAMS = "sum(rate(envoy_cluster_upstream_rq_time_count[20s])) > 0"


@dataclass(frozen=True)
class Observed:
    mesh: LocalMesh
    url: str  # Prometheus
    config: Path
    at: float  # when traffic stopped: queries are evaluated at this instant

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return query(self.url, expr, self.at if at is None else at)


def query(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """The result vector of an instant query (load.prometheus.query); a query Prometheus
    refuses (its status is not "success") fails the test with Prometheus's own message."""
    try:
        return prometheus_query(url, expr, at)
    except PrometheusError as error:
        raise AssertionError(str(error)) from None


def prometheus_config(mesh: LocalMesh, rules: Path, istio_port: int) -> dict[str, Any]:
    assert mesh.ports is not None
    config = scrape_config(scrape_targets(mesh), mesh.ports.admin, [rules])
    config["scrape_configs"].append(
        {"job_name": "istio", "static_configs": [{"targets": [f"127.0.0.1:{istio_port}"]}]}
    )
    return config


async def drive(gateway: str, prometheus: str, workloads: int) -> None:
    """Mixed traffic until Prometheus has scraped every workload SCRAPES times.

    Each round has plain requests (middle canary or prod), betaUser ones (middle
    dev, core test, clock), betaUser ones that fail at clock, and 404s at front.
    """
    mix: list[tuple[str, dict[str, str]]] = [
        *[("", {})] * 40,
        *[("", {"x-dev-user": "betaUser"})] * 10,
        *[("", {"x-dev-user": "betaUser", "fail": "1"})] * 5,
        *[("no-such-page", {})] * 5,
    ]
    scraped = f"count(count_over_time(up[1m]) >= {SCRAPES})"
    targets = workloads + 2  # every replica, and envoy, istio
    deadline = time.monotonic() + DRIVE_SECONDS
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as client:

        async def get(path: str, headers: dict[str, str]) -> None:
            async with client.get(gateway + path, headers=headers) as resp:
                await resp.read()

        while True:
            await asyncio.gather(*(get(path, headers) for path, headers in mix))
            found = await asyncio.to_thread(query, prometheus, scraped)
            flushed = await asyncio.to_thread(query, prometheus, ENVOY_HISTOGRAMS)
            if found and int(float(found[0]["value"][1])) == targets and flushed:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus did not scrape every target in time: {found}")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    if PROMETHEUS is None:
        pytest.skip(MISSING)
    tmp = tmp_path_factory.mktemp("telemetry")
    mesh = LocalMesh(
        Layout(ROOT),
        gateway_port=free_port(),
        run_dir=tmp / "run",
        base_env={"OTEL_TRACES_EXPORTER": "none", "PATH": "/usr/bin:/bin"},
    )
    mesh.env_overrides = mesh.layout.scenario_env("retry")
    mesh.start()
    istio_port = free_port()
    istio = subprocess.Popen(
        [sys.executable, "-m", "tests.telemetry.istio_metrics", str(istio_port)], cwd=ROOT
    )
    # The starter `usvc up --telemetry` and the load test use; it writes tmp/prometheus.yml.
    prometheus = Prometheus(prometheus_config(mesh, RULES, istio_port), tmp, free_port())
    try:
        prometheus.start()
        url, config = prometheus.url, tmp / "prometheus.yml"
        assert mesh.ports is not None
        gateway = f"http://{mesh.ports.gateway_host}:{mesh.ports.gateway}/"
        replicas = sum(len(w.members) for w in mesh.workloads.values())
        asyncio.run(drive(gateway, url, replicas))
        yield Observed(mesh, url, config, at=time.time())
    finally:
        prometheus.stop()
        terminate(istio)
        mesh.stop()
