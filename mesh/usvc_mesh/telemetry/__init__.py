"""``usvc up --telemetry``: a Prometheus and a trace collector beside the local mesh.

:class:`Telemetry` is the whole hook into ``usvc up``: its :attr:`~Telemetry.env`
goes into every workload's environment (the OTLP exporter pointed at the local
collector), its :attr:`~Telemetry.otlp_address` is where Envoy reports (OTLP/HTTP), and
:meth:`~Telemetry.start` / :meth:`~Telemetry.stop` bracket the running mesh.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..manifests import MeshError
from ..procs import free_port, http_ok, spawn, terminate
from .prometheus import Prometheus, scrape_config

if TYPE_CHECKING:
    from ..supervisor import LocalMesh

# Where a project keeps its Prometheus rules (relative to the mesh's root);
# loaded when present, so the local Prometheus evaluates the same alerts.
RULES_GLOB = "telemetry/prometheus/*rules.yml"


def spans_file_for_run(directory: Path) -> Path:
    """A new file per run, named by its start time so the newest sorts last."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return directory / f"spans-{stamp}-{time.time_ns() % 10**9:09d}.jsonl"


class Telemetry:
    """The collector's and Prometheus's ports, files and processes for one run."""

    def __init__(self, root: Path, run_dir: Path, *, prometheus_port: int = 0) -> None:
        self.root = root
        self.directory = run_dir / "telemetry"
        # The collector's listening socket, made now so that its port is taken
        # before the mesh picks free ports for its workloads; the collector
        # process inherits it.
        self._listener: socket.socket | None = socket.create_server(("127.0.0.1", 0))
        self._listener.set_inheritable(True)
        self.collector_port = int(self._listener.getsockname()[1])
        self.prometheus_port = prometheus_port  # 0: a free one, chosen after the mesh's
        self.spans_file = spans_file_for_run(self.directory)
        self.collector: subprocess.Popen[bytes] | None = None
        self.prometheus: Prometheus | None = None

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.collector_port}"

    @property
    def env(self) -> dict[str, str]:
        """For every workload: OTLP/HTTP to the collector, exported within 0.2 s."""
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.collector_url,
            # The SDK's BatchSpanProcessor waits 5 s by default; `usvc trace
            # --last` right after a request should find it.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }

    @property
    def otlp_address(self) -> tuple[str, int]:
        """Where Envoy's OpenTelemetry tracer sends its spans: this collector's /v1/traces."""
        return ("127.0.0.1", self.collector_port)

    def rule_files(self) -> list[Path]:
        return sorted(self.root.glob(RULES_GLOB))

    def start(self, mesh: LocalMesh, timeout: float = 20.0) -> None:
        """Start the collector, then Prometheus scraping ``mesh``'s workloads and Envoy."""
        assert mesh.run_dir is not None and mesh.ports is not None
        assert self._listener is not None, "started twice"
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "collector.log").open("a")
        fd = self._listener.fileno()
        self.collector = spawn(
            [
                sys.executable,
                "-m",
                "usvc_mesh.telemetry.collector",
                f"--fd={fd}",
                f"--out={self.spans_file}",
                f"--state={mesh.run_dir / 'mesh.json'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(fd,),
        )
        log.close()
        self._listener.close()  # the collector has it now
        self._listener = None
        deadline = time.monotonic() + timeout
        while not http_ok(f"{self.collector_url}/healthz"):
            if self.collector.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise MeshError(f"the trace collector did not start; see {log.name}")
            time.sleep(0.05)
        config = scrape_config(scrape_targets(mesh), mesh.ports.admin, self.rule_files())
        port = self.prometheus_port or free_port()
        self.prometheus = Prometheus(config, self.directory / "prometheus", port)
        try:
            self.prometheus.start(timeout)
        except MeshError:
            self.stop()
            raise

    def describe(self) -> list[str]:
        lines = [f"traces:     {self.collector_url}/v1/traces -> {self.spans_file}"]
        if self.prometheus is not None:
            rules = ", ".join(str(p.relative_to(self.root)) for p in self.rule_files())
            lines.append(f"prometheus: {self.prometheus.url}/   rules: {rules or 'none'}")
        lines.append("a trace:    usvc trace --last   (or usvc trace TRACE_ID)")
        return lines

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.collector is not None:
            terminate(self.collector)
            self.collector = None


def scrape_targets(mesh: LocalMesh) -> dict[str, tuple[list[int], dict[str, str]]]:
    """Every replica's port, per workload, with the workload's pod labels."""
    return {
        name: ([member.port for member in workload.members], dict(workload.labels))
        for name, workload in mesh.workloads.items()
    }
