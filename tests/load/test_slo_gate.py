"""The load tool as users run it: `python -m load` against a real local mesh and Prometheus.

A short healthy run passes its gate; the same run against an SLO no chain can
meet (p99 under a microsecond) fails it, with the breach in the table and a
non-zero exit.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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

    def row(self, check: str) -> str:
        found = [line for line in self.out.splitlines() if line.startswith(f"{check} ")]
        assert found, f"no row {check!r} in:\n{self.out}"
        return found[0]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    running = start_mesh(tmp_path_factory.mktemp("gate"))
    yield running
    running.stop()


def run_load(mesh: LocalMesh, tmp: Path, slo: dict[str, object]) -> Run:
    assert mesh.run_dir is not None
    slo_file = tmp / "slo.yaml"
    slo_file.write_text(yaml.safe_dump(slo))
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
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(done.stdout, done.stderr)
    return Run(done.returncode, done.stdout)


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
