"""The benchmark runs end to end: every build of the single suite serves load under wrk."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.builds import single_builds

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop

ROOT = Path(__file__).resolve().parents[2]


def table_rows(output: str) -> dict[str, list[str]]:
    """The Markdown table's data rows, by build name."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("build", "---"):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_quick_single_suite_reports_throughput_for_every_build() -> None:
    quick = ["--suite", "single", "--quick", "--rounds", "1", "--duration", "1", "--warmup", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *quick],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert set(rows) == {build.name for build in single_builds()}, done.stdout
    for name, cells in rows.items():
        assert cells[0] != "pending", f"{name} did not run:\n{done.stdout}"
        assert float(cells[0]) > 0, f"{name} served nothing:\n{done.stdout}"
