"""CPU instructions per request of one server process, counted by callgrind.

``python -m bench.callgrind --suite chain --build usvc --hop middle`` starts the
build's processes as the benchmark does (bench/builds.py), the chosen hop under
``valgrind --tool=callgrind --instr-atstart=no``, sends ``--warmup`` requests,
switches instrumentation on (``callgrind_control --instr=on``), sends exactly
``--requests`` requests from ``--connections`` concurrent keep-alive clients,
switches it off and reads the instructions executed (``Ir``) from callgrind's
output. Instructions do not depend on what else the machine runs, so the
figure compares builds and commits on a shared, busy machine where req/s does
not; it is not a timing (the cache misses and the kernel's work are not in it).

``--cache-sim`` also runs callgrind's cache and branch-predictor simulation
(``--cache-sim=yes --branch-sim=yes``, the machine's cache sizes as valgrind
detects them) and prints, per request, the misses of the first-level
instruction and data caches, of the last-level cache, the mispredicted
branches, and KCachegrind's cycle estimate from them
(``Ir + 10 Bm + 10 L1m + 100 LLm``): a model, not a measurement, for where
perf's hardware counters are not available (they are not on this kind of
machine), to see whether two builds' instructions cost the same per
instruction. The simulation makes each run about twice as slow.

``--parts`` measures each usvc build as configured and then with one part
switched off at a time in the measured process (:data:`PARTS`: the access
log, the spans, the trace headers written, and all three): what each part
costs per request is the difference, and what is left with all three off is
the framework's request path itself (context, metrics, the egress call).

Several ``--build`` / ``--hop`` pairs (``--build usvc,bare``) are measured one
after the other; ``--repeat N`` measures each N times (the spread says how
stable the figure is: a few hundred instructions per request). Each result is
one line of JSON on stdout and one row of the table printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .builds import SUITES, Processes, _header_dict
from .procs import Server, python_server, wait_ready

# The chain's hops by the name --hop takes; "server" is a single build's process.
DEFAULT_HOP = {"single": "server", "chain": "middle"}


@dataclass
class Count:
    suite: str
    build: str
    hop: str
    requests: int
    connections: int
    instructions: int
    failed: int
    # With --cache-sim: every event callgrind counted (Ir, I1mr, ..., Bcm), in all.
    events: dict[str, int] = field(default_factory=dict)

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests

    def simulated(self) -> dict[str, float]:
        """Per request: cache misses by level, mispredicted branches, estimated cycles."""
        return simulated(self.events, self.requests)


# --parts: each usvc part that a setting switches off, by the environment that does it
# (in the measured process only: its callers and upstreams are as configured).
PARTS: dict[str, dict[str, str]] = {
    "access log": {"ACCESS_LOG": "false"},
    "spans": {"OTEL_SDK_DISABLED": "true"},
    "trace headers": {"OTEL_PROPAGATORS": "none"},
}
PARTS["all three"] = {k: v for env in list(PARTS.values()) for k, v in env.items()}


# The events of --cache-sim=yes --branch-sim=yes, as callgrind names them: instruction
# fetches and data reads and writes (Ir, Dr, Dw), their first-level (I1mr, D1mr, D1mw)
# and last-level (ILmr, DLmr, DLmw) misses, and conditional and indirect branches
# (Bc, Bi) with their mispredictions (Bcm, Bim).
_L1_MISSES = ("I1mr", "D1mr", "D1mw")
_LL_MISSES = ("ILmr", "DLmr", "DLmw")
_MISPREDICTS = ("Bcm", "Bim")


def simulated(events: Mapping[str, int], requests: int) -> dict[str, float]:
    """Per request: ``L1m``, ``LLm``, ``Bm`` and KCachegrind's cycle estimate ``CEst``."""
    missing = [e for e in ("Ir", *_L1_MISSES, *_LL_MISSES, *_MISPREDICTS) if e not in events]
    if missing:
        raise ValueError(f"no simulated events {', '.join(missing)}: run with --cache-sim")
    l1 = sum(events[e] for e in _L1_MISSES)
    ll = sum(events[e] for e in _LL_MISSES)
    bm = sum(events[e] for e in _MISPREDICTS)
    cycles = events["Ir"] + 10 * bm + 10 * l1 + 100 * ll
    return {
        "Ir": events["Ir"] / requests,
        "L1m": l1 / requests,
        "LLm": ll / requests,
        "Bm": bm / requests,
        "CEst": cycles / requests,
    }


def find_build(suite: str, name: str, prog: str = "bench.callgrind") -> Processes:
    for build in SUITES[suite]():
        if build.name == name:
            if not isinstance(build, Processes):
                raise SystemExit(f"{prog}: {name} is not a build of plain processes")
            return build
    names = ", ".join(b.name for b in SUITES[suite]())
    raise SystemExit(f"{prog}: no build {name!r} in suite {suite} ({names})")


