"""`usvc up` as a user runs it: one command, ready, switchable, and clean on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.procs import ROOT, free_port, http_ok

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def usvc(*args: str, run_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none"}
    return subprocess.Popen(
        [sys.executable, "-m", "usvc", *args, "--run-dir", str(run_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60) -> list[str]:
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip())
        if line.startswith(prefix):
            return seen
    stderr = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"no {prefix!r} line; stdout: {seen}; stderr: {stderr}")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_usvc_up_serves_the_chain_switches_scenario_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    port = free_port()
    up = usvc("up", "--gateway", f"127.0.0.1:{port}", run_dir=tmp_path)
    try:
        lines = wait_for_line(up, "ready in ")
        assert any(line.startswith("middle-canary ") for line in lines)
        assert any("stand-in for the public API" in line for line in lines)
        children = children_of(up.pid)
        # seven workloads (front with three replicas), the time API stand-in, Envoy
        assert len(children) == 11
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", headers={"x-dev-user": "betaUser"}
        )
        with OPENER.open(request, timeout=10) as resp:
            assert "middle v3 (dev)" in resp.read().decode()

        switch = subprocess.run(
            [sys.executable, "-m", "usvc", "mesh", "use", "canary", "--run-dir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert switch.returncode == 0, switch.stderr
        for _ in range(10):
            with OPENER.open(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                assert "middle v2 (canary)" in resp.read().decode()
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=30)  # waits, and closes its pipes
    assert up.returncode == 0
    time.sleep(0.2)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert alive == []
    assert not http_ok(f"http://127.0.0.1:{port}/hello")


def test_a_workload_that_dies_is_reported_with_its_last_log_lines(tmp_path: Path) -> None:
    up = usvc(
        "up",
        "--gateway",
        f"127.0.0.1:{free_port()}",
        "--env",
        "clock:FAULT_INJECTION=maybe",
        run_dir=tmp_path,
    )
    _, stderr = up.communicate(timeout=60)
    assert up.returncode == 1
    assert "clock-1 exited with status 2; its last log lines:" in stderr
    assert "FAULT_INJECTION='maybe' is invalid: expected a boolean" in stderr


def test_envoy_dying_ends_usvc_up_with_status_1_and_envoys_last_lines(tmp_path: Path) -> None:
    up = usvc("up", "--gateway", f"127.0.0.1:{free_port()}", run_dir=tmp_path)
    try:
        wait_for_line(up, "ready in ")
        envoy = [
            pid for pid in children_of(up.pid) if "envoy" in Path(f"/proc/{pid}/comm").read_text()
        ]
        assert len(envoy) == 1
        os.kill(envoy[0], signal.SIGKILL)
        _, stderr = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            up.communicate(timeout=30)
    assert up.returncode == 1
    assert "usvc up: envoy was killed by SIGKILL; its last lines:" in stderr


def test_sighup_stops_every_child_as_ctrl_c_does(tmp_path: Path) -> None:
    up = usvc("up", "--gateway", f"127.0.0.1:{free_port()}", run_dir=tmp_path)
    try:
        wait_for_line(up, "ready in ")
        children = children_of(up.pid)
        up.send_signal(signal.SIGHUP)
        up.communicate(timeout=30)  # waits, and closes its pipes
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    assert up.returncode == 0
    time.sleep(0.2)
    assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []


def test_mesh_use_without_a_running_mesh_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "usvc", "mesh", "use", "prod", "--run-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"no local mesh is running from {tmp_path}" in result.stderr


def test_the_readmes_first_command_runs_the_chain(tmp_path: Path) -> None:
    """`./dev up`, exactly as the README shows it, in the venv `./dev` set up."""
    venv = Path(sys.prefix)
    if not (venv / ".usvc-installed-test").exists():
        pytest.skip("runs in a venv made by ./dev (as in CI); this one was made otherwise")
    port = free_port()
    up = subprocess.Popen(
        ["./dev", "up", "--gateway", f"127.0.0.1:{port}", "--run-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "VENV": str(venv)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_line(up, "ready in ")
        with OPENER.open(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.read().decode().startswith("took (")
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=30)  # waits, and closes its pipes
    assert up.returncode == 0
