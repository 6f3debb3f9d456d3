"""The load tool's parts that need no chain: SLO file, judging, durations, reports, targets."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from load.cli import duration, main
from load.rss import RssRow, rss_table
from load.slo import Limits, Measured, Slo, SloError, judge, load_slo, read_locust
from load.targets import MeshState

ROOT = Path(__file__).resolve().parents[2]


def hop(name: str, p99: float | None, errors: float = 0) -> Measured:
    return Measured(name, 100, errors, {0.5: 0.001, 0.95: 0.002, 0.99: p99})


def test_the_shipped_slo_gates_gateway_5xx_at_zero_and_p99_per_hop_at_250_ms() -> None:
    slo = load_slo(ROOT / "load" / "slo.yaml")
    assert slo.gateway.max_5xx_ratio == 0
    assert slo.hop_default == Limits(p99_ms=250)
    assert slo.locust_max_failure_ratio == 0


def test_an_unknown_key_in_the_slo_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text("hops:\n  default:\n    p99: 250\n")
    with pytest.raises(SloError, match=r"hops\.default: unknown key\(s\) p99"):
        load_slo(path)


def test_a_hop_entry_overrides_only_the_levels_it_names(tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text("hops:\n  default: {p99_ms: 250}\n  front: {p95_ms: 100}\n")
    assert load_slo(path).for_hop("front") == Limits(p95_ms=100, p99_ms=250)


def test_a_p99_equal_to_its_level_is_a_breach() -> None:
    checks = judge(Slo(), None, None, [hop("front", 0.25)])
    passed = [(c.what, c.passed) for c in checks]
    assert passed == [("locust failures", False), ("front p99", False)]


def test_a_gated_level_without_data_fails() -> None:
    [check] = judge(Slo(locust_max_failure_ratio=None), None, None, [hop("core", None)])
    assert (check.measured, check.passed) == ("no data", False)


def test_a_single_5xx_at_the_gateway_breaches_the_zero_level() -> None:
    gateway = Measured("gateway", 10_000, 1, {})
    checks = judge(Slo(locust_max_failure_ratio=None), None, gateway, [])
    assert ("gateway 5xx", False) in [(c.what, c.passed) for c in checks]


def test_no_hop_in_prometheus_fails_the_gate() -> None:
    checks = judge(Slo(locust_max_failure_ratio=None), None, None, [])
    assert [c.passed for c in checks] == [False]


def test_locust_totals_and_percentiles_come_from_its_final_json(tmp_path: Path) -> None:
    stats = [
        {"name": "/ a", "num_requests": 90, "num_failures": 0, "response_times": {"10": 90}},
        {"name": "/ b", "num_requests": 10, "num_failures": 2, "response_times": {"300": 10}},
    ]
    (tmp_path / "locust.json").write_text(json.dumps(stats))
    *_, total = read_locust(tmp_path / "locust.json")
    assert (total.requests, total.errors) == (100, 2)
    assert total.quantiles == {0.5: 0.01, 0.95: 0.3, 0.99: 0.3}


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("1m30s", 90)]
)
def test_durations_are_seconds_minutes_and_hours(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "5x", "0s", "-1"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_the_soak_gate_fails_a_process_that_grew_more_than_10_percent() -> None:
    rows = [RssRow("front", 40_000, 50_000, 54_000), RssRow("core", 40_000, 50_000, 56_000)]
    lines, ok = rss_table(rows, 0.10)
    assert not ok
    assert lines[1].endswith("PASS") and lines[2].endswith("FAIL")


def test_the_load_tool_does_not_import_locust() -> None:
    # Locust patches the standard library for gevent when imported.
    import sys

    import load.cli  # noqa: F401

    assert "locust" not in sys.modules


def test_every_workload_replica_of_the_state_file_is_scraped_and_envoy_by_its_admin_port(
    tmp_path: Path,
) -> None:
    state = {
        "gateway": "http://127.0.0.1:8080",
        "pid": 1,
        "ports": {"admin": 9901},
        "workloads": {"front": 1001, "middle": [1002, 1003]},
        "stand_ins": {},
    }
    (tmp_path / "mesh.json").write_text(json.dumps(state))
    jobs = MeshState.read(tmp_path).scrape_config()["scrape_configs"]
    found = {
        job["job_name"]: (job["static_configs"][0]["targets"], job.get("metrics_path"))
        for job in jobs
    }
    assert found == {
        "front": (["127.0.0.1:1001"], None),
        "middle": (["127.0.0.1:1002", "127.0.0.1:1003"], None),
        "envoy": (["127.0.0.1:9901"], "/stats/prometheus"),
    }


def test_a_soak_against_a_gateway_that_is_not_the_local_mesh_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--soak", "--url", "http://127.0.0.1:9", "--prometheus", "none"]
    status = main([*argv, "--mesh-run-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert status == 2
    assert "--soak watches the processes of the local mesh" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unknown_gateway_without_a_prometheus_is_refused_before_any_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--url", "http://127.0.0.1:9", "--mesh-run-dir", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "pass --prometheus URL" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_tes_is_the_original_stress_test_through_dev_load() -> None:
    shown = subprocess.run(
        ["make", "-n", "-s", "tes"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert shown.stdout.split() == ["./dev", "load", "--scenario", "stress", "--duration", "600s"]
