"""Where the time goes: py-spy on one server process while wrk loads its build.

``python -m bench --profile usvc-100`` starts that build alone, warms it up,
records the server with py-spy (raw collapsed stacks, plus a speedscope file
to open at https://www.speedscope.app) and prints: the share of samples by
area (aiohttp, the OpenTelemetry SDK, usvc, logging, ...), the functions with
the most self time, and the functions with the most inclusive time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from . import wrk
from .builds import SUITES, Build
from .runner import Options

# A frame as py-spy prints it: "function (path/to/file.py:123)".
_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# First match wins: the frame's file path says which area a sample belongs to.
AREAS: tuple[tuple[str, str], ...] = (
    ("/usvc/", "usvc"),
    ("/services/", "services (demo apps)"),
    ("/bench/", "bench (route handler, server glue)"),
    ("opentelemetry/instrumentation", "otel instrumentation"),
    ("opentelemetry/sdk", "otel sdk"),
    ("opentelemetry/util", "otel util/semconv"),
    ("opentelemetry/semconv", "otel util/semconv"),
    ("opentelemetry/", "otel api (context, propagators)"),
    ("prometheus_client/", "prometheus_client"),
    ("wrapt/", "wrapt"),
    ("aiohttp/", "aiohttp"),
    ("multidict/", "multidict/yarl"),
    ("yarl/", "multidict/yarl"),
    ("uvloop/", "event loop (uvloop)"),
    ("asyncio/", "event loop (asyncio)"),
    ("logging/", "logging"),
    ("json/", "json"),
    ("contextvars", "contextvars"),
    ("threading.py", "threads"),
    ("queue.py", "threads"),
)


def area_of(path: str) -> str:
    for needle, area in AREAS:
        if needle in path:
            return area
    return "native/other" if not path.endswith(".py") else "python stdlib/other"


def parse_frame(frame: str) -> tuple[str, str]:
    """(function label, file path) of one py-spy frame."""
    match = _FRAME_RE.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    path = match.group("file")
    short = "/".join(path.split("/")[-2:])
    return f"{match.group('func')} ({short})", path


def parse_raw(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy's raw format: ``frame;frame;...;leaf count`` per distinct stack."""
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _is_main_thread(frames: list[str]) -> bool:
    # With --threads the first frame is "thread (0x...)"; the main thread runs the
    # loop from the module's "<module>" frame, worker threads from "_bootstrap".
    return not any("_bootstrap" in f for f in frames[:3])


def children_of(stacks: list[tuple[list[str], int]], focus: str) -> tuple[int, Counter[str]]:
    """Samples under the outermost function whose name contains ``focus``, by direct child."""
    under = 0
    children: Counter[str] = Counter()
    for frames, count in stacks:
        labels = [parse_frame(f)[0] for f in frames]
        for i, label in enumerate(labels):
            if focus in label.split(" (", 1)[0]:
                under += count
                children[labels[i + 1] if i + 1 < len(labels) else "(self)"] += count
                break
    return under, children


