"""Run a suite: start every build, warm up, interleaved rounds under wrk; the run's header.

The tables are rendered from the recorded samples by bench/report.py.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import wrk
from .builds import SUITES, Build, Pending
from .procs import ROOT, StartError, children_cpu_seconds, machine_busy_seconds
from .report import NOISE_CORES


@dataclass(frozen=True)
class Options:
    duration: float = 10.0
    warmup: float = 3.0
    connections: int = 32
    rounds: int = 3
    loop: str = "uvloop"
    only: tuple[str, ...] = ()
    keep: bool = False  # keep the run directory (server logs) afterwards
    # On a shared machine: wait up to this long for other load to settle before
    # each run, and repeat (twice at most) a run that other load disturbed.
    wait_idle: float = 0.0


@dataclass(frozen=True)
class Sample:
    """One wrk run against one build, with the CPU its processes used meanwhile."""

    round: int  # 1-based: the round of the run it was measured in
    started: float  # Unix time wrk started (inside the run's started/finished)
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_s: dict[str, float]  # by process label
    wrk_cpu_s: float = 0.0
    # CPU the rest of the machine used meanwhile (other people's work), in cores:
    # a noisy neighbour shows here, not silently in the numbers.
    other_cores: float = 0.0
    # Requests Envoy's listeners served meanwhile (a mesh build; 0 otherwise): divided by
    # ``requests``, the listener traversals per request.
    listener_requests: int = 0

    @property
    def cpu_us_per_request(self) -> float:
        return sum(self.cpu_s.values()) / max(self.requests, 1) * 1e6


@dataclass
class Row:
    build: str
    description: str
    samples: list[Sample] = field(default_factory=list)
    pending: str | None = None
    # Runs at PROBE_CONNECTIONS: latency without queueing behind 31 other requests.
    probes: list[Sample] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(s.rps for s in self.samples)

    @property
    def p50_ms(self) -> float:
        return statistics.median(s.p50_ms for s in self.samples)

    @property
    def p99_ms(self) -> float:
        return statistics.median(s.p99_ms for s in self.samples)

    @property
    def cpu_us(self) -> float:
        return statistics.median(s.cpu_us_per_request for s in self.samples)

    @property
    def other_cores(self) -> float:
        return max(s.other_cores for s in self.samples)

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.samples)

    def cpu_us_of(self, label: str) -> float:
        return statistics.median(
            s.cpu_s.get(label, 0.0) / max(s.requests, 1) * 1e6 for s in self.samples
        )


@dataclass
class SuiteResult:
    suite: str
    options: Options
    machine: dict[str, str]
    rows: list[Row]

    def row(self, build: str) -> Row | None:
        return next((r for r in self.rows if r.build == build), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "options": asdict(self.options),
            "machine": self.machine,
            "rows": [
                {
                    "build": r.build,
                    "description": r.description,
                    "pending": r.pending,
                    **(
                        {
                            "rps": r.rps,
                            "p50_ms": r.p50_ms,
                            "p99_ms": r.p99_ms,
                            "cpu_us_per_request": r.cpu_us,
                            "errors": r.errors,
                            "samples": [asdict(s) for s in r.samples],
                            "probes": [asdict(s) for s in r.probes],
                        }
                        if r.samples
                        else {}
                    ),
                }
                for r in self.rows
            ],
        }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine(loop: str) -> dict[str, str]:
    import aiohttp

    model = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                "?",
            )
    except OSError:
        pass
    if loop == "uvloop":
        from importlib.metadata import version

        loop = f"uvloop {version('uvloop')}"
    return {
        "commit": _commit(),
        "cpu": f"{os.cpu_count()} x {model}",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "loop": loop,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# What the numbers depend on: a change here after the commit marks it "+dirty" (the results
# file itself, written at the end of a run, does not count).
CODE_PATHS = ("framework", "mesh", "services", "bench", ":(exclude)bench/results")


def _commit() -> str:
    """``git rev-parse --short HEAD``, with "+dirty" when the measured code differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *CODE_PATHS],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{head or '?'}{'+dirty' if dirty else ''}"


def _utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S")


def start_run(options: Options, command: str) -> dict[str, Any]:
    """The results file's header, before the first suite: where, what, and how loaded."""
    info = machine(options.loop)
    now = time.time()
    return {
        "command": command,
        "commit": info["commit"],
        "started_unix": now,
        "started": _utc(now),
        "cores": os.cpu_count(),
        "cpu_model": info["cpu"].split(" x ", 1)[-1],
        "python": info["python"],
        "aiohttp": info["aiohttp"],
        "loop": info["loop"],
        "load_before": list(os.getloadavg()),
        "wrk": {
            "threads": 1,
            "connections": options.connections,
            "duration_s": max(1, round(options.duration)),  # wrk runs whole seconds
            "warmup_s": options.warmup,
            "rounds": options.rounds,
            "probe_connections": PROBE_CONNECTIONS,
        },
    }


