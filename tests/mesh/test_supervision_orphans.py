"""No orphans: a supervisor's children end with it, and a second `usvc up` sees any left over.

The standard: a dying process is restarted or reported, never silently left.
SIGKILL runs no finaliser, so the children learn of their supervisor's death
from the kernel (prctl PR_SET_PDEATHSIG, usvc_mesh.procs.spawn). The generic
manifests (tests/mesh/generic: two plain aiohttp services, three replicas).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh.test_procs import _gone
from usvc_mesh.manifests import Layout, MeshError
from usvc_mesh.procs import free_port, start_ticks
from usvc_mesh.supervisor import STATE_FILE, LocalMesh, left_running

pytestmark = pytest.mark.slow  # real services and a real Envoy

GENERIC = Path(__file__).parent / "generic"
USVC_MESH = "import sys; from usvc_mesh.cli import main; sys.exit(main())"  # usvc-mesh
GONE_WITHIN = 30.0  # generous: SIGTERM, then each child's graceful stop on a busy machine


def usvc_up(run_dir: Path) -> list[str]:
    gateway = f"127.0.0.1:{free_port()}"
    return [sys.executable, "-c", USVC_MESH, "up", "--root", str(GENERIC), "--scenario",
            "split", "--gateway", gateway, "--run-dir", str(run_dir)]  # fmt: skip


def test_a_sigkilled_usvc_up_takes_its_workloads_and_envoy_with_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    up = subprocess.Popen(
        usvc_up(run_dir),
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: dict[str, int] = {}
    try:
        assert up.stdout is not None
        printed = []
        for line in up.stdout:
            printed.append(line)
            if line.startswith("ready in "):
                break
        assert printed and printed[-1].startswith("ready in "), "".join(printed)
        state = json.loads((run_dir / STATE_FILE).read_text())
        children = {name: pid for name, (pid, _) in state["processes"].items()}
        assert {"envoy", "alpha-1", "beta-one-1", "beta-two-1"} <= set(children), children
        assert left_running(state) == children  # all running now, as recorded
        up.kill()  # no finaliser, no mesh.stop()
        up.wait()
        left = [name for name, pid in children.items() if not _gone(pid, within=GONE_WITHIN)]
        assert left == [], f"still running after the supervisor's SIGKILL: {left}"
        assert left_running(state) == {}
    finally:
        if up.poll() is None:
            up.kill()
        up.communicate()  # and closes its stdout
        for pid in children.values():  # ours: the failure case's orphans
            if not _gone(pid, within=0):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(name="mesh")
def running_mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    events: list[str] = []
    mesh = LocalMesh(
        Layout(GENERIC),
        scenario="split",
        gateway_port=free_port(),
        run_dir=tmp_path / "run",
        base_env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        report=events.append,
    )
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()


def test_a_replica_restarted_by_a_thread_that_then_ends_keeps_running(mesh: LocalMesh) -> None:
    """The watch loop may run in any thread (a test's, `usvc up`'s main one): its restarts stay."""
    [replica] = mesh.workloads["alpha"].members
    assert replica.process is not None
    first = replica.process
    first.kill()
    first.wait()

    def watch_until_restarted() -> None:
        while replica.restarts == 0:
            mesh.supervise()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_until_restarted)
    watcher.start()
    watcher.join(60)
    assert not watcher.is_alive()
    assert replica.process is not first and replica.process is not None
    # PR_SET_PDEATHSIG fires as the forking thread exits, before the join returns:
    # a replica forked by the watcher would be dead or dying by now.
    new = replica.process
    deadline = time.monotonic() + 30
    while not replica.ready():
        assert new.poll() is None, f"the restarted replica ended: {new.returncode}"
        assert time.monotonic() < deadline, replica.last_lines()
        time.sleep(0.05)
    assert new.poll() is None
    state = json.loads((mesh.run_dir / STATE_FILE).read_text())  # type: ignore[operator]
    assert state["processes"]["alpha-1"] == [new.pid, start_ticks(new.pid)]  # the new pid


def test_usvc_up_refuses_while_a_previous_runs_processes_still_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    supervisor = subprocess.Popen(["true"])
    supervisor.wait()  # gone, as after a SIGKILL
    left = subprocess.Popen(["sleep", "120"])  # stands for a workload it left running
    try:
        (run_dir / STATE_FILE).write_text(
            json.dumps(
                {
                    "pid": supervisor.pid,
                    "gateway": "http://127.0.0.1:1",
                    "processes": {
                        "alpha-1": [left.pid, start_ticks(left.pid)],
                        "beta-one-1": [supervisor.pid, 1],  # gone: not named
                    },
                }
            )
        )
        up = subprocess.run(usvc_up(run_dir), capture_output=True, text=True, timeout=120)
        assert up.returncode == 1, up.stdout
        [line] = [x for x in up.stderr.splitlines() if "left" in x]
        assert line == (
            f"usvc up: the previous mesh from {run_dir} (supervisor pid {supervisor.pid}, gone) "
            f"left 1 process(es) running: alpha-1 (pid {left.pid}); end them with "
            f"`kill {left.pid}`, or give this one another --run-dir"
        )
        assert not (run_dir / "envoy.log").exists()  # nothing started
        assert left.poll() is None  # and nothing of it ended: it is the user's to kill
        with pytest.raises(MeshError, match="left 1 process"):
            LocalMesh(Layout(GENERIC), run_dir=run_dir).start()
    finally:
        left.kill()
        left.wait()
