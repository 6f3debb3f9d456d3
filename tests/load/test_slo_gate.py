"""The load tool as users run it: `python -m load` against a real local mesh and Prometheus.

A short healthy run passes its gate; the same run against an SLO no chain can
meet (p99 under a microsecond) fails it, with the breach in the table and a
non-zero exit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from load.prometheus import MISSING, PROMETHEUS
from tests.chain.conftest import start_mesh
from tests.procs import ROOT
from usvc_mesh.supervisor import LocalMesh

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason=MISSING),
]

HOPS = ("front", "middle", "core", "clock")


@dataclass(frozen=True)
class Run:
    status: int
    out: str  # what it printed
    report: dict[str, Any]  # its slo.json

    def row(self, check: str) -> str:
        found = [line for line in self.out.splitlines() if line.startswith(f"{check} ")]
        assert found, f"no row {check!r} in:\n{self.out}"
        return found[0]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    running = start_mesh(tmp_path_factory.mktemp("gate"))
    yield running
    running.stop()


def run_load(mesh: LocalMesh, tmp: Path, slo: Mapping[str, object], *options: str) -> Run:
    assert mesh.run_dir is not None
    slo_file = tmp / "slo.yaml"
    slo_file.write_text(yaml.safe_dump(dict(slo)))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "load",
            "--mesh-run-dir",
            str(mesh.run_dir),
            "--duration",
            "8s",
            "--rate",
            "20",
            "--slo",
            str(slo_file),
            "--out",
            str(tmp / "runs"),
            *options,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(done.stdout, done.stderr)
    [report] = (tmp / "runs").glob("*/slo.json")
    return Run(done.returncode, done.stdout, json.loads(report.read_text()))


@pytest.fixture(scope="module")
def healthy(mesh: LocalMesh, tmp_path_factory: pytest.TempPathFactory) -> Run:
    slo = {
        "locust": {"max_failure_ratio": 0},
        "gateway": {"max_5xx_ratio": 0},
        "hops": {"default": {"max_5xx_ratio": 0, "p99_ms": 10_000}},
    }
    return run_load(mesh, tmp_path_factory.mktemp("healthy"), slo)


@pytest.fixture(scope="module")
def impossible(mesh: LocalMesh, tmp_path_factory: pytest.TempPathFactory) -> Run:
    slo = {"gateway": {"max_5xx_ratio": 0}, "hops": {"default": {"p99_ms": 0.001}}}
    return run_load(mesh, tmp_path_factory.mktemp("impossible"), slo)


def test_a_healthy_run_passes_the_gate_and_exits_0(healthy: Run) -> None:
    assert healthy.status == 0
    assert "SLO gate: PASS" in healthy.out


def test_a_healthy_run_checks_every_hop_and_the_gateway_in_prometheus(healthy: Run) -> None:
    for check in ["locust failures", "gateway 5xx", *(f"{hop} p99" for hop in HOPS)]:
        assert healthy.row(check).endswith("PASS")


def test_a_healthy_run_reports_the_requests_the_gateway_counted(healthy: Run) -> None:
    locust = int(healthy.row("locust total").split()[2])
    gateway = int(healthy.row("gateway").split()[1])
    assert locust >= 100
    assert gateway == locust


def test_an_impossible_p99_fails_the_gate_with_exit_1(impossible: Run) -> None:
    assert impossible.status == 1
    assert "SLO gate: FAIL" in impossible.out


def test_an_impossible_p99_is_named_as_the_breach_per_hop(impossible: Run) -> None:
    for hop in HOPS:
        assert impossible.row(f"{hop} p99").endswith("FAIL")
    assert impossible.row("gateway 5xx").endswith("PASS")


@pytest.fixture(scope="module")
def mixed(mesh: LocalMesh, tmp_path_factory: pytest.TempPathFactory) -> Run:
    slo = {"locust": {"max_failure_ratio": 0}}
    return run_load(mesh, tmp_path_factory.mktemp("mixed"), slo, "--scenario", "mixed")


def test_the_mixed_scenario_sends_80_10_10_no_header_beta_and_stress(mixed: Run) -> None:
    counts = {
        row["name"]: row["requests"]
        for row in mixed.report["measured"]
        if row["name"].startswith("locust / ")
    }
    total = sum(counts.values())
    shares = {name.removeprefix("locust / "): count / total for name, count in counts.items()}
    assert total >= 100
    assert shares == pytest.approx({"no header": 0.8, "betaUser": 0.1, "stressTest": 0.1}, abs=0.02)


def test_the_mixed_scenario_gates_every_hop_of_its_three_routes(mixed: Run) -> None:
    assert mixed.status == 0
    hops = {row["name"] for row in mixed.report["measured"] if not row["name"].startswith("locust")}
    assert hops == {"gateway", "front", "middle", "core", "clock"}


def test_a_run_against_the_local_mesh_reports_the_rss_of_every_process(
    healthy: Run, mesh: LocalMesh
) -> None:
    rss = healthy.report["rss_kib"]
    replicas = {
        name if len(workload.members) == 1 else f"{name}-{index + 1}"
        for name, workload in mesh.workloads.items()
        for index in range(len(workload.members))
    }
    expected = {*replicas, *mesh.stand_ins, "envoy"}
    assert set(rss["before"]) == expected
    assert all(kib > 0 for kib in rss["end"].values())
