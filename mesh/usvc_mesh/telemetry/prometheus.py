"""A Prometheus for the local mesh: the scrape configuration, and the process.

One job per workload, with the Deployment's pod labels (app, version, env) as
target labels, as the ``kubernetes-pods`` job of a cluster adds them; and one
job ``envoy`` for Envoy's admin ``/stats/prometheus``
(https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--stats-prometheus).
Prometheus itself is Debian's ``prometheus`` package (2.42 in bookworm); it is
started as a plain process with its data under the run directory.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..manifests import MeshError
from ..procs import http_ok, spawn, terminate

POD_LABELS = ("app", "version", "env")
MISSING = (
    "prometheus is not installed: it is Debian's `prometheus` package (apt-get install prometheus)"
)


def scrape_config(
    workloads: Mapping[str, tuple[Sequence[int], Mapping[str, str]]],
    envoy_admin: int | None,
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
) -> dict[str, Any]:
    """The configuration; ``workloads`` maps a name to its replicas' ports and pod labels.

    Each replica is a target of its workload's job, as each pod is in a cluster.
    """
    jobs: list[dict[str, Any]] = [
        {
            "job_name": name,
            "static_configs": [
                {
                    "targets": [f"127.0.0.1:{port}" for port in ports],
                    "labels": {k: labels[k] for k in POD_LABELS if k in labels},
                }
            ],
        }
        for name, (ports, labels) in workloads.items()
    ]
    if envoy_admin is not None:
        jobs.append(
            {
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{envoy_admin}"]}],
            }
        )
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": jobs,
    }


class Prometheus:
    """``prometheus`` with ``config`` on 127.0.0.1:``port``, data in ``directory``."""

    def __init__(self, config: Mapping[str, Any], directory: Path, port: int) -> None:
        self.config = config
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "prometheus.log"

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise MeshError(MISSING)
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(dict(self.config), sort_keys=False))
        with self.log_path.open("a") as log:
            self.process = spawn(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",  # POST /-/reload re-reads the rules
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not http_ok(f"{self.url}/-/ready"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = "\n    ".join(self.log_path.read_text().splitlines()[-10:])
                self.stop()
                raise MeshError(f"prometheus did not start:\n    {tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None
