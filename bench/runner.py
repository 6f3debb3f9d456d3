"""Run a suite: start every build, warm up, interleaved rounds under wrk, the table."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import wrk
from .builds import SUITES, Build, Pending
from .procs import ROOT, StartError, children_cpu_seconds, machine_busy_seconds


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

    @property
    def cpu_us_per_request(self) -> float:
        return sum(self.cpu_s.values()) / max(self.requests, 1) * 1e6


@dataclass
class Row:
    build: str
    description: str
    samples: list[Sample] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # req/s over bare's, same round
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
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

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
                            "ratio_to_bare": r.ratio,
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


def _commit() -> str:
    """The repository's commit, marked when framework/ or services/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "framework", "services"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{head or '?'}{' + local changes' if dirty else ''}"


def measure(build: Build, seconds: float, connections: int) -> Sample:
    before = build.cpu()
    busy_before, wrk_before, wall_before = (
        machine_busy_seconds(),
        children_cpu_seconds(),
        time.monotonic(),
    )
    result = wrk.run(build.url, seconds, connections, headers=build.headers)
    after = build.cpu()
    busy = machine_busy_seconds() - busy_before
    wrk_cpu = children_cpu_seconds() - wrk_before
    wall = time.monotonic() - wall_before
    cpu = {label: after[label] - before.get(label, 0.0) for label in after}
    return Sample(
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        requests=result.requests,
        errors=result.errors,
        cpu_s=cpu,
        wrk_cpu_s=wrk_cpu,
        other_cores=max(0.0, busy - wrk_cpu - sum(cpu.values())) / wall,
    )


NOISE_CORES = 0.25
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


def sample(build: Build, options: Options, connections: int | None = None) -> Sample:
    connections = connections or options.connections
    if options.wait_idle > 0:
        wait_until_idle(options.wait_idle)
    result = measure(build, options.duration, connections)
    for _ in range(2 if options.wait_idle > 0 else 0):
        if result.other_cores < NOISE_CORES:
            break
        log(f"  {build.name}: other load {result.other_cores:.2f} cores, measuring again")
        wait_until_idle(options.wait_idle)
        result = measure(build, options.duration, connections)
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
            bare_rps: float | None = None
            label = f"round {round_no}/{options.rounds}"
            for build in ready:
                got = sample(build, options)
                row = rows[build.name]
                row.samples.append(got)
                if build.name == "bare":
                    bare_rps = got.rps
                if bare_rps:
                    row.ratios.append(got.rps / bare_rps)
                log(describe(suite, label, build, got))
            for build in ready:
                if build.name in PROBED.get(suite, ()):
                    got = sample(build, options, PROBE_CONNECTIONS)
                    rows[build.name].probes.append(got)
                    log(describe(suite, f"{label} at {PROBE_CONNECTIONS} connection", build, got))
    finally:
        for build in builds:
            build.stop()
        result.machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if not options.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return result


def table(result: SuiteResult) -> str:
    """The result as a Markdown table, with the notes that explain it."""
    lines = [
        f"suite {result.suite}: wrk -t1 -c{result.options.connections} "
        f"-d{result.options.duration:g}s after a {result.options.warmup:g} s warm-up; "
        f"median of {result.options.rounds} interleaved round(s)",
        "machine: " + "; ".join(f"{k} {v}" for k, v in result.machine.items()),
        "",
        "| build | req/s | p50 ms | p99 ms | CPU µs/req | × bare |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result.rows:
        if not row.samples:
            lines.append(f"| {row.build} | pending | | | | |")
            continue
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        lines.append(
            f"| {row.build} | {row.rps:.0f} | {row.p50_ms:.2f} | {row.p99_ms:.2f} "
            f"| {row.cpu_us:.0f} | {ratio} |"
        )
    probed = [row for row in result.rows if row.probes]
    if probed:
        lines += [
            "",
            f"at {PROBE_CONNECTIONS} connection (no queueing; median of {len(probed[0].probes)}):",
            "",
            "| build | req/s | p50 ms | p99 ms | CPU µs/req |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in probed:
            lines.append(
                f"| {row.build} | {statistics.median(s.rps for s in row.probes):.0f} "
                f"| {statistics.median(s.p50_ms for s in row.probes):.2f} "
                f"| {statistics.median(s.p99_ms for s in row.probes):.2f} "
                f"| {statistics.median(s.cpu_us_per_request for s in row.probes):.0f} |"
            )
    lines.append("")
    for row in result.rows:
        lines.append(f"- {row.build}: {row.description}")
        if row.pending:
            lines.append(f"  PENDING: {row.pending}")
        if row.errors:
            lines.append(f"  {row.errors} error answers or socket errors during the runs")
        if row.samples and row.other_cores > NOISE_CORES:
            lines.append(
                f"  noisy: other processes used up to {row.other_cores:.2f} cores during a run"
            )
    lines.extend(_findings(result))
    return "\n".join(lines)


def _findings(result: SuiteResult) -> list[str]:
    def ratio(a: str, b: str) -> str | None:
        ra, rb = result.row(a), result.row(b)
        if ra is None or rb is None or not ra.samples or not rb.samples:
            return None
        return f"{ra.rps / rb.rps:.2f}×"

    lines = [""]
    if result.suite == "single":
        targets = [
            ("usvc-100", "otel", "target ≥ 2×"),
            ("usvc-100-batch", "otel", "same export path; target ≥ 2×"),
            ("usvc-1", "bare", "target ≥ 0.6×"),
        ]
    else:
        targets = [
            ("usvc", "otel", "target ≥ 2×"),
            ("usvc-batch", "otel", "same export path; target ≥ 2×"),
            ("otel", "bare", "issue 3 measured 0.39×"),
        ]
    for a, b, note in targets:
        value = ratio(a, b)
        if value is not None:
            lines.append(f"{a} / {b} req/s: {value} ({note})")
    if result.suite == "chain":
        lines.extend(_envoy_cost(result))
    return lines


def _envoy_cost(result: SuiteResult) -> list[str]:
    direct, mesh = result.row("usvc"), result.row("usvc+envoy")
    if direct is None or mesh is None or not direct.samples or not mesh.samples:
        return ["Envoy's cost: pending (needs both the usvc and usvc+envoy rows)"]
    # wrk -> gateway -> front, and front/middle/core -> outbound listener -> next hop.
    traversals = 4
    lines = []
    for label, a, b in (
        (f"at {result.options.connections} connections", direct.samples, mesh.samples),
        (f"at {PROBE_CONNECTIONS} connection", direct.probes, mesh.probes),
    ):
        if not a or not b:
            continue
        p50 = statistics.median(s.p50_ms for s in b) - statistics.median(s.p50_ms for s in a)
        p99 = statistics.median(s.p99_ms for s in b) - statistics.median(s.p99_ms for s in a)
        rps = statistics.median(s.rps for s in b) / statistics.median(s.rps for s in a)
        lines.append(
            f"Envoy {label}: {p50:+.2f} ms at p50, {p99:+.2f} ms at p99 over direct usvc hops "
            f"({p50 / traversals:+.2f} ms p50 per traversal, {traversals} per request); "
            f"req/s {rps:.2f}× direct"
        )
    envoy_cpu = mesh.cpu_us_of("envoy")
    lines.append(
        f"Envoy's own CPU: {envoy_cpu:.0f} µs per request ({envoy_cpu / traversals:.0f} µs per "
        f"traversal) of the mesh build's {mesh.cpu_us:.0f} µs; direct usvc hops use "
        f"{direct.cpu_us:.0f} µs"
    )
    return lines
