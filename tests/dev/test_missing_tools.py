"""`./dev test` on a machine with only Python: a test that needs a Debian tool skips, naming it.

The README promises it (`prometheus`/`promtool`, `wrk`, `shellcheck`; `.ci/run` installs them).
Here pytest runs the tests that use those tools with a PATH that has every program of
/usr/bin but them, and must report skips, never an error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT

pytestmark = pytest.mark.slow  # runs pytest again

TOOLS = ("prometheus", "promtool", "wrk", "shellcheck")
USERS = [
    "tests/telemetry",
    "tests/load/test_slo_gate.py",
    "tests/bench/test_bench_smoke.py",
    "tests/manifests/test_cluster_scripts.py",
]


def path_without(tools: tuple[str, ...], into: Path) -> str:
    """A PATH with a link to every program of /usr/bin except ``tools``."""
    into.mkdir()
    for program in Path("/usr/bin").iterdir():
        if program.name not in tools:
            (into / program.name).symlink_to(program)
    return f"{into}:/usr/sbin:/sbin"


def test_tests_that_need_a_missing_debian_tool_skip_and_name_it(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": path_without(TOOLS, tmp_path / "bin")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *USERS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:]
    assert not re.search(r"\d+ (failed|errors?)\b", summary), summary
    reasons = {line for line in done.stdout.splitlines() if line.startswith("SKIPPED")}
    for package in ("prometheus", "wrk", "shellcheck"):
        assert any(package in reason for reason in reasons), (package, reasons)
