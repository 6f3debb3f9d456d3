"""``python -m load``: one headless Locust run, its reports, and the service-level gate.

Exit status: 0 when every service level held, 1 when one was breached, 2 when
the run could not be made (bad options or slo.yaml, no Prometheus, Locust
failed to start).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from usvc_mesh.manifests import MeshError
from usvc_mesh.procs import free_port

from .prometheus import Prometheus, PrometheusError, scrape_interval, wait_scraped
from .rss import RssSampler, rss_rows, rss_table
from .scenarios import SCENARIOS
from .slo import (
    Measured,
    Slo,
    SloError,
    checks_table,
    judge,
    load_slo,
    measure_gateway,
    measure_hops,
    measured_table,
    read_locust,
)
from .targets import MeshState, StateError

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DEFAULT_URL = "http://127.0.0.1:8080"
SOAK_SECONDS = 300.0
SOAK_TOLERANCE = 0.10
PROGRESS_EVERY = 30.0
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?")


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``1h30m`` or ``1m30s``."""
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    elif value and match is not None and any(match.groups()):
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    else:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 60s, 10m, 1h")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be more than 0")
    return seconds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m load",
        description="Locust against the gateway, gated on service levels read from Prometheus.",
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="stress")
    p.add_argument(
        "--duration", type=duration, default=None, help="how long (default 600s; --soak: 300s)"
    )
    p.add_argument(
        "--url",
        default=None,
        help=f"the gateway (default: the local mesh's, else {DEFAULT_URL}); "
        "a compose or cluster URL works too",
    )
    p.add_argument(
        "--rate", type=float, default=50.0, help="users arriving per second (default 50)"
    )
    p.add_argument(
        "--pace",
        type=float,
        default=1.0,
        help="seconds between one user's requests (default 1): rate x pace users in all",
    )
    p.add_argument(
        "--prometheus",
        default="auto",
        help="URL of a Prometheus scraping the services; 'auto' (default): start one that "
        "scrapes the local mesh; 'none': gate on Locust's counts only",
    )
    p.add_argument(
        "--mesh-run-dir",
        type=Path,
        default=ROOT / ".run" / "mesh",
        help="where `usvc up` keeps mesh.json (default .run/mesh)",
    )
    p.add_argument("--slo", type=Path, default=Path(__file__).with_name("slo.yaml"))
    p.add_argument(
        "--out", type=Path, default=ROOT / ".run" / "load", help="parent of the run directory"
    )
    p.add_argument(
        "--soak",
        action="store_true",
        help="5 minutes (unless --duration), gated on every process's RSS staying within "
        f"{SOAK_TOLERANCE:.0%} of its size after the warm-up",
    )
    p.add_argument("--warm-up", type=duration, default=60.0, help="soak warm-up (default 60s)")
    p.add_argument(
        "--settle",
        type=duration,
        default=None,
        help="wait after the run for the last scrape (default: twice the Prometheus's "
        "scrape interval and 1s; 35s when it cannot be read)",
    )
    return p


def run_dir(parent: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = parent / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = parent / f"{stamp}-{suffix}"
    path.mkdir(parents=True)
    return path


def locust_command(args: argparse.Namespace, url: str, seconds: float, out: Path) -> list[str]:
    users = max(1, math.ceil(args.rate * args.pace))
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host",
        url,
        "--users",
        str(users),
        "--spawn-rate",
        f"{args.rate:g}",
        "--run-time",
        f"{math.ceil(seconds)}s",
        "--stop-timeout",
        "5",
        "--pace",
        f"{args.pace:g}",
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--json-file",
        str(out / "locust"),
        "--html",
        str(out / "report.html"),
        "--exit-code-on-error",
        "0",  # the gate below decides
        "--loglevel",
        "WARNING",
        *SCENARIOS[args.scenario],
    ]