def start_wrapped(
    build: Processes,
    hop: str,
    run_dir: Path,
    env: Mapping[str, str],
    wrap: Callable[[Sequence[str]], list[str]],
    prog: str = "bench.callgrind",
) -> list[Server]:
    """Start the build's processes from the bottom up as the benchmark does, each told the
    URL of the one beneath it; ``hop``'s process with ``env`` added and its command line
    (``python -m bench.server KIND``) replaced by ``wrap(argv)``. Front first."""
    servers: list[Server] = []
    upstream: str | None = None
    labels = [label for label, _, _ in build.specs]
    if hop not in labels:
        raise SystemExit(f"{prog}: {build.name} has no hop {hop!r} ({', '.join(labels)})")
    for label, kind, spec_env in reversed(build.specs):
        full = {**spec_env, "BENCH_LOOP": "uvloop", **(env if label == hop else {})}
        if upstream is not None:
            full["UPSTREAM_URI"] = upstream
        server = python_server(f"{build.name}.{label}", ["-m", "bench.server", kind], full, run_dir)
        if label == hop:
            server.argv = wrap(server.argv)
        server.start()
        servers.insert(0, server)
        upstream = server.url
    return servers


def start(
    build: Processes,
    hop: str,
    run_dir: Path,
    out_file: Path,
    env: Mapping[str, str],
    cache_sim: bool = False,
) -> list[Server]:
    """Start the build's processes from the bottom up, ``hop`` under callgrind with ``env``."""

    def under_callgrind(argv: Sequence[str]) -> list[str]:
        return [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            *(["--cache-sim=yes", "--branch-sim=yes"] if cache_sim else []),
            f"--callgrind-out-file={out_file}",
            *argv,
        ]

    return start_wrapped(build, hop, run_dir, env, under_callgrind)


async def load(
    url: str,
    headers: dict[str, str],
    requests: int,
    connections: int,
    session: aiohttp.ClientSession | None = None,
) -> int:
    """Send exactly ``requests`` GETs over ``connections`` keep-alive connections; failures.

    With ``session`` its connections are used (and stay open); otherwise a session of
    ``connections`` connections is made for this load and closed after it."""
    if session is None:
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as own:
            return await load(url, headers, requests, connections, own)
    failed = 0
    remaining = requests

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failed, remaining
        while remaining > 0:
            remaining -= 1
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    failed += 1

    await asyncio.gather(*(worker(session) for _ in range(connections)))
    return failed


def totals(out_file: Path) -> dict[str, int]:
    """Every event's total in a callgrind output file (instructions are ``Ir``): the
    ``events:`` names, in order, with the ``totals:`` line's numbers.

    (Its ``summary:`` line, written at start-up, stays 0 with ``--instr-atstart=no``.)
    """
    names = ["Ir"]
    for line in out_file.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("totals:"):
            return dict(zip(names, map(int, line.split()[1:]), strict=False))
    raise RuntimeError(f"no totals line in {out_file}")


