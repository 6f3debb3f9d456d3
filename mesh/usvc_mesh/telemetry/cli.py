"""``usvc trace``: print a trace the local collector received, as a waterfall."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .waterfall import TraceNotFound, last_trace_id, render, spans_files, trace


def cmd_trace(args: argparse.Namespace, run_dir_of: Callable[[Path], Path]) -> int:
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_of(Path(args.root).resolve())
    files = [Path(args.file)] if args.file else spans_files(run_dir / "telemetry")
    if not files:
        print(
            f"usvc trace: no spans files in {run_dir / 'telemetry'}; "
            "start the mesh with `usvc up --telemetry`",
            file=sys.stderr,
        )
        return 1
    try:
        trace_id = last_trace_id(files) if args.last else args.trace_id
        print(render(trace(files, trace_id), width=args.width))
    except TraceNotFound as exc:
        print(f"usvc trace: {exc}", file=sys.stderr)
        return 1
    return 0


def add_trace_command(sub: Any, run_dir_of: Callable[[Path], Path]) -> None:
    parser = sub.add_parser("trace", help="print a trace of `usvc up --telemetry` as a waterfall")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("trace_id", nargs="?", help="the trace id (hex, as in the access log)")
    which.add_argument("--last", action="store_true", help="the trace that began last")
    parser.add_argument("--root", default=".", help="as for `usvc up` (default .)")
    parser.add_argument("--run-dir", default=None, help="as for `usvc up` (default .run/mesh)")
    parser.add_argument("--file", default=None, help="read this spans file instead")
    parser.add_argument("--width", type=int, default=40, help="width of the bars")
    parser.set_defaults(func=lambda args: cmd_trace(args, run_dir_of))
