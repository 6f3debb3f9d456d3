"""The local mesh: every workload of the demo as a process, one real Envoy between them.

Workloads and rules come from the same manifests a cluster applies
(``k8s/workloads/*.yaml`` and ``k8s/mesh/scenarios/<scenario>.yaml``, rendered
from the Helm chart): each Deployment becomes a process with the Deployment's
own environment, except where it must differ on one machine (its port, and
the outbound proxy that stands in for the iptables redirect to a sidecar).
ServiceEntry hosts are served by local stand-ins, since this machine may
have no internet.

A scenario switch rewrites Envoy's route and cluster files in place; Envoy
reloads them without dropping a request in flight.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from . import envoy as tr
from .translation import Translation, translate

SCENARIOS = ("current", "prod", "dev", "canary", "beta", "retry", "stress")
# Hosts a ServiceEntry may name that a local stand-in can answer for.
STAND_INS: Mapping[str, str] = {"worldtimeapi.org": "services.worldtime.app"}
STATE_FILE = "mesh.json"


class MeshError(RuntimeError):
    """The local mesh cannot start or switch; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def terminate(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM (the graceful way), then SIGKILL if it is not gone within ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        reap(process, timeout)


def reap(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Wait for a process already told to stop; SIGKILL it after ``timeout``."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def load_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        with path.open() as handle:
            docs.extend(d for d in yaml.safe_load_all(handle) if isinstance(d, dict))
    return docs


@dataclass(frozen=True)
class Layout:
    """Where the manifests live (the chart's rendered output, ``k8s/``)."""

    root: Path  # the project root: workloads import ``services.<app>.app``
    manifests_dir: Path | None = None  # default: root/k8s
    namespace: str = "usvc"  # the one k8s/ was rendered for

    @property
    def manifests(self) -> Path:
        return self.manifests_dir or self.root / "k8s"

    def workload_files(self) -> list[Path]:
        files = sorted((self.manifests / "workloads").glob("*.yaml"))
        if not files:
            raise MeshError(f"no workload manifests in {self.manifests / 'workloads'}")
        return files

    def scenario_file(self, scenario: str) -> Path:
        path = self.manifests / "mesh" / "scenarios" / f"{scenario}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.yaml") if "." not in p.stem)
            raise MeshError(f"unknown scenario {scenario!r}; known: {', '.join(known)}")
        return path

    def scenario_env_file(self, scenario: str) -> Path:
        return self.manifests / "mesh" / "scenarios" / f"{scenario}.env.yaml"


