"""The benchmark runs end to end: every build of the single suite serves load under wrk, and the
tables it prints and writes are that run's: ratios from its own rounds, every target stated.

No timing threshold: a slow machine passes, a table that does not follow from its run fails.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench import report
from bench.builds import single_builds

from .checks import check_one_run, check_suite, run_bench, table_with

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_quick_single_suite_reports_throughput_and_its_own_ratios(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    quick = ["--suite", "single", "--quick", "--rounds", "2", "--duration", "1", "--warmup", "1"]
    done = run_bench(*quick, "--results", str(out))
    results = json.loads(out.read_text())
    check_one_run(results)
    assert results["run"]["wrk"]["rounds"] == 2
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?", results["run"]["commit"])
    [suite] = results["suites"]

    # What it printed is what it wrote, and both are rendered from the raw rounds.
    md = out.with_suffix(".md").read_text()
    printed = report.extract(md, "single")
    assert printed in done.stdout
    assert report.render_run(results["run"], results["suites"]) in done.stdout
    check_suite(suite, printed)

    main = table_with(printed, "build", "× bare")
    assert set(main.keys) == {build.name for build in single_builds()}, done.stdout
    for name, rps in main.column("req/s").items():
        assert rps != "pending", f"{name} did not run:\n{done.stdout}"
        assert float(rps) > 0, f"{name} served nothing:\n{done.stdout}"
    verdicts = table_with(printed, "target (issue 13)").column("result")
    assert set(verdicts.values()) <= {"met", "**not met**"}, verdicts