def _progress(history: Path, started: float) -> str | None:
    """A line from the last aggregated row of Locust's stats history."""
    try:
        with history.open(newline="") as f:
            last = None
            for row in csv.DictReader(f):
                if row.get("Name") == "Aggregated":
                    last = row
    except OSError:
        return None
    if last is None:
        return None
    return (
        f"  {time.monotonic() - started:5.0f}s  users {last['User Count']}  "
        f"requests {last['Total Request Count']}  failures {last['Total Failure Count']}  "
        f"now {float(last['Requests/s']):.1f} req/s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    seconds = args.duration or (SOAK_SECONDS if args.soak else 600.0)
    args.seconds = seconds
    if args.soak and args.warm_up * 2 > seconds:
        print("load: --soak needs a duration of at least twice --warm-up", file=sys.stderr)
        return 2
    try:
        slo = load_slo(args.slo)
    except SloError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    try:
        state: MeshState | None = MeshState.read(args.mesh_run_dir)
    except StateError:
        state = None
    url = args.url or (state.gateway if state else DEFAULT_URL)
    local = state is not None and url.rstrip("/") == state.gateway.rstrip("/")
    if args.prometheus == "auto" and state is None and args.url is None:
        print(
            f"load: no local mesh runs from {args.mesh_run_dir}: start one with `./dev up`, "
            "or pass --url (and --prometheus URL, or --prometheus none)",
            file=sys.stderr,
        )
        return 2
    if args.prometheus == "auto" and not local:
        print(
            f"load: {url} is not the local mesh of {args.mesh_run_dir}: pass --prometheus URL "
            "(a Prometheus scraping those services) or --prometheus none",
            file=sys.stderr,
        )
        return 2
    if args.soak and not local:
        print(
            f"load: --soak watches the processes of the local mesh; {url} is not the one "
            f"of {args.mesh_run_dir}",
            file=sys.stderr,
        )
        return 2
    out = run_dir(args.out)
    print(f"load: {args.scenario} at {args.rate:g} users/s for {seconds:g}s against {url}")
    print(f"load: reports in {out}")
    prometheus: Prometheus | None = None
    sampler: RssSampler | None = None
    try:
        if args.prometheus == "auto":
            assert state is not None
            prometheus = Prometheus(state.scrape_config(), out / "prometheus", free_port())
            prometheus.start()
            wait_scraped(prometheus.url, state.target_count())
            print(f"load: prometheus {prometheus.url} scrapes {state.target_count()} targets")
        prometheus_url = prometheus.url if prometheus else None
        if args.prometheus not in ("auto", "none"):
            prometheus_url = args.prometheus
        if state is not None and local:
            processes = state.processes()
            if processes:
                sampler = RssSampler(processes, out / "rss.csv")
                sampler.mark("before")
                sampler.start()
        # The window the gate measures starts here: our Prometheus has its
        # first samples from before the load; another one has them anyway.
        window_start = time.time()
        status = run_locust(args, url, seconds, out, sampler)
        if status != 0:
            return status
        if sampler is not None:
            sampler.mark("end")
            sampler.stop()
        return gate(args, slo, out, prometheus_url, window_start, sampler)
    except (PrometheusError, MeshError) as exc:  # MeshError: Prometheus did not start
        print(f"load: {exc}", file=sys.stderr)
        return 2
    finally:
        if sampler is not None:
            sampler.stop()
        if prometheus is not None:
            prometheus.stop()


def run_locust(
    args: argparse.Namespace, url: str, seconds: float, out: Path, sampler: RssSampler | None
) -> int:
    command = locust_command(args, url, seconds, out)
    (out / "command.txt").write_text(" ".join(command) + "\n")
    started = time.monotonic()
    with (out / "locust.log").open("w") as log:
        locust = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    next_progress = started + PROGRESS_EVERY
    warm_at = started + args.warm_up
    try:
        while locust.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            if sampler is not None and "warm" not in sampler.marks and now >= warm_at:
                sampler.mark("warm")
            if now >= next_progress:
                next_progress += PROGRESS_EVERY
                line = _progress(out / "locust_stats_history.csv", started)
                if line:
                    print(line, flush=True)
    finally:
        if locust.poll() is None:
            locust.terminate()
            locust.wait(15)
    if locust.returncode != 0 or not (out / "locust.json").exists():
        tail = "\n    ".join((out / "locust.log").read_text().splitlines()[-20:])
        print(f"load: locust exited with {locust.returncode}:\n    {tail}", file=sys.stderr)
        return 2
    return 0


def gate(
    args: argparse.Namespace,
    slo: Slo,
    out: Path,
    prometheus_url: str | None,
    window_start: float,
    sampler: RssSampler | None,
) -> int:
    locust_rows = read_locust(out / "locust.json")
    total = next((r for r in locust_rows if r.name == "locust total"), None)
    gateway: Measured | None = None
    hops: list[Measured] | None = None
    if prometheus_url is not None:
        settle = args.settle
        if settle is None:
            interval = scrape_interval(prometheus_url)
            settle = 35.0 if interval is None else 2 * interval + 1
        time.sleep(settle)
        at = time.time()
        window_ms = round((at - window_start) * 1000)
        hops = measure_hops(prometheus_url, window_ms, at)
        gateway = measure_gateway(prometheus_url, slo.gateway_queries, window_ms, at)
    checks = judge(slo, total, gateway, hops)
    lines = [
        f"scenario {args.scenario}: {args.seconds:g}s, {args.rate:g} users/s, "
        f"pace {args.pace:g}s; window {time.time() - window_start:.0f}s",
        f"measured ({'Prometheus ' + prometheus_url if prometheus_url else 'Locust only'}):",
        *measured_table([*locust_rows, *([gateway] if gateway else []), *(hops or [])]),
        "",
        *checks_table(checks),
    ]
    passed = all(check.passed for check in checks)
    if sampler is not None:
        rss_lines, rss_ok = rss_table(
            rss_rows(sampler.marks), SOAK_TOLERANCE if args.soak else None
        )
        lines += ["", f"RSS (warm = after {args.warm_up:g}s):", *rss_lines]
        passed = passed and rss_ok
    lines += ["", "SLO gate: PASS" if passed else "SLO gate: FAIL"]
    report = "\n".join(lines)
    print(report)
    (out / "slo.txt").write_text(report + "\n")
    (out / "slo.json").write_text(
        json.dumps(
            {
                "passed": passed,
                "checks": [asdict(c) for c in checks],
                "measured": [
                    {**asdict(r), "quantiles": {str(q): v for q, v in r.quantiles.items()}}
                    for r in [*locust_rows, *([gateway] if gateway else []), *(hops or [])]
                ],
                "rss_kib": sampler.marks if sampler else None,
            },
            indent=1,
        )
    )
    return 0 if passed else 1
