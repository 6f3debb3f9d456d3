"""The builds each suite compares: what runs, where wrk sends load, whose CPU counts.

A build is one or more server processes started together. wrk loads its
``url``; its CPU time is the sum over every process that serves the request
(all four hops of a chain, and Envoy for the mesh).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usvc_mesh.envoy import admin_stats

from .procs import (
    ROOT,
    Server,
    StartError,
    clean_env,
    cpu_seconds,
    free_port,
    http_ok,
    python_server,
    wait_ready,
)
from .server import CHAIN_ROLES

# What the chain's requests carry: the demo routes x-dev-user: betaUser through
# middle dev and core test to clock, so the mesh build serves the same four
# hops as the direct builds (which pass the header through and ignore it).
CHAIN_HEADERS = ("x-dev-user: betaUser",)

USVC_ENV = {
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "1.0",
    "ACCESS_LOG": "true",
    "LOG_LEVEL": "INFO",
    "DRAIN_SECONDS": "0",
    "SERVICE_VERSION": "v1",
}


class Pending(Exception):
    """This build cannot run yet; the message says why (shown in its row)."""


class Build:
    """Base of every build: start, wait until ready, CPU time per process, stop."""

    name: str
    description: str
    headers: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self, run_dir: Path, loop: str) -> None:
        raise NotImplementedError

    def wait(self) -> None:
        raise NotImplementedError

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far, by process label."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def pid_of(self, label: str) -> int:
        raise NotImplementedError

    def log_files(self) -> list[Path]:
        return []

    def listener_requests(self) -> int | None:
        """Requests Envoy's listeners have served so far (None: the build has no Envoy)."""
        return None


@dataclass
class Processes(Build):
    """Plain server processes we start ourselves; the first one takes the load."""

    name: str
    description: str
    specs: list[tuple[str, str, dict[str, str]]]  # (label, server build, env), front first
    headers: tuple[str, ...] = ()
    servers: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self, run_dir: Path, loop: str) -> None:
        # Started from the bottom up, each told the URL of the one beneath it.
        upstream: str | None = None
        for label, build, env in reversed(self.specs):
            full = {**env, "BENCH_LOOP": loop}
            if upstream is not None:
                full["UPSTREAM_URI"] = upstream
            server = python_server(
                f"{self.name}.{label}", ["-m", "bench.server", build], full, run_dir
            )
            server.start()
            self.servers.insert(0, server)
            upstream = server.url

    def wait(self) -> None:
        wait_ready(self.servers, path="/")
        # The front answers 200 only when every hop beneath it does.
        wait_ready(self.servers[:1], path="/", headers=_header_dict(self.headers))

    def cpu(self) -> dict[str, float]:
        return {s.name.split(".", 1)[1]: s.cpu() for s in self.servers}

    def pid_of(self, label: str) -> int:
        for server in self.servers:
            if server.name.split(".", 1)[1] == label:
                return server.pid
        raise KeyError(label)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def log_files(self) -> list[Path]:
        return [s.log_path for s in self.servers]


class _Everyone(Mapping[str, Mapping[str, str]]):
    """The same overrides for every workload name, whatever the manifests call them."""

    def __init__(self, overrides: Mapping[str, str]) -> None:
        self.overrides = overrides

    def __getitem__(self, key: str) -> Mapping[str, str]:
        return self.overrides

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass
class MeshBuild(Build):
    """The demo chain as ``usvc up`` runs it: every workload behind one real Envoy."""

    name: str
    description: str
    headers: tuple[str, ...] = CHAIN_HEADERS
    mesh: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.mesh.ports.gateway}/"

    def start(self, run_dir: Path, loop: str) -> None:
        try:
            from usvc_mesh.manifests import Layout
            from usvc_mesh.supervisor import LocalMesh
        except Exception as exc:  # the local mesh is still being built
            raise Pending(f"usvc_mesh does not import: {exc!r}") from None
        env = {k: v for k, v in clean_env().items() if k in ("PATH", "PYTHONPATH", "HOME", "LANG")}
        try:
            self.mesh = LocalMesh(
                Layout(ROOT),
                gateway_port=free_port(),
                run_dir=run_dir / "mesh",
                base_env=env,
                env_overrides=_Everyone(USVC_ENV),
            )
            self.mesh.start()
        except Exception as exc:
            self.stop()
            raise Pending(f"the local mesh did not start: {type(exc).__name__}: {exc}") from None

    def wait(self) -> None:
        # LocalMesh.start returns once every workload and Envoy are ready.
        if not http_ok(self.url, _header_dict(self.headers)):
            raise StartError(f"the mesh gateway {self.url} does not answer 200")

    def _pids(self) -> dict[str, int]:
        """Every process the mesh runs, by instance (``front-1``, ..., ``envoy``).

        Each replica is a process of its own: a workload with three replicas serves
        with three, and the build's CPU is all of theirs.
        """
        return {name: process.pid for name, process in self.mesh.children().items()}

    def cpu(self) -> dict[str, float]:
        return {label: cpu_seconds(pid) for label, pid in self._pids().items()}

    def pid_of(self, label: str) -> int:
        """A workload's first replica (``front``), or one instance by name (``front-2``)."""
        workload = self.mesh.workloads.get(label)
        if workload is not None and workload.process is not None:
            return int(workload.process.pid)
        return self._pids()[label]

    def listener_requests(self) -> int | None:
        """The sum of every HTTP connection manager's ``downstream_rq_completed`` but admin's.

        One request through one listener counts once, however the mesh's listeners are
        laid out; its difference over a run divided by wrk's requests is the number of
        listener traversals per request (bench/README.md: Method).
        """
        return listener_requests(admin_stats(("127.0.0.1", self.mesh.ports.admin), COMPLETED))

    def stop(self) -> None:
        if self.mesh is not None:
            self.mesh.stop()

    def log_files(self) -> list[Path]:
        if self.mesh is None or self.mesh.run_dir is None:
            return []
        return sorted(Path(self.mesh.run_dir).glob("*.log"))


