"""``python -m bench`` (``./dev bench``): the benchmarks; see bench/README.md."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .builds import SUITES, Pending
from .procs import StartError
from .runner import Options, run_suite, table
from .wrk import WrkError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, latency and CPU per request of usvc against bare aiohttp "
        "and OpenTelemetry's auto-instrumentation, under wrk.",
    )
    parser.add_argument("--suite", choices=["single", "chain", "all"], default="all")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per build (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, median taken (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2 s runs, 1 s warm-up, 1 round"
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--only", default="", help="comma-separated build names to run")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the server logs")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on a shared machine: wait up to SECONDS for other load to settle before each "
        "run, and repeat a run it disturbed (twice at most)",
    )
    parser.add_argument(
        "--profile",
        metavar="BUILD",
        help="instead of the table: profile BUILD of --suite with py-spy under wrk",
    )
    parser.add_argument(
        "--hop",
        default="middle",
        help="with --profile on a chain build: which process (middle; for usvc+envoy a "
        "workload such as middle-dev, or envoy)",
    )
    parser.add_argument("--native", action="store_true", help="with --profile: native frames")
    parser.add_argument("--out", help="with --profile: where to write the speedscope file")
    parser.add_argument(
        "--focus",
        default="_middleware",
        help="with --profile: break down the time under the first frame matching this",
    )
    return parser


def options_from(args: argparse.Namespace) -> Options:
    quick = args.quick
    return Options(
        duration=args.duration if args.duration is not None else (2.0 if quick else 10.0),
        warmup=args.warmup if args.warmup is not None else (1.0 if quick else 3.0),
        connections=args.connections,
        rounds=args.rounds if args.rounds is not None else (1 if quick else 3),
        loop=args.loop,
        only=tuple(name for name in args.only.split(",") if name),
        keep=args.keep,
        wait_idle=args.wait_idle,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from(args)
    try:
        if args.profile:
            from .profile import profile

            suite = "single" if args.suite == "all" else args.suite
            print(
                profile(suite, args.profile, args.hop, options, args.native, args.out, args.focus)
            )
            return 0
        suites = list(SUITES) if args.suite == "all" else [args.suite]
        results = []
        for suite in suites:
            result = run_suite(suite, options)
            results.append(result)
            print(table(result) + "\n", flush=True)
    except (WrkError, StartError, Pending) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([r.as_json() for r in results], handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