def control(pid: int, *args: str) -> None:
    # vgdb names its pipes after $USER and $HOST, and HOST is the server's listen
    # address (bench/procs.py): callgrind_control must see the same values.
    env = {**os.environ, "HOST": "127.0.0.1"}
    done = subprocess.run(
        ["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=60, env=env
    )
    # callgrind_control exits 0 even when it found no such run: read what it said.
    if done.returncode != 0 or "OK." not in done.stdout:
        raise RuntimeError(f"callgrind_control {' '.join(args)} {pid}: {done.stdout}{done.stderr}")


def measure(
    suite: str,
    name: str,
    hop: str,
    requests: int,
    warmup: int,
    connections: int,
    keep: bool = False,
    env: Mapping[str, str] | None = None,
    cache_sim: bool = False,
) -> Count:
    build = find_build(suite, name)
    headers = _header_dict(build.headers)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    try:
        out_file = run_dir / "callgrind.out"
        servers = start(build, hop, run_dir, out_file, env or {}, cache_sim)
        try:
            wait_ready(servers, path="/", timeout=180)
            wait_ready(servers[:1], path="/", timeout=60, headers=headers)
            url = servers[0].url
            asyncio.run(load(url, headers, warmup, connections))
            target = next(s for s in servers if s.name == f"{name}.{hop}")
            control(target.pid, "--instr=on")
            failed = asyncio.run(load(url, headers, requests, connections))
            control(target.pid, "--instr=off")
        finally:
            for server in servers:
                server.stop(timeout=60)
        deadline = time.monotonic() + 30
        while not out_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        events = totals(out_file)
    finally:
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return Count(
        suite, name, hop, requests, connections, events["Ir"], failed, events if cache_sim else {}
    )


def add_run_options(
    parser: argparse.ArgumentParser,
    *,
    builds: str,
    hops: str,
    kept: str,
    measured: str,
    warmup_note: str = "",
) -> None:
    """The options bench.callgrind and bench.calls share: what to start, load, keep."""
    parser.add_argument("--suite", choices=sorted(SUITES), default="chain")
    parser.add_argument("--build", default=builds, help=f"comma-separated builds ({builds})")
    parser.add_argument("--hop", default="", help=f"{hops} (chain: middle)")
    parser.add_argument("--requests", type=int, default=2000, help="counted requests (2000)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=300,
        help=f"requests before counting (300{warmup_note})",
    )
    parser.add_argument("--connections", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument(
        "--keep", action="store_true", help=f"keep each run's directory (logs, {kept})"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"an environment variable for the {measured} process only (e.g. ACCESS_LOG=false,"
        " to see what a part costs); repeatable",
    )


def env_of(items: Sequence[str]) -> dict[str, str]:
    """``--env`` values as a mapping."""
    return dict(item.split("=", 1) for item in items)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__)
    add_run_options(
        parser,
        builds="usvc",
        hops="comma-separated hops",
        kept="callgrind.out",
        measured="measured",
    )
    parser.add_argument("--repeat", type=int, default=1, help="measurements of each (1)")
    parser.add_argument(
        "--parts",
        action="store_true",
        help="each usvc build also with each part off (access log, spans, trace headers)",
    )
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="simulate the caches and branch predictor: misses and estimated cycles per request",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench.callgrind: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    hops = [h for h in args.hop.split(",") if h] or [DEFAULT_HOP[args.suite]]
    env = env_of(args.env)
    counts: list[Count] = []
    parts: list[tuple[Count, str, Count]] = []  # (full, part switched off, its count)
    for _ in range(args.repeat):
        for name in args.build.split(","):
            variants = {"": env}
            if args.parts and name.startswith("usvc"):
                variants.update({part: {**env, **off} for part, off in PARTS.items()})
            for hop in hops:
                full: Count | None = None
                for part, part_env in variants.items():
                    count = measure(
                        args.suite,
                        name,
                        hop,
                        args.requests,
                        args.warmup,
                        args.connections,
                        args.keep,
                        part_env,
                        args.cache_sim,
                    )
                    if full is None:
                        full = count
                        counts.append(count)
                    else:
                        parts.append((full, part, count))
                    line = {
                        **count.__dict__,
                        "env": part_env,
                        "per_request": round(count.per_request),
                    }
                    if part:
                        line["without"] = part
                    if args.cache_sim:
                        line["simulated"] = {k: round(v) for k, v in count.simulated().items()}
                    print(json.dumps(line), flush=True)
    print("\n| build | hop | requests | connections | instructions per request | failed |")
    print("|---|---|---:|---:|---:|---:|")
    for c in counts:
        print(
            f"| {c.build} | {c.hop} | {c.requests} | {c.connections} "
            f"| {c.per_request / 1000:.1f}k | {c.failed} |"
        )
    if parts:
        print(parts_table(parts))
    if args.cache_sim:
        print(simulated_table(counts))
    return 0


def parts_table(parts: Sequence[tuple[Count, str, Count]]) -> str:
    """Each part's cost: the build's instructions per request less those without it."""
    lines = [
        "",
        "What each part costs, per request: the build as configured less the build with the part"
        " switched off (in the measured process):",
        "",
        "| build | hop | switched off | environment | instructions per request | the part costs |",
        "|---|---|---|---|---:|---:|",
    ]
    for full, part, count in parts:
        off = " ".join(f"{k}={v}" for k, v in PARTS[part].items())
        lines.append(
            f"| {full.build} | {full.hop} | {part} | `{off}` | {count.per_request / 1000:.1f}k "
            f"| {(full.per_request - count.per_request) / 1000:.1f}k |"
        )
    return "\n".join(lines)


def simulated_table(counts: Sequence[Count]) -> str:
    """Per request, simulated: misses, mispredictions, estimated cycles, cycles per
    instruction; and each figure over the first row's (the first build is the base)."""
    rows = [(c, c.simulated()) for c in counts]
    base = rows[0][1]
    lines = [
        "",
        "Simulated per request (callgrind --cache-sim --branch-sim; KCachegrind's estimate"
        " CEst = Ir + 10 Bm + 10 L1m + 100 LLm), and over the first row:",
        "",
        "| build | hop | Ir | L1 misses | LL misses | mispredicted | CEst | CEst/Ir "
        "| Ir ÷ first | CEst ÷ first |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, sim in rows:
        lines.append(
            f"| {c.build} | {c.hop} | {sim['Ir'] / 1000:.1f}k | {sim['L1m']:.0f} "
            f"| {sim['LLm']:.0f} | {sim['Bm']:.0f} | {sim['CEst'] / 1000:.1f}k "
            f"| {sim['CEst'] / sim['Ir']:.2f} | {sim['Ir'] / base['Ir']:.2f} "
            f"| {sim['CEst'] / base['CEst']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
