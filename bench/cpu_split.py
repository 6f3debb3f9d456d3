"""User and system CPU per request of each build's processes, under wrk, side by side.

``python -m bench.cpu_split --suite single --build bare,usvc-1`` starts the
builds as the benchmark does (bench/builds.py), all together, and then, round
after round, runs wrk against each in turn (interleaved: A B, A B, ...),
reading each process's user and system time (``/proc/PID/stat`` fields
utime and stime) around the run. It prints one line per build and round and a
table of the medians: µs of user and of system CPU per request, and each over
the first build's.

What it is for: ``bench.callgrind`` counts instructions (the user side only)
and ``--cache-sim`` models their cycles; this says what the real CPU spent on
each side of the system call boundary, so a ratio of req/s that is worse than
the ratio of instructions can be placed: in the kernel (system time), or in
how fast the same instructions run (user time). It is a timing, so it shares
the machine's noise: read it beside the other load it prints.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import wrk
from .builds import SUITES, Processes
from .procs import children_cpu_seconds, cpu_times, machine_busy_seconds


@dataclass
class Split:
    build: str
    # Per round: µs per request of user and of system time, all the build's processes.
    user_us: list[float] = field(default_factory=list)
    system_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)


def measure_round(
    build: Processes, seconds: float, connections: int
) -> tuple[float, float, float, float]:
    """One wrk run: (user µs per request, system µs per request, req/s, other load in cores)."""
    pids = [build.pid_of(label) for label, _, _ in build.specs]
    before = [cpu_times(pid) for pid in pids]
    busy, wrk_cpu = machine_busy_seconds(), children_cpu_seconds()
    got = wrk.run(build.url, seconds, connections, headers=build.headers)
    busy, wrk_cpu = machine_busy_seconds() - busy, children_cpu_seconds() - wrk_cpu
    after = [cpu_times(pid) for pid in pids]
    if got.requests == 0 or got.errors:
        raise RuntimeError(f"{build.name}: {got.requests} requests, {got.errors} errors")
    user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    # What the rest of the machine used meanwhile: neither the build nor wrk.
    other = max(busy - user - system - wrk_cpu, 0.0) / got.seconds
    return 1e6 * user / got.requests, 1e6 * system / got.requests, got.rps, other


def table(splits: Sequence[Split]) -> str:
    base = splits[0]
    base_user, base_system = statistics.median(base.user_us), statistics.median(base.system_us)
    lines = [
        "| build | req/s | user µs/req | system µs/req | user ÷ first | system ÷ first |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in splits:
        user, system = statistics.median(s.user_us), statistics.median(s.system_us)
        lines.append(
            f"| {s.build} | {statistics.median(s.rps):.0f} | {user:.1f} | {system:.1f} "
            f"| {user / base_user:.2f} | {system / base_system:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__)
    parser.add_argument("--suite", choices=("single", "chain"), default="single")
    parser.add_argument("--build", default="bare,usvc-1", help="comma-separated (bare,usvc-1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (5)")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    names = args.build.split(",")
    builds: list[Processes] = []
    for name in names:
        found = [b for b in SUITES[args.suite]() if b.name == name]
        if not found or not isinstance(found[0], Processes):
            raise SystemExit(f"bench.cpu_split: no build of plain processes {name!r}")
        builds.append(found[0])
    run_dir = Path(tempfile.mkdtemp(prefix="bench-cpu-split-"))
    splits = [Split(b.name) for b in builds]
    try:
        for build in builds:
            build.start(run_dir, "uvloop")
        for build in builds:
            build.wait()
        for build in builds:  # warm-up
            wrk.run(build.url, 1, args.connections, headers=build.headers)
        for round_no in range(1, args.rounds + 1):
            for build, split in zip(builds, splits, strict=True):
                user, system, rps, other = measure_round(build, args.duration, args.connections)
                split.user_us.append(user)
                split.system_us.append(system)
                split.rps.append(rps)
                print(
                    f"round {round_no} {build.name:10} {rps:8.0f} req/s  user {user:6.1f} µs"
                    f"  system {system:6.1f} µs per request  (other load {other:.2f} cores)",
                    flush=True,
                )
    finally:
        for build in builds:
            build.stop()
    print()
    print(table(splits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
