"""The supervisor: every Deployment of the manifests as processes, one real Envoy between them.

Workloads and rules come from the manifests a cluster applies (see
:mod:`usvc_mesh.manifests` for the layout): each Deployment becomes
``spec.replicas`` processes running its container's command with the
Deployment's own environment, except where it must differ on one machine (its
port, the outbound proxy that stands in for the iptables redirect to a
sidecar, and ``SERVICE_INSTANCE=<deployment>-<index>``, the name a pod would
have). ServiceEntry hosts that ask for it are served by local stand-ins, since
this machine may have no internet.

Like a Deployment's controller and the kubelet, the supervisor restarts a
process that dies, with CrashLoopBackOff's doubling delay (scaled down, see
:class:`Backoff`), and restarts workloads rolling: a new process, wait until
it is ready and Envoy routes to it, then take the old one out of Envoy's
endpoints and stop it gracefully. Envoy health-checks every endpoint with its
readiness probe, so a process that is down or unready gets no traffic.

A scenario switch rewrites Envoy's route and cluster files in place; Envoy
reloads them without dropping a request in flight. Workloads whose
environment the scenario changes are restarted rolling.

Envoy itself is not restarted: if it dies the mesh stops with its last lines.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from . import envoy, gateway_tls
from .manifests import (
    Layout,
    MeshError,
    container_env,
    pod_labels,
    ready_path,
    replicas,
    stand_ins,
    workload_command,
)
from .procs import (
    free_port,
    http_ok,
    port_taken,
    port_taken_message,
    reap,
    spawn,
    start_ticks,
    terminate,
)
from .sidecars import IDENTITY_NOTE, INBOUND_HOST, Inbound, Sidecar, service_account
from .spec import metadata_namespace
from .translation import Translation, translate

STATE_FILE = "mesh.json"
CONTROL_SOCKET = "control.sock"
# Seconds between taking a replica out of Envoy's endpoints and stopping it.
ENDPOINT_PROPAGATION = 1.0


@dataclass(frozen=True)
class Backoff:
    """How long a crashed process waits before its next start: CrashLoopBackOff, scaled down.

    Kubernetes waits 10 s after a container exits, doubling on each further
    exit up to 5 minutes, and forgets the count once it has run 10 minutes
    (kubernetes.io: Pod Lifecycle, "Container restarts"). Locally the same
    curve runs ten times faster by default: 1 s doubling to 30 s, reset after
    60 s of running.
    """

    initial: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0

    def delay(self, crashes: int) -> float:
        """The wait before the restart that follows the ``crashes``-th crash in a row."""
        return float(min(self.cap, self.initial * 2 ** max(0, crashes - 1)))

    def describe(self) -> str:
        return (
            f"{self.initial:g}s doubling to {self.cap:g}s, reset after {self.reset_after:g}s "
            "running (Kubernetes: 10s doubling to 5min, reset after 10min)"
        )


@dataclass
class WorkloadProcess:
    """One replica of a Deployment (or one stand-in) run as a local process."""

    name: str  # the instance: "front-1", or "stand-in:HOST"
    labels: dict[str, str]
    env: dict[str, str]
    argv: list[str]
    port: int
    log_path: Path
    pod_port: int = 0  # its sidecar's plain listener: the pod's address (usvc_mesh.sidecars)
    process: subprocess.Popen[bytes] | None = None
    log_handle: TextIO | None = None
    signalled: bool = False
    ready_path: str = "/readyz"
    started_at: float = 0.0
    crashes: int = 0  # exits in a row, for the backoff
    restarts: int = 0  # how often the supervisor started it again
    restart_at: float | None = None  # when the next start is due, while it is down

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self, root: Path) -> None:
        self.signalled = False
        self.restart_at = None
        self.started_at = time.monotonic()
        if self.log_handle is not None:
            self.log_handle.close()
        self.log_handle = self.log_path.open("a")
        # spawn: SIGTERM when the supervisor dies, even by SIGKILL, whichever
        # thread (watch loop, control socket) restarts it.
        self.process = spawn(
            self.argv,
            cwd=root,
            env=self.env,
            stdout=self.log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exited(self) -> bool:
        """Whether it ended without being asked to."""
        return self.process is not None and self.process.poll() is not None and not self.signalled

    def ready(self) -> bool:
        return self.running() and http_ok(f"{self.url}{self.ready_path}")

    def signal_stop(self) -> None:
        """Ask the process to stop (once); :meth:`stop` then waits for it."""
        if self.process is not None and self.process.poll() is None and not self.signalled:
            self.process.send_signal(signal.SIGTERM)
        self.signalled = True

    def stop(self, timeout: float = 20.0) -> None:
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

    def death(self, what: str | None = None, consequence: str = "") -> MeshError:
        """The error for a process that ended unasked: who, how, what follows, its last lines.

        ``what`` names it (default: the instance), ``consequence`` is said before the lines.
        """
        assert self.process is not None and self.process.returncode is not None
        lines = self.last_lines()
        if port_taken(lines, [self.port]) is not None:
            lost = port_taken_message(what or self.name, self.port)
            return MeshError(f"{lost}; {consequence}" if consequence else lost)
        tail = "\n    ".join(lines)
        return MeshError(
            f"{what or self.name} {exit_status(self.process.returncode)}; "
            f"{consequence + '; ' if consequence else ''}its last log lines:\n    {tail}"
        )


@dataclass
class Workload:
    """One Deployment: its pod template and the processes that run it."""

    name: str
    labels: dict[str, str]
    argv: list[str]
    ready_path: str
    manifest_env: dict[str, str]
    replicas: int = 1
    namespace: str = "default"
    service_account: str = "default"
    outbound_port: int = 0  # its sidecar's outbound listener: its EGRESS_PROXY
    members: list[WorkloadProcess] = field(default_factory=list)
    surge: list[WorkloadProcess] = field(default_factory=list)  # new ones, during a roll
    # Old ones during a roll: out of the endpoints, their inbound listeners still up.
    draining: list[WorkloadProcess] = field(default_factory=list)

    # The first replica's, for callers that know one process per workload.
    @property
    def env(self) -> dict[str, str]:
        return self.members[0].env

    @property
    def port(self) -> int:
        return self.members[0].port

    @property
    def url(self) -> str:
        return self.members[0].url

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.members[0].process

    def instance(self, index: int) -> str:
        return f"{self.name}-{index}"

    def stop(self) -> None:
        """Stop every replica (the supervisor will restart them, as after a crash)."""
        for member in self.members:
            member.signal_stop()
        for member in self.members:
            member.stop()


def _quiet(line: str) -> None:
    pass


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
    stand_ins: dict[str, WorkloadProcess] = field(default_factory=dict)
    proxy: subprocess.Popen[bytes] | None = None  # the Envoy process
    ports: envoy.MeshPorts | None = None
    collector: tuple[str, int] | None = None  # where Envoy reports its spans, if anywhere
    tracer: str = envoy.OPENTELEMETRY  # Envoy's tracer (envoy.TRACERS)
    # What istiod would accept but the local mesh doubts or applies differently.
    warnings: list[str] = field(default_factory=list)
    backoff: Backoff = field(default_factory=Backoff)
    request_headers_timeout: float = envoy.DEFAULT_REQUEST_HEADERS_TIMEOUT
    envoy_concurrency: int = envoy.MESH_CONCURRENCY  # Envoy's worker threads
    report: Callable[[str], None] = _quiet  # one line per event (crash, restart, roll)
    # Each Gateway server port -> the local port its listener has; the first is gateway_port.
    gateway_ports: dict[int, int] = field(default_factory=dict)
    # The gateway's listeners and certificates as started (a scenario may not change them).
    gateway: gateway_tls.Materialized | None = None
    _gateway_plan: tuple[Any, ...] = ()
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stopping: bool = False
    _control: _ControlServer | None = None
    _ports_taken: set[int] = field(default_factory=set)

    def free_port(self) -> int:
        """A free loopback port no other listener or process of this mesh was given.

        A port is free until something binds it, so two free_port() calls in a
        row can answer the same one; each workload, replica and listener needs its own.
        """
        while True:
            port = free_port()
            if port not in self._ports_taken and port != self.gateway_port:
                self._ports_taken.add(port)
                return port

    # -- configuration -------------------------------------------------------
    def documents(self, scenario: str) -> list[dict[str, Any]]:
        return self.layout.documents(scenario)

    def plan(self, docs: Sequence[Mapping[str, Any]]) -> None:
        assert self.run_dir is not None and self.ports is not None
        for doc in docs:
            if doc.get("kind") != "Deployment":
                continue
            name = doc["metadata"]["name"]
            workload = Workload(
                name=name,
                labels=pod_labels(doc),
                argv=workload_command(doc),
                ready_path=ready_path(doc),
                manifest_env=container_env(doc),
                replicas=replicas(doc),
                namespace=metadata_namespace(doc, self.layout.namespace),
                service_account=service_account(doc),
                outbound_port=self.free_port(),
            )
            workload.members = [
                self._replica(workload, index, self.free_port())
                for index in self._indexes(workload)
            ]
            self.workloads[name] = workload
        if not self.workloads:
            raise MeshError("the manifests define no Deployment")
        for stand_in in stand_ins(docs):
            port = self.free_port()
            self.stand_ins[stand_in.host] = WorkloadProcess(
                name=f"stand-in:{stand_in.host}",
                labels={},
                env={**self.base_env, "HOST": "127.0.0.1", "PORT": str(port)},
                argv=list(stand_in.argv),
                port=port,
                log_path=self.run_dir / f"stand-in-{stand_in.host}.log",
                ready_path=stand_in.ready_path,
            )

    @staticmethod
    def _indexes(workload: Workload) -> range:
        return range(1, workload.replicas + 1)

    def workload_env(self, workload: Workload, scenario: str) -> dict[str, str]:
        """A workload's environment in ``scenario``, the same for each replica."""
        # The manifest's environment, then the user's OTEL_* (locally, where
        # spans go is the user's choice), the scenario's, then --env.
        assert self.ports is not None
        return {
            **self.base_env,
            **workload.manifest_env,
            **{k: v for k, v in self.base_env.items() if k.startswith("OTEL_")},
            **self.layout.scenario_env(scenario).get(workload.name, {}),
            **self.env_overrides.get(workload.name, {}),
            "HOST": "127.0.0.1",
            # Its own sidecar's outbound listener: the mesh knows who calls.
            "EGRESS_PROXY": f"http://{INBOUND_HOST}:{workload.outbound_port}",
            # The supervisor takes a replica out of Envoy before it stops it,
            # which is what the drain is for in a cluster.
            "DRAIN_SECONDS": "0",
        }

    def _replica(self, workload: Workload, index: int, port: int) -> WorkloadProcess:
        assert self.run_dir is not None
        instance = workload.instance(index)
        env = self.workload_env(workload, self.scenario)
        env.update(PORT=str(port), SERVICE_INSTANCE=instance)
        return WorkloadProcess(
            name=instance,
            labels=dict(workload.labels),
            env=env,
            argv=list(workload.argv),
            ready_path=workload.ready_path,
            port=port,
            log_path=self.run_dir / f"{instance}.log",
            pod_port=self.free_port(),
        )

    def children(self) -> dict[str, subprocess.Popen[bytes]]:
        """Every child process running now, by name (the instance, or ``envoy``)."""
        running = {p.name: p.process for p in self.processes() if p.process and p.running()}
        if self.proxy is not None and self.proxy.poll() is None:
            running["envoy"] = self.proxy
        return running

    def processes(self) -> list[WorkloadProcess]:
        """Every process the mesh runs but Envoy: stand-ins, then each workload's replicas."""
        return [
            *self.stand_ins.values(),
            *(m for w in self.workloads.values() for m in [*w.members, *w.surge]),
        ]

    def endpoints(self) -> dict[str, list[tuple[str, int]]]:
        return {
            name: [m.address for m in [*w.members, *w.surge]] for name, w in self.workloads.items()
        }

    def sidecars(self) -> list[Sidecar]:
        """Each workload's sidecar: its outbound listener, an inbound one per process."""
        return [
            Sidecar(
                workload=w.name,
                namespace=w.namespace,
                service_account=w.service_account,
                labels=dict(w.labels),
                outbound=w.outbound_port,
                inbounds=tuple(
                    Inbound(m.name, m.address, m.pod_port)
                    for m in [*w.members, *w.surge, *w.draining]
                ),
            )
            for w in self.workloads.values()
        ]

    def translation(self, scenario: str) -> Translation:
        externals = {host: w.address for host, w in self.stand_ins.items()}
        return translate(
            self.documents(scenario),
            endpoints=self.endpoints(),
            externals=externals,
            namespace=self.layout.namespace,
            gateway_ports=self.gateway_ports,
            sidecars=self.sidecars(),
        )

    def _plan_gateway(self, translation: Translation) -> None:
        """Local ports for the Gateway server ports: ``--gateway``, then free ones."""
        self.gateway_ports = {}
        for listener in translation.gateway_listeners:
            first = not self.gateway_ports
            self.gateway_ports[listener.port] = self.gateway_port if first else free_port()

    @staticmethod
    def _gateway_shape(translation: Translation) -> tuple[Any, ...]:
        return (translation.gateway_listeners, translation.gateway_filters)

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> float:
        """Start everything and wait until all is ready; returns seconds taken."""
        started = time.monotonic()
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="usvc-mesh-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_second_mesh()
        self.ports = envoy.MeshPorts(
            gateway=self.gateway_port,
            outbound=0,  # each workload has its own (usvc_mesh.sidecars)
            admin=self.free_port(),
            gateway_host=self.gateway_host,
        )
        docs = self.documents(self.scenario)
        self.plan(docs)
        config_dir = self.run_dir / "envoy"
        self._plan_gateway(self.translation(self.scenario))
        translation = self.translation(self.scenario)
        self._gateway_plan = self._gateway_shape(translation)
        self.gateway = gateway_tls.materialize(
            translation.gateway_listeners,
            self.gateway_ports,
            self.gateway_host,
            self.run_dir / "tls",
            http_filters=translation.gateway_filters,
        )
        self.warnings = [*translation.warnings, *self.gateway.notes, IDENTITY_NOTE]
        # After the rules' own errors (more useful to hear first), before anything starts.
        for port in self.gateway_ports.values() or [self.gateway_port]:
            check_address_free(self.gateway_host, port)
        for old in self.run_dir.glob("*.log"):  # "last log lines" must be this run's
            old.unlink()
        bootstrap = envoy.write_bootstrap(
            config_dir,
            self.ports,
            access_log=self.run_dir / "envoy-access.log",
            collector=self.collector,
            tracer=self.tracer,
            # With the Zipkin tracer: workloads that write traceparent as well as B3 (the
            # usvc framework, OpenTelemetry SDKs) prefer it; a B3-only sidecar would leave
            # it naming the caller's span and the waterfall would skip the sidecars.
            w3c=self.tracer == envoy.ZIPKIN,
            request_headers_timeout=self.request_headers_timeout,
            gateways=self.gateway.listeners,
        )
        envoy.write(config_dir, translation)  # after the bootstrap: the sidecars share its tracing
        envoy.validate(config_dir)
        (self.run_dir / "envoy-access.log").write_text("")
        try:
            for process in self.processes():
                process.start(self.layout.root)
            self._start_envoy(bootstrap)
            self._wait_ready(started + timeout)
            self._control = _ControlServer(self)
        except BaseException:
            self.stop()
            raise
        self._save_state()
        return time.monotonic() - started

    def _refuse_second_mesh(self) -> None:
        """MeshError if the run directory's mesh, or what is left of it, still runs.

        A supervisor that was SIGKILLed runs no finaliser: its state file stays,
        and processes of an older version (started without PR_SET_PDEATHSIG)
        may outlive it. A second mesh on top would fight them for the gateway
        port and the log files.
        """
        assert self.run_dir is not None
        try:
            state = json.loads((self.run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return
        pid = int(state.get("pid", 0))
        if pid and pid != os.getpid() and _alive(pid):
            raise MeshError(
                f"a local mesh (pid {pid}, gateway {state.get('gateway')}) is already running "
                f"from {self.run_dir}; stop it, or give this one another --run-dir"
            )
        left = left_running(state)
        if left:
            pids = " ".join(str(p) for p in left.values())
            raise MeshError(
                f"the previous mesh from {self.run_dir} (supervisor pid {pid}, gone) left "
                f"{len(left)} process(es) running: "
                + ", ".join(f"{name} (pid {p})" for name, p in left.items())
                + f"; end them with `kill {pids}`, or give this one another --run-dir"
            )

    def _start_envoy(self, bootstrap: Path) -> None:
        assert self.run_dir is not None
        log = (self.run_dir / "envoy.log").open("w")
        self.proxy = spawn(
            envoy.envoy_command(bootstrap, concurrency=self.envoy_concurrency),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_ready(self, deadline: float) -> None:
        assert self.ports is not None
        pending: dict[str, Callable[[], bool]] = {p.name: p.ready for p in self.processes()}
        admin = ("127.0.0.1", self.ports.admin)
        pending["envoy"] = lambda: http_ok(f"http://127.0.0.1:{admin[1]}/ready")
        while pending:
            self.check_alive()
            for name, ready in list(pending.items()):
                if ready():
                    del pending[name]
            if not pending:
                # Envoy's first health checks may have run before a workload
                # was up: ready means Envoy routes to every endpoint.
                pending = {"envoy health checks": lambda: not envoy.unhealthy_hosts(admin)}
                if pending["envoy health checks"]():
                    return
            if time.monotonic() > deadline:
                raise MeshError(f"not ready in time: {', '.join(sorted(pending))}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        """Raise MeshError naming a dead process (or Envoy) with its last log lines."""
        for process in self.processes():
            if process.exited():
                raise process.death()
        self.check_envoy()

    def check_envoy(self) -> None:
        if self.proxy is not None and self.proxy.poll() is not None:
            ports = self.ports
            mine = [p for p in (ports.gateway, ports.outbound, ports.admin) if p] if ports else []
            lost = port_taken(self.envoy_last_lines(), mine)
            if lost is not None:
                raise MeshError(port_taken_message("envoy", lost))
            raise MeshError(
                f"envoy {exit_status(self.proxy.returncode)}; its last lines:\n    "
                + "\n    ".join(self.envoy_last_lines())
            )

    def envoy_last_lines(self, count: int = 15) -> list[str]:
        assert self.run_dir is not None
        try:
            text = (self.run_dir / "envoy.log").read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-count:]

    # -- supervision -----------------------------------------------------------
    def supervise(self) -> None:
        """One round of watching: restart what died when its backoff is over.

        Raises MeshError if Envoy died. Every crash and restart is reported.
        """
        self.check_envoy()
        if not self._lock.acquire(timeout=0.1):
            return  # a rolling restart is under way; it watches its own processes
        try:
            now = time.monotonic()
            for process in self.processes():
                if self._stopping:
                    return
                if process.running():
                    if process.crashes and now - process.started_at > self.backoff.reset_after:
                        process.crashes = 0
                    continue
                if process.restart_at is None and process.exited():
                    self._crashed(process, now)
                elif process.restart_at is not None and now >= process.restart_at:
                    process.restarts += 1
                    process.start(self.layout.root)
                    self.report(f"{process.name}: restarted (restart {process.restarts})")
                    self._save_state()  # its new pid
        finally:
            self._lock.release()

    def _crashed(self, process: WorkloadProcess, now: float) -> None:
        assert process.process is not None
        process.crashes += 1
        delay = self.backoff.delay(process.crashes)
        process.restart_at = now + delay
        ran = now - process.started_at
        self.report(
            f"{process.name}: {exit_status(process.process.returncode)} after {ran:.1f}s; "
            f"restarting in {delay:g}s (CrashLoopBackOff, crash {process.crashes}); "
            "its last log lines:"
        )
        for line in process.last_lines():
            self.report(f"    {line}")

    def run(self, stopping: Callable[[], bool], interval: float = 0.2) -> None:
        """Supervise until ``stopping()`` is true; raises MeshError if Envoy dies."""
        while not stopping():
            self.supervise()
            time.sleep(interval)

    # -- changes ---------------------------------------------------------------
    def apply(self, *, validate: bool = True) -> Translation:
        """Write the current scenario and endpoints to Envoy and wait until it runs them.

        ``validate`` False skips ``envoy --mode validate``: for a change of
        endpoints only, under rules already checked.
        """
        assert self.run_dir is not None and self.ports is not None
        translation = self.translation(self.scenario)
        config_dir = self.run_dir / "envoy"
        if validate:
            self._validate(translation)
        envoy.write(config_dir, translation)
        envoy.wait_applied(("127.0.0.1", self.ports.admin), translation, timeout=30)
        return translation

    def _validate(self, translation: Translation) -> None:
        """``envoy --mode validate`` on a copy: a bad rule set never reaches the running Envoy."""
        assert self.run_dir is not None
        staging = self.run_dir / "envoy-check"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(self.run_dir / "envoy", staging)
        try:
            envoy.write(staging, translation)
            envoy.validate(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def use(self, scenario: str) -> None:
        """Switch the running mesh to ``scenario``: its rules, and its workload environment.

        Workloads whose environment changes are restarted rolling (see
        :meth:`restart`); the others keep running.
        """
        with self._changing():
            self.layout.scenario_file(scenario)  # unknown: say so before anything changes
            previous = self.scenario
            changed = [
                w.name
                for w in self.workloads.values()
                if self.workload_env(w, scenario) != self.workload_env(w, previous)
            ]
            self.scenario = scenario
            try:
                translation = self.translation(scenario)
                if self._gateway_shape(translation) != self._gateway_plan:
                    # The gateway's listeners are static in the bootstrap.
                    raise MeshError(
                        f"scenario {scenario} changes the gateway's servers (ports, TLS) or "
                        "its RequestAuthentication, which the running mesh cannot switch; "
                        f"restart with `usvc up --scenario {scenario}`"
                    )
                self._validate(translation)  # a bad rule set: nothing restarts
                self._roll([self.workloads[name] for name in changed])
                self.apply(validate=False)
            except BaseException:
                self.scenario = previous
                raise
            self.report(
                f"scenario {scenario} applied"
                + (f"; restarted {', '.join(changed)}" if changed else "; nothing restarted")
            )
            self._save_state()

    def restart(self, name: str) -> None:
        """Rolling restart of one workload: each replica replaced by a new, ready one."""
        if name not in self.workloads:
            known = ", ".join(self.workloads)
            raise MeshError(f"no workload {name!r}; the workloads are {known}")
        with self._changing():
            self._roll([self.workloads[name]])
            self._save_state()

    def restart_all(self) -> None:
        with self._changing():
            self._roll(list(self.workloads.values()))
            self._save_state()

    @contextmanager
    def _changing(self) -> Iterator[None]:
        if self.run_dir is None or self.ports is None:
            raise MeshError("the mesh is not running")
        with self._lock:
            yield

    def _roll(self, workloads: Sequence[Workload]) -> None:
        """Rolling restart, maxSurge 1 and maxUnavailable 0 per workload, workloads side by side.

        For each replica: start the new process, wait until it is ready and
        Envoy routes to it, then take the old one out of Envoy's endpoints and
        stop it (it finishes what it has in flight).
        """
        for position in range(max((len(w.members) for w in workloads), default=0)):
            rolling = [w for w in workloads if position < len(w.members)]
            new = {w.name: self._replica(w, position + 1, self.free_port()) for w in rolling}
            for process in new.values():
                process.start(self.layout.root)
            try:
                for process in new.values():
                    self._await(process.ready, f"{process.name} (new)", process)
                for workload in rolling:
                    workload.surge.append(new[workload.name])
                self.apply(validate=False)  # old and new in Envoy's endpoints
                for process in new.values():
                    self._await(
                        partial(self._healthy, process), f"{process.name} (new) in Envoy", process
                    )
            except BaseException:
                for workload in rolling:
                    workload.surge.clear()
                self.apply(validate=False)
                for process in new.values():
                    process.stop()
                raise
            old = []
            for workload in rolling:
                workload.surge.clear()
                old.append(workload.members[position])
                workload.draining.append(workload.members[position])
                workload.members[position] = new[workload.name]
            # The old ones out of Envoy's endpoints; their inbound listeners stay
            # until they are stopped, for the requests still on their way.
            self.apply(validate=False)
            # The admin API answers for Envoy's main thread; its workers get the
            # new endpoints a moment later and may still pick an old one. In a
            # cluster DRAIN_SECONDS covers the same propagation.
            time.sleep(ENDPOINT_PROPAGATION)
            for process in old:
                process.signal_stop()
            for process in old:
                process.stop()
            for workload in rolling:
                workload.draining.clear()
            self.apply(validate=False)  # and now their inbound listeners
            for process in new.values():
                self.report(f"{process.name}: replaced (rolling restart)")

    def _healthy(self, process: WorkloadProcess) -> bool:
        assert self.ports is not None
        # Envoy's endpoint is the replica's inbound listener; its probe goes to the process.
        address = Inbound(process.name, process.address).listener
        unhealthy = envoy.unhealthy_hosts(("127.0.0.1", self.ports.admin))
        return not any(host == address for _, host in unhealthy)

    def _await(self, ready: Callable[[], bool], what: str, process: WorkloadProcess) -> None:
        deadline = time.monotonic() + 30
        while not ready():
            if self._stopping:
                raise MeshError("the mesh is stopping")
            if process.exited():
                raise process.death(what, "the old one keeps running")
            self.check_envoy()
            if time.monotonic() > deadline:
                raise MeshError(f"{what} not ready within 30s; the old one keeps running")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stopping = True
        if self._control is not None:
            self._control.close()
            self._control = None
        with self._lock:
            # All at once, so their drains overlap; then wait for each.
            for process in self.processes():
                process.signal_stop()
            for process in self.processes():
                process.stop()
            if self.proxy is not None:
                terminate(self.proxy)
        if self.run_dir is not None:
            state = self.run_dir / STATE_FILE
            try:
                mine = json.loads(state.read_text()).get("pid") == os.getpid()
            except (OSError, ValueError):
                mine = False
            if mine:
                state.unlink(missing_ok=True)

    # -- state, for `usvc mesh use` and `usvc restart` from another shell ---------
    def _save_state(self) -> None:
        assert self.run_dir is not None and self.ports is not None
        state = {
            "root": str(self.layout.root),
            "manifests": str(self.layout.manifests),
            "namespace": self.layout.namespace,
            "scenario": self.scenario,
            "pid": os.getpid(),
            "run_dir": str(self.run_dir),
            "control": str(self._control.path) if self._control else None,
            "gateway": f"http://{self.ports.gateway_host}:{self.ports.gateway}",
            "ports": {
                "gateway": self.ports.gateway,
                "outbound": {n: w.outbound_port for n, w in self.workloads.items()},
                "inbound": {
                    m.name: Inbound(m.name, m.address).listener
                    for w in self.workloads.values()
                    for m in w.members
                },
                # Each replica's pod address: its plain listener (PeerAuthentication).
                "pod": {m.name: m.pod_port for w in self.workloads.values() for m in w.members},
                "admin": self.ports.admin,
                "gateway_host": self.ports.gateway_host,
            },
            "gateways": {
                str(listener.server_port): listener.url
                for listener in (self.gateway.listeners if self.gateway else [])
            },
            "gateway_ca": str(self.gateway.ca) if self.gateway and self.gateway.ca else None,
            "workloads": {n: [m.port for m in w.members] for n, w in self.workloads.items()},
            "stand_ins": {h: w.port for h, w in self.stand_ins.items()},
            # pid and start time (pids are reused) of each child, for the next `usvc up`
            "processes": {
                name: [process.pid, start_ticks(process.pid)]
                for name, process in self.children().items()
            },
        }
        path = self.run_dir / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=1))
        os.replace(temporary, path)

    def describe(self) -> list[tuple[str, str, str]]:
        rows = []
        for w in self.workloads.values():
            labels = " ".join(
                f"{k}={w.labels[k]}" for k in ("app", "version", "env") if k in w.labels
            )
            for member in w.members:
                name = member.name if w.replicas > 1 else w.name
                rows.append((name, member.url, labels))
        for host, stand_in in self.stand_ins.items():
            rows.append((host, stand_in.url, "stand-in for the public API"))
        return rows


def check_address_free(host: str, port: int) -> None:
    """MeshError if something listens on ``host:port`` already (another ``usvc up``?)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        # As Envoy binds: TIME_WAIT leftovers of an earlier run are no conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MeshError(
                    f"the gateway address {host}:{port} is already in use (another `usvc up`?); "
                    "stop that, or choose another with --gateway HOST:PORT"
                ) from None
            raise MeshError(f"cannot listen on the gateway address {host}:{port}: {exc}") from None


def exit_status(returncode: int) -> str:
    """``exited with status 2``, or ``was killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def left_running(state: Mapping[str, Any]) -> dict[str, int]:
    """The children a state file names that still run: the same pid, started at the same time."""
    left = {}
    for name, (pid, ticks) in state.get("processes", {}).items():
        if ticks is not None and start_ticks(pid) == ticks:
            left[name] = pid
    return left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the control socket: `usvc mesh use` and `usvc restart` talk to the supervisor ----------


class _ControlServer:
    """A Unix socket in the run directory; one JSON request per connection.

    Requests: ``{"use": SCENARIO}``, ``{"restart": [WORKLOAD, ...]}``,
    ``{"restart": "--all"}``. The answer is JSON lines: ``{"event": TEXT}`` as
    things happen, then ``{"ok": TEXT}`` or ``{"error": TEXT}``. Only the
    supervisor owns the processes, so only it can restart them.
    """

    def __init__(self, mesh: LocalMesh) -> None:
        assert mesh.run_dir is not None
        self.mesh = mesh
        path = mesh.run_dir / CONTROL_SOCKET
        self.scratch: Path | None = None
        if len(str(path)) > 100:  # sun_path is 108 bytes
            self.scratch = Path(tempfile.mkdtemp(prefix="usvc-mesh-"))
            path = self.scratch / CONTROL_SOCKET
        self.path = path
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self._closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="usvc-mesh-control", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self._closed.set()
        self.thread.join(60)
        self.sock.close()
        self.path.unlink(missing_ok=True)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(None)
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        def send(message: Mapping[str, str]) -> None:
            with suppress(OSError):  # the client went away; the change goes on
                conn.sendall((json.dumps(message) + "\n").encode())

        try:
            request = json.loads(conn.makefile("r").readline() or "{}")
        except ValueError:
            send({"error": "not a JSON request"})
            return
        mesh = self.mesh
        report = mesh.report

        def both(line: str) -> None:
            report(line)
            send({"event": line})

        mesh.report = both
        try:
            if "use" in request:
                mesh.use(str(request["use"]))
                send({"ok": f"scenario {request['use']} applied"})
            elif request.get("restart") == "--all":
                mesh.restart_all()
                send({"ok": "every workload restarted"})
            elif isinstance(request.get("restart"), list):
                for name in request["restart"]:
                    mesh.restart(str(name))
                send({"ok": f"restarted {', '.join(request['restart'])}"})
            else:
                send({"error": f"unknown request {request!r}"})
        except (MeshError, ValueError, TimeoutError) as exc:
            send({"error": str(exc)})
        finally:
            mesh.report = report


def find_run_dir(start: Path) -> Path:
    """The run directory of a mesh started in ``start`` or any directory above it."""
    for directory in [start, *start.parents]:
        candidate = directory / ".run" / "mesh"
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise MeshError(
        f"no local mesh is running from {start / '.run' / 'mesh'} or any parent's "
        "(start one with `usvc up`, or pass --run-dir)"
    )


def read_state(run_dir: Path) -> dict[str, Any]:
    """What the supervisor running from ``run_dir`` wrote about itself; MeshError if none runs."""
    try:
        state: dict[str, Any] = json.loads((run_dir / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        raise MeshError(f"no local mesh is running from {run_dir}") from None
    if not state.get("control") or not _alive(int(state.get("pid", 0))):
        raise MeshError(f"no local mesh is running from {run_dir} (its supervisor is gone)")
    return state


def send_command(run_dir: Path, request: Mapping[str, Any], echo: Callable[[str], None]) -> str:
    """Ask the supervisor running from ``run_dir``; returns its final answer, raises on error."""
    state = read_state(run_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(state["control"])
        except OSError as exc:
            raise MeshError(f"cannot reach the mesh running from {run_dir}: {exc}") from None
        sock.sendall((json.dumps(request) + "\n").encode())
        for line in sock.makefile("r"):
            message = json.loads(line)
            if "event" in message:
                echo(message["event"])
            elif "ok" in message:
                return str(message["ok"])
            elif "error" in message:
                raise MeshError(str(message["error"]))
    raise MeshError("the mesh closed the connection without an answer")
