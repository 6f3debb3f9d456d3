"""The Prometheus `usvc up --telemetry` runs: its configuration, and the message without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from usvc_mesh.manifests import MeshError
from usvc_mesh.telemetry.prometheus import Prometheus, scrape_config


def test_each_workload_is_a_job_of_its_replicas_with_its_pod_labels_and_envoy_one_more() -> None:
    config = scrape_config(
        {"front": ([8081, 8082], {"app": "front", "version": "v1", "env": "prod", "extra": "x"})},
        envoy_admin=9901,
    )
    front, envoy = config["scrape_configs"]
    assert front["job_name"] == "front"
    assert front["static_configs"] == [
        {
            "targets": ["127.0.0.1:8081", "127.0.0.1:8082"],
            "labels": {"app": "front", "version": "v1", "env": "prod"},
        }
    ]
    assert envoy["job_name"] == "envoy" and envoy["metrics_path"] == "/stats/prometheus"
    assert envoy["static_configs"] == [{"targets": ["127.0.0.1:9901"]}]


def test_without_the_debian_package_start_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus on it
    with pytest.raises(MeshError, match=r"Debian's `prometheus` package \(apt-get install"):
        Prometheus(scrape_config({}, None), tmp_path, 9090).start()