def summarize(stacks: list[tuple[list[str], int]], top: int = 15, focus: str = "") -> str:
    main = [(f, n) for f, n in stacks if _is_main_thread(f)]
    total = sum(n for _, n in stacks)
    main_total = sum(n for _, n in main) or 1
    by_area: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in main:
        parsed = [parse_frame(f) for f in frames if not f.startswith(("thread ", "process "))]
        if not parsed:
            continue
        # Attribute the sample to the innermost frame that is not the loop's own
        # plumbing; native leaves (socket, epoll) count under their Python caller.
        leaf_label, leaf_path = parsed[-1]
        by_area[area_of(leaf_path)] += count
        self_time[leaf_label] += count
        for label in {label for label, _ in parsed}:
            inclusive[label] += count
    lines = [
        f"samples: {total} in all, {main_total} on the main thread "
        f"({100 * (total - main_total) / max(total, 1):.1f} % elsewhere: exporter threads etc.)",
        "",
        "main thread, self time by area:",
    ]
    for area, count in by_area.most_common():
        lines.append(f"  {100 * count / main_total:5.1f} %  {area}")
    lines += ["", f"main thread, top {top} functions by self time:"]
    for label, count in self_time.most_common(top):
        lines.append(f"  {100 * count / main_total:5.1f} %  {label}")
    lines += ["", f"main thread, top {top} functions by inclusive time (excluding the loop):"]
    shown = 0
    for label, count in inclusive.most_common():
        if count >= 0.97 * main_total:
            continue  # <module>, run, run_forever...: everything is under them
        lines.append(f"  {100 * count / main_total:5.1f} %  {label}")
        shown += 1
        if shown == top:
            break
    if focus:
        under, children = children_of(main, focus)
        share = 100 * under / main_total
        lines += ["", f"main thread, under the first function matching {focus!r} ({share:.1f} %):"]
        for label, count in children.most_common(top):
            lines.append(f"  {100 * count / main_total:5.1f} %  {label}")
    return "\n".join(lines)


def py_spy() -> str:
    # The venv's bin directory need not be on PATH (./dev runs .venv/bin/python).
    beside = Path(sys.executable).parent / "py-spy"
    path = str(beside) if beside.is_file() else shutil.which("py-spy")
    if path is None:
        raise SystemExit("bench: py-spy is not installed (pip install py-spy)")
    return path


def record(pid: int, seconds: float, out: Path, fmt: str, native: bool) -> None:
    argv = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "250",
        "--format",
        fmt,
        "--output",
        str(out),
        "--threads",
        "--full-filenames",
        "--idle",
    ]
    if native:
        argv.append("--native")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench: py-spy failed: {done.stderr.strip()}")


def profile(
    suite: str,
    name: str,
    hop: str,
    options: Options,
    native: bool,
    out: str | None,
    focus: str = "",
) -> str:
    builds: dict[str, Build] = {b.name: b for b in SUITES[suite]()}
    if name not in builds:
        raise SystemExit(f"bench: no build {name!r} in suite {suite}; have {', '.join(builds)}")
    build = builds[name]
    run_dir = Path(tempfile.mkdtemp(prefix="usvc-bench-profile-"))
    seconds = options.duration
    try:
        build.start(run_dir, options.loop)
        build.wait()
        wrk.run(build.url, options.warmup, options.connections, headers=build.headers)
        pid = build.pid_of("server" if suite == "single" else hop)
        load_result: list[wrk.WrkResult] = []
        # wrk runs a second longer on each side so the profile sees only steady load.
        load = threading.Thread(
            target=lambda: load_result.append(
                wrk.run(build.url, seconds + 2, options.connections, headers=build.headers)
            )
        )
        load.start()
        raw = run_dir / "profile.txt"
        speedscope = Path(out) if out else run_dir / "profile.speedscope.json"
        threading.Event().wait(1.0)
        record(pid, seconds, raw, "raw", native)
        load.join()
        # A second pass for the picture: the same load, written as speedscope.
        if out:
            load = threading.Thread(
                target=lambda: wrk.run(
                    build.url, seconds + 2, options.connections, headers=build.headers
                )
            )
            load.start()
            threading.Event().wait(1.0)
            record(pid, seconds, speedscope, "speedscope", native)
            load.join()
        stacks = parse_raw(raw.read_text().splitlines())
    finally:
        build.stop()
    head = f"profile of {suite}/{name}" + (f" hop {hop}" if suite == "chain" else "")
    if load_result:
        r = load_result[0]
        head += f" under wrk -c{options.connections}: {r.rps:.0f} req/s while sampled at 250 Hz"
    tail = f"\nspeedscope file: {speedscope}" if out else ""
    if not out:
        shutil.rmtree(run_dir, ignore_errors=True)
    return f"{head}\n{summarize(stacks, focus=focus)}{tail}"
