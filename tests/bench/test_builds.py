"""The builds count the CPU of every process that serves their requests, and no other's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.builds import MeshBuild, chain_builds
from bench.procs import fetch_text

pytestmark = pytest.mark.slow  # starts the local mesh: real processes and a real Envoy


def test_the_mesh_build_counts_every_replica_and_envoy(tmp_path: Path) -> None:
    # The mesh runs a workload's replicas as separate processes (front has several): each
    # serves requests, so each one's CPU is the build's; counted by workload name, only the
    # first replica's was, and the others' showed up as "other load".
    [build] = [b for b in chain_builds() if b.name == "usvc+envoy"]
    assert isinstance(build, MeshBuild)
    build.start(tmp_path, "uvloop")
    try:
        build.wait()
        for _ in range(30):  # spread over front's replicas by Envoy's balancer
            fetch_text(build.url)
        mesh = build.mesh
        replicated = [w for w in mesh.workloads.values() if w.replicas > 1]
        assert replicated, "no workload runs more than one replica: nothing to check"
        counted = build.cpu()
        assert set(counted) == set(mesh.children())  # every replica and stand-in, and envoy
        assert "envoy" in counted
        for workload in replicated:
            assert {m.name for m in workload.members} <= set(counted), workload.name
            assert len(workload.members) == workload.replicas
        assert all(seconds >= 0 for seconds in counted.values())
        # A hop's name still finds its first replica (bench --profile --hop front).
        front = mesh.workloads["front"]
        assert build.pid_of("front") == front.members[0].process.pid
        assert build.pid_of(front.members[-1].name) == front.members[-1].process.pid
    finally:
        build.stop()
