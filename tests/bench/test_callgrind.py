"""bench/callgrind.py: instructions per request of one server process, from callgrind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import callgrind

from .checks import run_bench


def test_the_count_is_the_totals_line_not_the_startup_summary(tmp_path: Path) -> None:
    # With --instr-atstart=no callgrind writes "summary: 0" at start-up; the
    # instructions of the instrumented part are in the totals line.
    out = tmp_path / "callgrind.out"
    out.write_text("version: 1\nevents: Ir\nsummary: 0\nfn=(1) main\n16 3\ntotals: 123456\n")
    assert callgrind.totals(out) == {"Ir": 123456}
    out.write_text("version: 1\nsummary: 0\n")
    with pytest.raises(RuntimeError, match="no totals line"):
        callgrind.totals(out)


def test_a_build_or_hop_the_suite_lacks_is_named() -> None:
    with pytest.raises(SystemExit, match="no build 'nope' in suite chain"):
        callgrind.find_build("chain", "nope")
    with pytest.raises(SystemExit, match="is not a build of plain processes"):
        callgrind.find_build("chain", "usvc+envoy")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_a_counted_run_reports_instructions_for_exactly_the_requests_sent() -> None:
    argv = ["--suite", "single", "--build", "bare", "--requests", "40", "--warmup", "10"]
    done = run_bench(*argv, module="bench.callgrind", timeout=300)
    line = json.loads(done.stdout.splitlines()[0])
    assert line["requests"] == 40 and line["failed"] == 0
    # Serving a request takes instructions: a count of 0 means the toggle missed the process.
    assert line["instructions"] > 0
    assert "| bare | server | 40 |" in done.stdout


def test_every_event_is_read_with_its_name_and_the_estimate_follows_kcachegrinds_formula(
    tmp_path: Path,
) -> None:
    out = tmp_path / "callgrind.out"
    names = "Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim"
    numbers = "1000 300 200 10 20 30 1 2 3 150 40 20 5"
    out.write_text(f"version: 1\nevents: {names}\nsummary: 0\ntotals: {numbers}\n")
    events = callgrind.totals(out)
    assert events == dict(zip(names.split(), map(int, numbers.split()), strict=True))
    assert events["Ir"] == 1000
    per_request = callgrind.simulated(events, requests=10)
    # L1m = 10 + 20 + 30, LLm = 1 + 2 + 3, Bm = 40 + 5; CEst = 1000 + 10 * 45 + 10 * 60
    # + 100 * 6 = 2650; each over 10 requests
    assert per_request == {"Ir": 100, "L1m": 6, "LLm": 0.6, "Bm": 4.5, "CEst": 265}
    with pytest.raises(ValueError, match="run with --cache-sim"):
        callgrind.simulated({"Ir": 1000}, requests=10)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_a_simulated_run_reports_misses_and_an_estimate_above_the_instructions() -> None:
    argv = ["--suite", "single", "--build", "bare", "--requests", "40", "--warmup", "10"]
    done = run_bench(*argv, "--cache-sim", module="bench.callgrind", timeout=300)
    line = json.loads(done.stdout.splitlines()[0])
    simulated = line["simulated"]
    # Every instruction is fetched through the first-level cache, and some miss it.
    assert simulated["L1m"] > 0 and simulated["CEst"] > simulated["Ir"] > 0
    assert "| bare | server |" in done.stdout.split("Simulated per request")[1]


def test_parts_are_priced_against_the_build_as_configured() -> None:
    assert callgrind.PARTS["all three"] == {
        "ACCESS_LOG": "false",
        "OTEL_SDK_DISABLED": "true",
        "OTEL_PROPAGATORS": "none",
    }
    full = callgrind.Count("chain", "usvc", "middle", 1000, 8, 775_000_000, 0)
    without = callgrind.Count("chain", "usvc", "middle", 1000, 8, 757_000_000, 0)
    (row,) = [
        r
        for r in callgrind.parts_table([(full, "access log", without)]).splitlines()
        if r.startswith("| usvc")
    ]
    assert row == "| usvc | middle | access log | `ACCESS_LOG=false` | 757.0k | 18.0k |"