def finish_run(run: dict[str, Any]) -> None:
    now = time.time()
    run["finished_unix"] = now
    run["finished"] = _utc(now)
    run["load_after"] = list(os.getloadavg())


def results(run: Mapping[str, Any], suites: Sequence[SuiteResult]) -> dict[str, Any]:
    """What bench/results/*.json holds: one run's header and every suite's raw samples."""
    return {"format": 1, "run": dict(run), "suites": [s.as_json() for s in suites]}


def measure(build: Build, seconds: float, connections: int, round_no: int) -> Sample:
    passes_before = build.listener_requests()
    before = build.cpu()
    started = time.time()
    busy_before, wrk_before, wall_before = (
        machine_busy_seconds(),
        children_cpu_seconds(),
        time.monotonic(),
    )
    result = wrk.run(build.url, seconds, connections, headers=build.headers)
    after = build.cpu()
    passes_after = build.listener_requests()
    busy = machine_busy_seconds() - busy_before
    wrk_cpu = children_cpu_seconds() - wrk_before
    wall = time.monotonic() - wall_before
    cpu = {label: after[label] - before.get(label, 0.0) for label in after}
    return Sample(
        round=round_no,
        started=started,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        requests=result.requests,
        errors=result.errors,
        cpu_s=cpu,
        wrk_cpu_s=wrk_cpu,
        other_cores=max(0.0, busy - wrk_cpu - sum(cpu.values())) / wall,
        listener_requests=(passes_after or 0) - (passes_before or 0),
    )


# The chain's direct and Envoy builds are also run at one connection, where the
# difference between them is Envoy's latency rather than queueing for the CPU.
PROBED = {"chain": ("usvc", "usvc+envoy")}
PROBE_CONNECTIONS = 1


def wait_until_idle(limit: float) -> None:
    """Wait (up to ``limit`` s) until the machine's other load is under NOISE_CORES."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = machine_busy_seconds()
        time.sleep(0.5)
        if (machine_busy_seconds() - before) / 0.5 < NOISE_CORES:
            return
    log(f"machine still busy after {limit:g} s; measuring anyway")


def sample(build: Build, options: Options, round_no: int, connections: int | None = None) -> Sample:
    connections = connections or options.connections
    if options.wait_idle > 0:
        wait_until_idle(options.wait_idle)
    result = measure(build, options.duration, connections, round_no)
    for _ in range(2 if options.wait_idle > 0 else 0):
        if result.other_cores < NOISE_CORES:
            break
        log(f"  {build.name}: other load {result.other_cores:.2f} cores, measuring again")
        wait_until_idle(options.wait_idle)
        result = measure(build, options.duration, connections, round_no)
    return result


def describe(suite: str, label: str, build: Build, got: Sample) -> str:
    return (
        f"[{suite}] {label} {build.name:<15}"
        f" {got.rps:9.0f} req/s  p50 {got.p50_ms:6.2f} ms"
        f"  p99 {got.p99_ms:6.2f} ms  {got.cpu_us_per_request:6.0f} µs/req"
        f"  other load {got.other_cores:.2f} cores"
        + (f"  ERRORS {got.errors}" if got.errors else "")
    )


def start_builds(builds: Sequence[Build], rows: dict[str, Row], run_dir: Path, loop: str) -> None:
    """Start every build (all at once: they import in parallel), then wait for each."""
    for build in builds:
        try:
            build.start(run_dir, loop)
        except Pending as exc:
            rows[build.name].pending = str(exc)
    for build in builds:
        if rows[build.name].pending is None:
            try:
                build.wait()
            except StartError as exc:
                rows[build.name].pending = f"did not start: {exc}"


def run_suite(suite: str, options: Options) -> SuiteResult:
    builds = [b for b in SUITES[suite]() if not options.only or b.name in options.only]
    rows = {b.name: Row(b.name, b.description) for b in builds}
    result = SuiteResult(suite, options, machine(options.loop), list(rows.values()))
    run_dir = Path(tempfile.mkdtemp(prefix=f"usvc-bench-{suite}-"))
    log(f"[{suite}] server logs in {run_dir}")
    try:
        start_builds(builds, rows, run_dir, options.loop)
        ready = [b for b in builds if rows[b.name].pending is None]
        for build in ready:
            log(f"[{suite}] warm-up {build.name} ({options.warmup:g} s)")
            wrk.run(build.url, options.warmup, options.connections, headers=build.headers)
        for round_no in range(1, options.rounds + 1):
            label = f"round {round_no}/{options.rounds}"
            for build in ready:
                got = sample(build, options, round_no)
                rows[build.name].samples.append(got)
                log(describe(suite, label, build, got))
            for build in ready:
                if build.name in PROBED.get(suite, ()):
                    got = sample(build, options, round_no, PROBE_CONNECTIONS)
                    rows[build.name].probes.append(got)
                    log(describe(suite, f"{label} at {PROBE_CONNECTIONS} connection", build, got))
    finally:
        for build in builds:
            build.stop()
        result.machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if not options.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return result
