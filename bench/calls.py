"""Python calls per request of one server process, by function, counted by cProfile.

``python -m bench.calls --suite chain --build bare,usvc --hop middle`` starts each build's
processes as the benchmark does (bench/builds.py, through ``bench.callgrind.start_wrapped``),
the chosen hop as ``python -m bench._profiled KIND``: ``bench.server`` under Python's
deterministic profiler, off until SIGUSR1. It sends ``--warmup`` requests over
``--connections`` keep-alive connections, switches the profiler on, sends exactly
``--requests`` requests over the same connections (so none is opened or closed while it
counts), switches it off (SIGUSR2, which writes the statistics) and divides each function's
calls by the requests. Each build's result is one line of JSON on stdout; then a table of the
functions whose calls per request differ most from the first build's, and how many functions
differ at all.

What it counts is calls, not time: for a given build and commit the same requests make the
same calls whatever else the machine runs, so two builds or two commits compare on a shared,
busy machine where req/s does not. Nearly exactly, not quite: a few counts depend on timing,
and they are the only ones that differ from run to run. aiohttp's per-connection loop
(``web_protocol.py:start``) and the future that wakes it count a resumption only when the
next request was not there yet, and caches keyed on the clock's second (the ``Date`` header,
usvc's access-line timestamp) or flushed by a timer are called as the clock says. Two runs of
the chain's middle hop, 2,000 requests at 8 connections, differ by about 0.1 calls per request
in all (bare 305.5-305.6, usvc 440.1-440.3); at ``--connections 1`` by 0.01 or less. Time
under cProfile is distorted (every call pays the profiler's own cost, so many small calls look
expensive), so the tool prints no times: ``./dev bench --profile`` (py-spy) says where time
goes, ``python -m bench.callgrind`` what the instructions are.

A call is what cProfile counts as one: each time a function's frame starts running, so a
coroutine or generator counts once when it starts and once more every time it resumes after
a suspension (an ``await`` that waited). Functions are named ``file:line:name`` by the file's
base name, C functions ``~:name`` (``~:builtins.len``, ``~:dict.get``); two functions of the
same name in files of the same base name and line are counted together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ._profiled import OUT_ENV, on_ack
from .builds import _header_dict
from .callgrind import DEFAULT_HOP, add_run_options, env_of, find_build, load, start_wrapped
from .procs import Server, wait_ready

PROG = "bench.calls"
# pstats' key of a function: (file, first line, name); C functions have file "~", line 0.
Key = tuple[str, int, str]
# What pstats.Stats.stats holds for each key: (primitive calls, calls, own time, cumulative
# time, callers); only the calls are read.
Entry = tuple[Any, ...]


def label(key: Key) -> str:
    """``file:line:name`` by the file's base name, or ``~:name`` for a C function."""
    file, line, name = key
    if file == "~":
        return f"~:{_c_name(name)}"
    return f"{os.path.basename(file)}:{line}:{name}"


_BUILTIN = re.compile(r"<built-in method (.+)>|<built-in function (.+)>")
_METHOD = re.compile(r"<method '(.+)' of '(.+)' objects>")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _c_name(name: str) -> str:
    """cProfile's ``<built-in method builtins.len>`` as ``builtins.len``, ``<method 'get' of
    'dict' objects>`` as ``dict.get``; any other form as it is, but for an object's address
    (``__new__ of type object at 0x7f...``: it differs from one process to the next)."""
    name = _ADDRESS.sub("", name)
    if found := _BUILTIN.fullmatch(name):
        return found[1] or found[2]
    if found := _METHOD.fullmatch(name):
        return f"{found[2]}.{found[1]}"
    return name


def calls_by_function(stats: Mapping[Key, Entry]) -> dict[str, int]:
    """Each function's calls (recursive ones included) from pstats' ``stats``, by label."""
    calls: dict[str, int] = {}
    for key, entry in stats.items():
        name = label(key)
        calls[name] = calls.get(name, 0) + int(entry[1])
    return calls


@dataclass
class Profile:
    suite: str
    build: str
    hop: str
    requests: int
    connections: int
    failed: int
    calls: dict[str, int] = field(default_factory=dict)  # in all, by function label

    @property
    def per_request(self) -> float:
        return sum(self.calls.values()) / self.requests

    def of(self, function: str) -> float:
        """``function``'s calls per request (0 if it was not called)."""
        return self.calls.get(function, 0) / self.requests

    def line(self) -> dict[str, Any]:
        """The JSON line: the run, calls per request in all and by function (most first)."""
        order = sorted(self.calls, key=lambda f: (-self.calls[f], f))
        return {
            "suite": self.suite,
            "build": self.build,
            "hop": self.hop,
            "requests": self.requests,
            "connections": self.connections,
            "failed": self.failed,
            "calls_per_request": round(self.per_request, 3),
            "functions": {f: round(self.of(f), 4) for f in order},
        }


