"""The local mesh knows nothing of the demo: it runs any Deployments and Istio rules it is given.

tests/mesh/generic/ holds two services of this test's own (plain aiohttp, not
usvc), in another namespace, with a header route and subsets.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import pytest

from usvc_mesh.manifests import Layout, ManifestError, workload_command
from usvc_mesh.procs import free_port
from usvc_mesh.supervisor import LocalMesh

GENERIC = Path(__file__).parent / "generic"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, headers: dict[str, str] | None = None) -> str:
    with DIRECT.open(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
        return str(resp.read().decode())


def test_scenarios_are_the_files_of_the_scenarios_folder() -> None:
    assert Layout(GENERIC).scenarios() == ["split"]


def test_a_container_without_a_command_is_refused_naming_the_deployment() -> None:
    deployment = {
        "metadata": {"name": "nocmd"},
        "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "x"}]}}},
    }
    with pytest.raises(ManifestError, match=r"Deployment nocmd: its container has no command"):
        workload_command(deployment)


@pytest.mark.slow
def test_the_mesh_runs_manifests_that_are_not_the_demo(tmp_path: Path) -> None:
    mesh = LocalMesh(
        Layout(GENERIC, namespace="shop"),
        scenario="split",
        gateway_port=free_port(),
        run_dir=tmp_path,
        base_env={"PATH": "/usr/bin:/bin"},
    )
    mesh.start(timeout=30)
    try:
        assert set(mesh.workloads) == {"alpha", "beta-one", "beta-two"}
        assert mesh.workloads["alpha"].argv == [sys.executable, "greeter.py"]
        # the local-command annotation wins over the container's entrypoint
        assert mesh.workloads["beta-two"].argv == [sys.executable, "greeter.py"]
        assert not mesh.stand_ins
        # what the local gateway cannot know is said, not ignored
        assert [w for w in mesh.warnings if "VirtualService alpha: exportTo" in w]
        gateway = f"http://127.0.0.1:{mesh.gateway_port}/"
        assert get(gateway) == "alpha > beta-one"
        assert get(gateway, {"x-variant": "two"}) == "alpha > beta-two"
    finally:
        mesh.stop()