@dataclass
class Workload:
    """One Deployment run as a local process."""

    name: str
    labels: dict[str, str]
    env: dict[str, str]
    module: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_handle: TextIO | None = None
    signalled: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, root: Path) -> None:
        self.signalled = False
        self.log_handle = self.log_path.open("a")
        # "pkg.mod:attr" is a usvc service; a bare module runs as a script.
        if ":" in self.module:
            argv = [sys.executable, "-m", "usvc", "run", self.module]
        else:
            argv = [sys.executable, "-m", self.module]
        self.process = subprocess.Popen(
            argv,
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


def container_env(deployment: Mapping[str, Any]) -> dict[str, str]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for item in containers[0].get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def pod_labels(deployment: Mapping[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"].get("labels", {}))


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
    workloads: dict[str, Workload] = field(default_factory=dict)
    stand_ins: dict[str, Workload] = field(default_factory=dict)
    envoy: subprocess.Popen[bytes] | None = None
    ports: tr.MeshPorts | None = None
    zipkin: tuple[str, int] | None = None  # where Envoy reports its spans, if anywhere

    # -- configuration -------------------------------------------------------
    def documents(self, scenario: str) -> list[dict[str, Any]]:
        return load_documents([*self.layout.workload_files(), self.layout.scenario_file(scenario)])

    def scenario_env(self, scenario: str) -> dict[str, dict[str, str]]:
        """Extra env per Deployment a scenario needs (e.g. fault injection for retry)."""
        path = self.layout.scenario_env_file(scenario)
        if not path.is_file():
            return {}
        data = yaml.safe_load(path.read_text()) or {}
        return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in data.items()}

    def plan(self, docs: Sequence[Mapping[str, Any]]) -> None:
        assert self.run_dir is not None and self.ports is not None
        outbound = f"http://127.0.0.1:{self.ports.outbound}"
        extra = self.scenario_env(self.scenario)
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
            self.workloads[name] = Workload(
                name=name,
                labels=labels,
                env=env,
                module=f"services.{labels.get('app', name)}.app:svc",
                port=port,
                log_path=self.run_dir / f"{name}.log",
            )
        if not self.workloads:
            raise MeshError("the manifests define no Deployment")
        for doc in docs:
            if doc.get("kind") != "ServiceEntry":
                continue
            for host in doc["spec"].get("hosts", []):
                if host in STAND_INS and host not in self.stand_ins:
                    port = free_port()
                    self.stand_ins[host] = Workload(
                        name=f"stand-in:{host}",
                        labels={},
                        env={**self.base_env, "HOST": "127.0.0.1", "PORT": str(port)},
                        module=STAND_INS[host],
                        port=port,
                        log_path=self.run_dir / f"stand-in-{host}.log",
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
        self.ports = tr.MeshPorts(
            gateway=self.gateway_port,
            outbound=free_port(),
            admin=free_port(),
            gateway_host=self.gateway_host,
        )
        docs = self.documents(self.scenario)
        self.plan(docs)
        config_dir = self.run_dir / "envoy"
        tr.write(config_dir, self.translation(self.scenario))
        bootstrap = tr.write_bootstrap(
            config_dir,
            self.ports,
            access_log=self.run_dir / "envoy-access.log",
            zipkin=self.zipkin,
        )
        tr.validate(config_dir)
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
        self.envoy = subprocess.Popen(
            tr.envoy_command(bootstrap, concurrency=2),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_ready(self, deadline: float) -> None:
        assert self.ports is not None
        pending = {w.name: f"{w.url}/readyz" for w in self.workloads.values()}
        pending.update({w.name: f"{w.url}/api/timezone/Etc/UTC" for w in self.stand_ins.values()})
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
        if self.envoy is not None and self.envoy.poll() is not None:
            assert self.run_dir is not None
            tail = "\n    ".join((self.run_dir / "envoy.log").read_text().splitlines()[-15:])
            raise MeshError(f"envoy exited with status {self.envoy.returncode}:\n    {tail}")

    def use(self, scenario: str) -> None:
        """Switch the routing rules of the running mesh; nothing restarts."""
        assert self.run_dir is not None
        translation = self.translation(scenario)
        config_dir = self.run_dir / "envoy"
        staging = self.run_dir / "envoy-check"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(config_dir, staging)
        tr.write(staging, translation)
        tr.validate(staging)  # a bad rule set never reaches the running Envoy
        shutil.rmtree(staging, ignore_errors=True)
        tr.write(config_dir, translation)
        assert self.ports is not None
        tr.wait_applied(("127.0.0.1", self.ports.admin), translation)
        self.scenario = scenario
        self._save_state()

    def restart(self, name: str) -> None:
        """Stop one workload and start it again on the same port."""
        workload = self.workloads[name]
        workload.stop()
        workload.start(self.layout.root)
        deadline = time.monotonic() + 30
        while not http_ok(f"{workload.url}/readyz"):
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
        if self.envoy is not None:
            terminate(self.envoy)
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
        mesh.ports = tr.MeshPorts(**state["ports"])
        for name, port in state["workloads"].items():
            mesh.workloads[name] = Workload(name, {}, {}, "", port, run_dir / f"{name}.log")
        for host, port in state["stand_ins"].items():
            mesh.stand_ins[host] = Workload(host, {}, {}, "", port, run_dir / f"{host}.log")
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


# Loopback checks must not go through a proxy the user's environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=0.5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