def differences(base: Profile, other: Profile) -> dict[str, float]:
    """Calls per request of ``other`` less ``base``'s, for every function whose calls differ."""
    functions = set(base.calls) | set(other.calls)
    return {f: d for f in functions if (d := other.of(f) - base.of(f)) != 0}


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def table(profiles: Sequence[Profile], top: int = 40) -> str:
    """Markdown: calls per request by function for each build and each later build's
    difference to the first, the ``top`` functions whose difference is largest (in absolute
    value, the largest of the later builds'); then per later build how many functions differ
    and the largest difference of those not shown. With one build: its ``top`` most called."""
    base, later = profiles[0], list(profiles[1:])
    columns = [p.build for p in profiles] + [f"{p.build} - {base.build}" for p in later]
    lines = [
        f"Calls per request, {base.hop} hop ({base.requests} requests each, cProfile):",
        "",
        "| function | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    diffs = [differences(base, p) for p in later]
    if later:
        weight = {f: max(abs(d.get(f, 0.0)) for d in diffs) for f in set().union(*diffs)}
    else:
        weight = {f: base.of(f) for f in base.calls}
    order = sorted(weight, key=lambda f: (-weight[f], f))
    shown, rest = order[:top], order[top:]
    for f in shown:
        cells = [f"{p.of(f):.2f}" for p in profiles] + [_signed(d.get(f, 0.0)) for d in diffs]
        lines.append(f"| `{f}` | " + " | ".join(cells) + " |")
    lines.append("")
    if not later:
        largest = max((weight[f] for f in rest), default=0.0)
        lines.append(
            f"{len(order)} functions called, {base.per_request:.2f} calls per request in all; "
            f"none of the {len(rest)} not shown above {largest:.2f} calls per request."
        )
    for p, d in zip(later, diffs, strict=True):
        largest = max((abs(d.get(f, 0.0)) for f in rest), default=0.0)
        total = p.per_request - base.per_request
        lines.append(
            f"{p.build} - {base.build}: {len(d)} functions account for the difference "
            f"({_signed(total)} calls per request in all, {p.per_request:.2f} against "
            f"{base.per_request:.2f}); none of those not shown above {largest:.2f} calls "
            "per request."
        )
    return "\n".join(lines)


def profiled(argv: Sequence[str]) -> list[str]:
    """``python -m bench.server KIND`` as ``python -m bench._profiled KIND``."""
    python, flag, module, *rest = argv
    assert (flag, module) == ("-m", "bench.server"), argv
    return [python, "-m", "bench._profiled", *rest]


def _switch(server: Server, signum: int, ack: Path, timeout: float = 30) -> None:
    """Send ``signum`` to ``server`` and wait for the file that acknowledges it."""
    os.kill(server.pid, signum)
    deadline = time.monotonic() + timeout
    while not ack.exists():
        if not server.alive():
            raise RuntimeError(f"{server.name} exited; its last log lines:\n{server.last_lines()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name}: no {ack.name} {timeout:g}s after the signal")
        time.sleep(0.01)


async def _counted(
    url: str,
    headers: dict[str, str],
    target: Server,
    out: Path,
    requests: int,
    warmup: int,
    connections: int,
) -> int:
    """Warm up, profile exactly ``requests`` requests on the same connections; failures."""
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await load(url, headers, max(warmup, connections), connections, session)
        await asyncio.to_thread(_switch, target, signal.SIGUSR1, on_ack(out))
        failed = await load(url, headers, requests, connections, session)
        await asyncio.to_thread(_switch, target, signal.SIGUSR2, out)
    return failed


def measure(
    suite: str,
    name: str,
    hop: str,
    requests: int,
    warmup: int,
    connections: int,
    keep: bool = False,
    env: Mapping[str, str] | None = None,
) -> Profile:
    """Start ``name``'s processes, ``hop`` profiled, and count its calls over ``requests``."""
    build = find_build(suite, name, PROG)
    headers = _header_dict(build.headers)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-calls-"))
    try:
        out = run_dir / "profile.pstats"
        hop_env = {**(env or {}), OUT_ENV: str(out)}
        servers = start_wrapped(build, hop, run_dir, hop_env, profiled, PROG)
        try:
            wait_ready(servers, path="/", timeout=60)
            wait_ready(servers[:1], path="/", timeout=60, headers=headers)
            target = next(s for s in servers if s.name == f"{name}.{hop}")
            failed = asyncio.run(
                _counted(servers[0].url, headers, target, out, requests, warmup, connections)
            )
        finally:
            for server in servers:
                server.stop(timeout=30)
        calls = calls_by_function(pstats.Stats(str(out)).stats)  # type: ignore[attr-defined]
    finally:
        if keep:
            print(f"{PROG}: kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return Profile(suite, name, hop, requests, connections, failed, calls)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.calls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(
        parser,
        builds="bare,usvc",
        hops="the profiled hop",
        kept="profile.pstats",
        measured="profiled",
        warmup_note=", at least one per connection",
    )
    parser.add_argument("--top", type=int, default=40, help="functions in the table (40)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    hop = args.hop or DEFAULT_HOP[args.suite]
    env = env_of(args.env)
    profiles: list[Profile] = []
    for name in args.build.split(","):
        profile = measure(
            args.suite,
            name,
            hop,
            args.requests,
            args.warmup,
            args.connections,
            args.keep,
            env,
        )
        profiles.append(profile)
        print(json.dumps({**profile.line(), "env": env}), flush=True)
    print()
    print(table(profiles, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
