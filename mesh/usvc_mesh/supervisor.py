"""The supervisor: every Deployment of the manifests as a process, one real Envoy between them.

Workloads and rules come from the manifests a cluster applies (see
:mod:`usvc_mesh.manifests` for the layout): each Deployment becomes a process
running its container's command with the Deployment's own environment, except
where it must differ on one machine (its port, and the outbound proxy that
stands in for the iptables redirect to a sidecar). ServiceEntry hosts that ask
for it are served by local stand-ins, since this machine may have no internet.

A scenario switch rewrites Envoy's route and cluster files in place; Envoy
reloads them without dropping a request in flight.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import envoy
from .manifests import (
    Layout,
    MeshError,
    container_env,
    pod_labels,
    ready_path,
    stand_ins,
    workload_command,
)
from .procs import free_port, http_ok, reap, terminate
from .translation import Translation, translate

STATE_FILE = "mesh.json"


@dataclass
class WorkloadProcess:
    """One Deployment (or stand-in) run as a local process."""

    name: str
    labels: dict[str, str]
    env: dict[str, str]
    argv: list[str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_handle: TextIO | None = None
    signalled: bool = False
    ready_path: str = "/readyz"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, root: Path) -> None:
        self.signalled = False
        self.log_handle = self.log_path.open("a")
        self.process = subprocess.Popen(
            self.argv,
            cwd=root,
            env=self.env,
            stdout=self.log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_stop(self) -> None:
        """Ask the process to stop (once); :meth:`stop` then waits for it."""
        if self.process is not None and self.process.poll() is None and not self.signalled:
            self.process.send_signal(signal.SIGTERM)
            self.signalled = True

    def stop(self, timeout: float = 10.0) -> None:
        self.signal_stop()
        if self.process is not None:
            reap(self.process, timeout)
        if self.log_handle is not None:
            self.log_handle.close()
            self.log_handle = None

    def last_lines(self, count: int = 15) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-count:]
        except OSError:
            return []


@dataclass
class LocalMesh:
    """Starts, watches, switches and stops the local chain. See the module docstring."""

    layout: Layout
    scenario: str = "current"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    run_dir: Path | None = None
    env_overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    base_env: Mapping[str, str] = field(default_factory=dict)
    workloads: dict[str, WorkloadProcess] = field(default_factory=dict)
    stand_ins: dict[str, WorkloadProcess] = field(default_factory=dict)
    proxy: subprocess.Popen[bytes] | None = None  # the Envoy process
    ports: envoy.MeshPorts | None = None
    zipkin: tuple[str, int] | None = None  # where Envoy reports its spans, if anywhere
    # What istiod would accept but the local mesh doubts or applies differently.
    warnings: list[str] = field(default_factory=list)

    # -- configuration -------------------------------------------------------
    def documents(self, scenario: str) -> list[dict[str, Any]]:
        return self.layout.documents(scenario)

    def plan(self, docs: Sequence[Mapping[str, Any]]) -> None:
        assert self.run_dir is not None and self.ports is not None
        outbound = f"http://127.0.0.1:{self.ports.outbound}"
        extra = self.layout.scenario_env(self.scenario)
        for doc in docs:
            if doc.get("kind") != "Deployment":
                continue
            name = doc["metadata"]["name"]
            labels = pod_labels(doc)
            # The manifest's environment, then the user's OTEL_* (locally, where
            # spans go is the user's choice), the scenario's, then --env.
            env = {
                **self.base_env,
                **container_env(doc),
                **{k: v for k, v in self.base_env.items() if k.startswith("OTEL_")},
                **extra.get(name, {}),
                **self.env_overrides.get(name, {}),
            }
            port = free_port()
            env.update(HOST="127.0.0.1", PORT=str(port), EGRESS_PROXY=outbound, DRAIN_SECONDS="0")
            self.workloads[name] = WorkloadProcess(
                name=name,
                labels=labels,
                env=env,
                argv=workload_command(doc),
                ready_path=ready_path(doc),
                port=port,
                log_path=self.run_dir / f"{name}.log",
            )
        if not self.workloads:
            raise MeshError("the manifests define no Deployment")
        for stand_in in stand_ins(docs):
            port = free_port()
            self.stand_ins[stand_in.host] = WorkloadProcess(
                name=f"stand-in:{stand_in.host}",
                labels={},
                env={**self.base_env, "HOST": "127.0.0.1", "PORT": str(port)},
                argv=list(stand_in.argv),
                port=port,
                log_path=self.run_dir / f"stand-in-{stand_in.host}.log",
                ready_path=stand_in.ready_path,
            )

    def translation(self, scenario: str) -> Translation:
        endpoints = {name: ("127.0.0.1", w.port) for name, w in self.workloads.items()}
        externals = {host: ("127.0.0.1", w.port) for host, w in self.stand_ins.items()}
        return translate(
            self.documents(scenario),
            endpoints=endpoints,
            externals=externals,
            namespace=self.layout.namespace,
        )

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> float:
        """Start everything and wait until all is ready; returns seconds taken."""
        started = time.monotonic()
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="usvc-mesh-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ports = envoy.MeshPorts(
            gateway=self.gateway_port,
            outbound=free_port(),
            admin=free_port(),
            gateway_host=self.gateway_host,
        )
        docs = self.documents(self.scenario)
        self.plan(docs)
        config_dir = self.run_dir / "envoy"
        translation = self.translation(self.scenario)
        self.warnings = list(translation.warnings)
        envoy.write(config_dir, translation)
        bootstrap = envoy.write_bootstrap(
            config_dir,
            self.ports,
            access_log=self.run_dir / "envoy-access.log",
            zipkin=self.zipkin,
        )
        envoy.validate(config_dir)
        try:
            for workload in [*self.stand_ins.values(), *self.workloads.values()]:
                workload.start(self.layout.root)
            self._start_envoy(bootstrap)
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        self._save_state()
        return time.monotonic() - started

    def _start_envoy(self, bootstrap: Path) -> None:
        assert self.run_dir is not None
        log = (self.run_dir / "envoy.log").open("a")
        self.proxy = subprocess.Popen(
            envoy.envoy_command(bootstrap, concurrency=2),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_ready(self, deadline: float) -> None:
        assert self.ports is not None
        pending = {
            w.name: f"{w.url}{w.ready_path}"
            for w in [*self.workloads.values(), *self.stand_ins.values()]
        }
        pending["envoy"] = f"http://127.0.0.1:{self.ports.admin}/ready"
        while pending:
            self.check_alive()
            for name, url in list(pending.items()):
                if http_ok(url):
                    del pending[name]
            if time.monotonic() > deadline:
                raise MeshError(f"not ready in time: {', '.join(sorted(pending))}")
            if pending:
                time.sleep(0.05)

    def check_alive(self) -> None:
        """Raise MeshError naming a dead workload with its last log lines."""
        for workload in [*self.stand_ins.values(), *self.workloads.values()]:
            if workload.process is not None and workload.process.poll() is not None:
                tail = "\n    ".join(workload.last_lines())
                raise MeshError(
                    f"{workload.name} exited with status {workload.process.returncode}; "
                    f"its last log lines:\n    {tail}"
                )
        if self.proxy is not None and self.proxy.poll() is not None:
            assert self.run_dir is not None
            tail = "\n    ".join((self.run_dir / "envoy.log").read_text().splitlines()[-15:])
            raise MeshError(f"envoy exited with status {self.proxy.returncode}:\n    {tail}")

    def use(self, scenario: str) -> None:
        """Switch the routing rules of the running mesh; nothing restarts."""
        assert self.run_dir is not None
        translation = self.translation(scenario)
        config_dir = self.run_dir / "envoy"
        staging = self.run_dir / "envoy-check"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(config_dir, staging)
        envoy.write(staging, translation)
        envoy.validate(staging)  # a bad rule set never reaches the running Envoy
        shutil.rmtree(staging, ignore_errors=True)
        envoy.write(config_dir, translation)
        assert self.ports is not None
        envoy.wait_applied(("127.0.0.1", self.ports.admin), translation)
        self.scenario = scenario
        self._save_state()

    def restart(self, name: str) -> None:
        """Stop one workload and start it again on the same port."""
        workload = self.workloads[name]
        workload.stop()
        workload.start(self.layout.root)
        deadline = time.monotonic() + 30
        while not http_ok(f"{workload.url}{workload.ready_path}"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise MeshError(f"{name} did not become ready after restart")
            time.sleep(0.05)

    def stop(self) -> None:
        # All at once, so their drains overlap; then wait for each.
        for workload in [*self.workloads.values(), *self.stand_ins.values()]:
            workload.signal_stop()
        for workload in [*self.workloads.values(), *self.stand_ins.values()]:
            workload.stop()
        if self.proxy is not None:
            terminate(self.proxy)
        if self.run_dir is not None:
            (self.run_dir / STATE_FILE).unlink(missing_ok=True)

    # -- state for `usvc mesh use` from another shell ---------------------------
    def _save_state(self) -> None:
        assert self.run_dir is not None and self.ports is not None
        state = {
            "root": str(self.layout.root),
            "scenario": self.scenario,
            "pid": os.getpid(),
            "run_dir": str(self.run_dir),
            "gateway": f"http://{self.ports.gateway_host}:{self.ports.gateway}",
            "ports": {
                "gateway": self.ports.gateway,
                "outbound": self.ports.outbound,
                "admin": self.ports.admin,
                "gateway_host": self.ports.gateway_host,
            },
            "workloads": {n: w.port for n, w in self.workloads.items()},
            "stand_ins": {h: w.port for h, w in self.stand_ins.items()},
        }
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=1))

    @classmethod
    def attach(cls, run_dir: Path) -> LocalMesh:
        """The mesh a running ``usvc up`` started, to switch its scenario."""
        try:
            state = json.loads((run_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            raise MeshError(f"no local mesh is running from {run_dir}") from None
        mesh = cls(Layout(Path(state["root"])), scenario=state["scenario"], run_dir=run_dir)
        mesh.ports = envoy.MeshPorts(**state["ports"])
        for name, port in state["workloads"].items():
            mesh.workloads[name] = WorkloadProcess(name, {}, {}, [], port, run_dir / f"{name}.log")
        for host, port in state["stand_ins"].items():
            mesh.stand_ins[host] = WorkloadProcess(host, {}, {}, [], port, run_dir / f"{host}.log")
        return mesh

    def describe(self) -> list[tuple[str, str, str]]:
        rows = []
        for w in self.workloads.values():
            labels = " ".join(
                f"{k}={w.labels[k]}" for k in ("app", "version", "env") if k in w.labels
            )
            rows.append((w.name, w.url, labels))
        for host, w in self.stand_ins.items():
            rows.append((host, w.url, "stand-in for the public API"))
        return rows