# The admin /stats query listener_requests() reads.
COMPLETED = "filter=^http\\..+\\.downstream_rq_completed$"


def listener_requests(stats: Mapping[str, str]) -> int:
    """From Envoy's admin ``/stats`` (usvc_mesh.admin_stats): downstream requests of every
    HCM but the admin's."""
    total = 0
    for name, value in stats.items():
        hcm = name.startswith("http.") and not name.startswith("http.admin.")
        if hcm and name.endswith(".downstream_rq_completed"):
            total += int(value)
    return total


def _header_dict(headers: tuple[str, ...]) -> dict[str, str]:
    pairs = (h.split(":", 1) for h in headers)
    return {name.strip(): value.strip() for name, value in pairs}


def single_builds() -> list[Build]:
    usvc_100 = {**USVC_ENV, "SERVICE_NAME": "bench"}
    usvc_1 = {**usvc_100, "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    return [
        Processes("bare", "aiohttp alone", [("server", "bare", {})]),
        Processes(
            "otel",
            "aiohttp + OTel auto-instrumentation (server, client), SDK at 100 %, "
            "BatchSpanProcessor -> dropping exporter, prometheus-client histogram",
            [("server", "otel", {})],
        ),
        Processes(
            "usvc-100",
            "usvc, 100 % sampling, OTEL_TRACES_EXPORTER=none, metrics, JSON access log",
            [("server", "usvc", usvc_100)],
        ),
        Processes(
            "usvc-100-batch",
            "usvc, 100 % sampling, the otel build's BatchSpanProcessor -> dropping exporter",
            [("server", "usvc", {**usvc_100, "BENCH_EXPORTER": "drop"})],
        ),
        Processes(
            "usvc-1",
            "usvc, 1 % sampling, OTEL_TRACES_EXPORTER=none, metrics, JSON access log",
            [("server", "usvc", usvc_1)],
        ),
    ]


def _hops(
    build: str, env_of: Callable[[str], dict[str, str]]
) -> list[tuple[str, str, dict[str, str]]]:
    return [(role, build, {"BENCH_ROLE": role, **env_of(role)}) for role in CHAIN_ROLES]


def _usvc_hop_env(role: str, extra: Mapping[str, str]) -> dict[str, str]:
    # core in its test env calls clock, as the demo's beta route does.
    env = "test" if role in ("core", "clock") else "bench"
    return {**USVC_ENV, "SERVICE_NAME": role, "SERVICE_ENV": env, **extra}


def chain_builds() -> list[Build]:
    return [
        Processes(
            "bare",
            "4 aiohttp hops, ClientSession egress",
            _hops("bare", lambda r: {}),
            CHAIN_HEADERS,
        ),
        Processes(
            "otel",
            "4 aiohttp hops + OTel auto-instrumentation, BatchSpanProcessor -> drop, prometheus",
            _hops("otel", lambda r: {}),
            CHAIN_HEADERS,
        ),
        Processes(
            "usvc",
            "the services/ apps, 100 % sampling, exporter none, metrics, access log",
            _hops("usvc", lambda r: _usvc_hop_env(r, {})),
            CHAIN_HEADERS,
        ),
        Processes(
            "usvc-batch",
            "as usvc, with the otel build's BatchSpanProcessor -> dropping exporter",
            _hops("usvc", lambda r: _usvc_hop_env(r, {"BENCH_EXPORTER": "drop"})),
            CHAIN_HEADERS,
        ),
        MeshBuild(
            "usvc+envoy",
            "the services/ apps behind the local mesh's Envoy (usvc up), as usvc",
        ),
    ]


SUITES: dict[str, Callable[[], list[Build]]] = {"single": single_builds, "chain": chain_builds}
