"""`python -m tools.pictures`, the README's command for its pictures, runs and draws every panel."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT

from .conftest import MISSING, PROMETHEUS

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop

pytest.importorskip("matplotlib", reason="the docs extra (pip install -e '.[docs]')")


@pytest.mark.skipif(PROMETHEUS is None, reason=MISSING)
def test_tools_pictures_draws_each_local_dashboard_with_data_in_every_panel(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tools.pictures", "--seconds", "12", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    counts = dict(re.findall(r"/(usvc-\w+)\.png: (\d+/\d+) panels with data", run.stdout))
    assert set(counts) == {"usvc-red", "usvc-canary", "usvc-egress", "usvc-mesh"}
    for name, count in counts.items():
        drawn, panels = count.split("/")
        assert drawn == panels, name
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000
    assert (tmp_path / "trace.txt").read_text().startswith("$ usvc trace --last\ntrace ")
