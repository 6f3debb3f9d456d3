"""`./dev up` as a new user meets it: a fresh clone, no .venv, one command, then `ready`.

The package cache is whatever this machine has (warm after CI's own install), so what is
measured here is "fresh clone, fresh venv, warm cache"; the times are printed (run with -s),
never asserted. Cold-cache numbers are in docs/tooling.md.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import ROOT, free_port

pytestmark = pytest.mark.slow

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Run:
    lines: list[str]  # stdout up to and including `ready in …`
    seconds: float  # from the command to its `ready` line
    reply: str  # the gateway's answer to GET /


def dev_up(clone: Path, run_dir: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if k not in ("VENV", "VIRTUAL_ENV")}
    env["OTEL_TRACES_EXPORTER"] = "none"
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        ["./dev", "up", "--gateway", f"127.0.0.1:{port}", "--run-dir", str(run_dir)],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("ready in "):
                break
        else:
            stderr = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"no 'ready' line; stdout: {lines}; stderr: {stderr}")
        seconds = time.monotonic() - started
        with OPENER.open(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            reply = resp.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)  # waits, and closes its pipes
    return Run(lines, seconds, reply)


@dataclass
class FirstRuns:
    clone: Path
    first: Run
    second: Run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRuns]:
    tmp = tmp_path_factory.mktemp("first-run")
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    first = dev_up(clone, tmp / "run-1")
    second = dev_up(clone, tmp / "run-2")
    print(
        f"\nfirst-run: fresh clone → ready in {first.seconds:.1f} s; "
        f"second ./dev up → ready in {second.seconds:.1f} s"
    )
    yield FirstRuns(clone, first, second)


def test_dev_up_in_a_fresh_clone_reaches_ready_and_routes_a_request(runs: FirstRuns) -> None:
    assert runs.first.lines[-1].startswith("ready in ")
    assert runs.first.reply.startswith("took (")


def test_dev_up_says_each_set_up_step_in_one_line_and_nothing_of_the_installer(
    runs: FirstRuns,
) -> None:
    steps = [line for line in runs.first.lines if line.startswith("dev: ")]
    assert [re.sub(r"\d+ packages", "N packages", s).split(" (")[0] for s in steps] == [
        "dev: creating .venv",
        "dev: installing the installer",
        "dev: installing N packages from requirements/run.txt",
        "dev: installing usvc and usvc-mesh from this checkout",
        "dev: starting the workloads",
    ]
    installer_words = ("Successfully installed", "Resolved", "Installed", "Prepared")
    assert [line for line in runs.first.lines if line.startswith(installer_words)] == []


def test_dev_up_installs_no_test_or_bench_tools(runs: FirstRuns) -> None:
    bin_dir = runs.clone / ".venv" / "bin"
    assert (bin_dir / "envoy").exists()
    tools = ("pytest", "ruff", "mypy", "py-spy")
    assert [tool for tool in tools if (bin_dir / tool).exists()] == []


def test_a_second_dev_up_installs_nothing(runs: FirstRuns) -> None:
    steps = [line for line in runs.second.lines if line.startswith("dev: ")]
    assert steps == [steps[0]]
    assert steps[0].startswith("dev: starting the workloads")
    assert runs.second.reply.startswith("took (")
