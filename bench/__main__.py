"""``python -m bench`` (``./dev bench``): the benchmarks; see bench/README.md."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import report, scale
from .builds import SUITES, Pending
from .procs import StartError
from .runner import Options, SuiteResult, finish_run, results, run_suite, start_run
from .wrk import WrkError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, latency and CPU per request of usvc against bare aiohttp "
        "and OpenTelemetry's auto-instrumentation, under wrk.",
    )
    parser.add_argument(
        "--suite",
        choices=["single", "chain", "all", "envoy", "scale"],
        default="all",
        help="all = single and chain; envoy: what each part of the mesh's Envoy costs "
        "(bench/envoy_parts.py); scale (meshes of --sizes services) runs alone",
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(n) for n in scale.SIZES),
        help="with --suite scale: mesh sizes in services (10,100,1000)",
    )
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per build (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, median taken (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2 s runs, 1 s warm-up, 1 round"
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--only", default="", help="comma-separated build names to run")
    parser.add_argument(
        "--results",
        "--json",
        metavar="FILE",
        help="where to write the run's results (JSON, and its tables as FILE with .md); "
        "default bench/results/latest.json for a full run (--suite all, no --only or --quick), "
        "bench/results/partial.json otherwise",
    )
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="run nothing: fill README.md's and bench/README.md's marked tables (and rewrite "
        "the .md) from the results file (bench/results/latest.json unless --results); "
        "the same as `python -m bench readme`",
    )
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
    # The scale suite's wrk runs are shorter: it compares two Envoys, not builds.
    duration, warmup = (5.0, 2.0) if args.suite == "scale" else (10.0, 3.0)
    return Options(
        duration=args.duration if args.duration is not None else (2.0 if quick else duration),
        warmup=args.warmup if args.warmup is not None else (1.0 if quick else warmup),
        connections=args.connections,
        rounds=args.rounds if args.rounds is not None else (1 if quick else 3),
        loop=args.loop,
        only=tuple(name for name in args.only.split(",") if name),
        keep=args.keep,
        wait_idle=args.wait_idle,
    )


def results_path(args: argparse.Namespace) -> Path:
    if args.results:
        return Path(args.results)
    full = args.suite == "all" and not args.only and not args.quick
    return report.LATEST if full else report.RESULTS_DIR / "partial.json"


def write_results(path: Path, data: dict[str, Any]) -> Path:
    """The JSON and, beside it, its tables as Markdown; returns the Markdown's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    md = path.with_suffix(".md")
    md.write_text(report.markdown(data))
    return md


def update_readme(path: Path, scale_path: Path | None = scale.SCALE_JSON) -> int:
    """Re-render ``path`` (a suites' or a scale results file) and fill the READMEs from it.

    From the default latest.json, bench/results/scale.json (if there) fills the scale section.
    """
    changed: set[Path] = set()
    try:
        for source in [path, *([scale_path] if scale_path and scale_path.exists() else [])]:
            data = json.loads(source.read_text())
            if "scale" in data:  # the scale suite's own file
                md = scale.write_results(source, data)
                changed.update(scale.update_readmes(data))
            else:
                md = write_results(source, data)  # re-rendered: the .md follows the renderer
                changed.update(report.update_readmes(data))
            print(f"bench: {md} rewritten from {source}")
    except (OSError, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    for readme in report.READMES:
        print(f"bench: {readme}: {'updated' if readme in changed else 'already up to date'}")
    return 0


def envoy_parts_argv(args: argparse.Namespace) -> list[str]:
    """``--suite envoy``'s options for bench/envoy_parts.py (its own shorter defaults)."""
    argv = []
    for flag, value in (
        ("--duration", args.duration),
        ("--warmup", args.warmup),
        ("--rounds", args.rounds),
    ):
        if value is not None:
            argv += [flag, f"{value:g}"]
    if args.connections != 32:
        argv += ["--connections", str(args.connections)]
    if args.only:
        argv += ["--only", args.only]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["readme"]:
        argv = ["--update-readme", *argv[1:]]
    args = build_parser().parse_args(argv)
    if args.update_readme:
        if args.results:
            return update_readme(Path(args.results), None)
        return update_readme(report.LATEST)
    if args.suite == "envoy":
        from . import envoy_parts

        return envoy_parts.main(envoy_parts_argv(args))
    options = options_from(args)
    if args.suite == "scale":
        if args.profile:
            print("bench: --profile profiles a build of --suite single or chain", file=sys.stderr)
            return 2
        sizes = [int(n) for n in args.sizes.split(",") if n]
        command = shlex.join(["python", "-m", "bench", *argv])
        return scale.main(options, sizes, command, Path(args.results) if args.results else None)
    run = start_run(options, shlex.join(["python", "-m", "bench", *argv]))
    done: list[SuiteResult] = []
    try:
        if args.profile:
            from .profile import profile

            suite = "single" if args.suite == "all" else args.suite
            print(
                profile(suite, args.profile, args.hop, options, args.native, args.out, args.focus)
            )
            return 0
        suites = list(SUITES) if args.suite == "all" else [args.suite]
        for suite in suites:
            done.append(run_suite(suite, options))
            print(report.render_suite(results(run, done)["suites"][-1], run) + "\n", flush=True)
    except (WrkError, StartError, Pending) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finish_run(run)
    data = results(run, done)
    print(report.render_run(run, data["suites"]) + "\n")
    path = results_path(args)
    md = write_results(path, data)
    print(f"bench: results in {path} and {md}; `python -m bench readme` puts them in the READMEs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
