"""Checks of a results file against its own tables, computed here independently of bench/report.

The fast tests run them on the committed bench/results/latest.*, the smoke test on a fresh run.
Nothing here compares a number with a threshold of speed: only whether the tables say what the
raw figures of the same run say.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.report import Table, tables

# Issue 13's targets, as this test reads them: (suite, target row, build a, build b, goal).
RATIO_TARGETS = [
    ("single", "usvc-100 req/s ÷ otel", "usvc-100", "otel", 2.0),
    ("single", "usvc-1 req/s ÷ bare", "usvc-1", "bare", 0.7),
    ("chain", "usvc req/s ÷ otel", "usvc", "otel", 2.0),
    ("chain", "usvc req/s ÷ bare", "usvc", "bare", 0.75),
]
MESH_TARGETS = [
    ("chain", "Envoy CPU per traversal", 150.0),
    ("chain", "p50 added per traversal, 1 connection", 0.3),
]
TRAVERSALS = 4
ROOT = Path(__file__).resolve().parents[2]


def run_bench(
    *argv: str, module: str = "bench", timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGV`` from the project root, its output captured; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done


def same_round_ratio(suite: Mapping[str, Any], a: str, b: str) -> float | None:
    rows = {row["build"]: row for row in suite["rows"]}
    first = {s["round"]: s["rps"] for s in rows[a].get("samples", [])}
    second = {s["round"]: s["rps"] for s in rows[b].get("samples", [])}
    both = sorted(set(first) & set(second))
    if not both:
        return None
    return float(statistics.median(first[r] / second[r] for r in both))


def table_with(text: str, first: str, having: str = "") -> Table:
    """The one table whose first column is ``first`` (and which has a column ``having``)."""
    found = [t for t in tables(text) if t.columns[0] == first and (having or first) in t.columns]
    assert len(found) == 1, f"expected one table headed {first!r}:\n{text}"
    return found[0]


def check_one_run(results: Mapping[str, Any]) -> None:
    """Every figure was measured inside this run's window, every build in every round."""
    run = results["run"]
    rounds = run["wrk"]["rounds"]
    for suite in results["suites"]:
        for row in suite["rows"]:
            if row.get("pending"):
                continue
            for key in ("samples", "probes"):
                got = row.get(key, [])
                if key == "samples" or got:
                    assert sorted(s["round"] for s in got) == list(range(1, rounds + 1)), (
                        f"{suite['suite']} {row['build']} {key}: not one sample per round"
                    )
                for s in got:
                    assert run["started_unix"] <= s["started"] <= run["finished_unix"], (
                        f"{suite['suite']} {row['build']}: a sample from outside the run"
                    )


def check_ratio_columns(suite: Mapping[str, Any], text: str) -> None:
    """× bare and × otel of every build are the medians of its same-round ratios."""
    main = table_with(text, "build", "× bare")
    built = {row["build"] for row in suite["rows"]}
    assert set(main.keys) == built
    for column, base in (("× bare", "bare"), ("× otel", "otel")):
        shown = main.column(column)
        ran = {row["build"] for row in suite["rows"] if row.get("samples")}
        for build in built:
            if build not in ran:
                assert shown[build] == "", f"{build} did not run, yet has {column} {shown[build]}"
                continue
            if base not in ran:
                assert shown[build] == "–"
                continue
            value = same_round_ratio(suite, build, base)
            assert shown[build] == ("–" if value is None else f"{value:.2f}"), (
                f"{suite['suite']} {build} {column}: table {shown[build]}, raw figures {value}"
            )
    rps = main.column("req/s")
    for row in suite["rows"]:
        if row.get("samples"):
            assert rps[row["build"]] == f"{statistics.median(s['rps'] for s in row['samples']):.0f}"


def _verdict(value: float | None, ok: bool) -> str:
    return "not measured" if value is None else "met" if ok else "**not met**"


def check_targets(suite: Mapping[str, Any], text: str) -> None:
    """Each target of issue 13 has its row, and met / not met follows from the raw figures."""
    name = suite["suite"]
    targets = table_with(text, "target (issue 13)")
    expected = [t[1] for t in RATIO_TARGETS + MESH_TARGETS if t[0] == name]
    assert list(targets.keys) == expected
    results = targets.column("result")
    measured = targets.column("measured")
    for _, target, a, b, goal in (t for t in RATIO_TARGETS if t[0] == name):
        value = same_round_ratio(suite, a, b)
        assert results[target] == _verdict(value, value is not None and value >= goal), target
        if value is not None:
            assert measured[target] == f"{value:.2f}×"
    if name != "chain":
        return
    rows = {row["build"]: row for row in suite["rows"]}
    mesh = rows["usvc+envoy"]
    envoy = [
        s["cpu_s"].get("envoy", 0.0) / max(s["requests"], 1) * 1e6 / _traversals(s)
        for s in mesh.get("samples", [])
    ]
    cpu = statistics.median(envoy) if envoy else None
    assert results["Envoy CPU per traversal"] == _verdict(cpu, cpu is not None and cpu <= 150.0)
    direct = {s["round"]: s["p50_ms"] for s in rows["usvc"].get("probes", [])}
    added = [
        (s["p50_ms"] - direct[s["round"]]) / _traversals(s)
        for s in mesh.get("probes", [])
        if s["round"] in direct
    ]
    p50 = statistics.median(added) if added else None
    assert results["p50 added per traversal, 1 connection"] == _verdict(
        p50, p50 is not None and p50 <= 0.3
    )


def _traversals(sample: Mapping[str, Any]) -> float:
    """Listener passes per request as the run counted them (Envoy's downstream requests over
    wrk's), or the chain's four for results recorded before the count was."""
    served = sample.get("listener_requests", 0)
    return served / sample["requests"] if served else TRAVERSALS


def check_suite(suite: Mapping[str, Any], text: str) -> None:
    check_ratio_columns(suite, text)
    check_targets(suite, text)
