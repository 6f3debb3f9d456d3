"""The local mesh's inputs: manifests, scenarios, command-line values."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, free_port
from usvc_mesh.cli import parse_env_overrides, parse_gateway
from usvc_mesh.envoy import MeshPorts
from usvc_mesh.manifests import Layout, MeshError
from usvc_mesh.supervisor import LocalMesh


def test_a_root_without_manifests_is_refused_naming_the_folder(tmp_path: Path) -> None:
    mesh = LocalMesh(Layout(tmp_path), run_dir=tmp_path / "run", gateway_port=1)
    with pytest.raises(MeshError, match=f"no workload manifests in {tmp_path}/k8s/workloads"):
        mesh.start()


def test_an_unknown_scenario_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(MeshError) as caught:
        Layout(ROOT).scenario_file("canaryy")
    message = str(caught.value)
    assert message.startswith("unknown scenario 'canaryy'; known: beta, canary, current")
    assert "retry.env" not in message


def test_manifests_without_deployments_are_refused(tmp_path: Path) -> None:
    manifests = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s" / "mesh", manifests / "mesh")
    (manifests / "workloads").mkdir()
    (manifests / "workloads" / "empty.yaml").write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    mesh = LocalMesh(
        Layout(ROOT, manifests_dir=manifests), run_dir=tmp_path / "run", gateway_port=free_port()
    )
    with pytest.raises(MeshError, match="the manifests define no Deployment"):
        mesh.start()


def plan(tmp_path: Path, **kwargs: object) -> LocalMesh:
    mesh = LocalMesh(Layout(ROOT), scenario="retry", run_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
    mesh.ports = MeshPorts(gateway=1, outbound=2, admin=3)
    mesh.plan(mesh.documents("retry"))
    return mesh


def test_each_workload_gets_its_deployments_env_and_the_local_overrides(tmp_path: Path) -> None:
    mesh = plan(tmp_path, base_env={"PATH": "/bin", "OTEL_TRACES_EXPORTER": "otlp"})
    middle = mesh.workloads["middle-canary"]
    assert middle.labels["env"] == "canary"
    assert middle.env["SERVICE_ENV"] == "canary"
    assert middle.env["UPSTREAM_URI"] == "http://core-svc/"
    assert middle.env["EGRESS_PROXY"] == f"http://127.0.0.1:{middle.outbound_port}"
    assert middle.env["HOST"] == "127.0.0.1"
    assert middle.env["PORT"] == str(middle.port)
    # the container's command and args, with "python" meaning this interpreter
    assert middle.argv == [sys.executable, "-m", "usvc", "run", "services.middle.app:svc"]
    # the user's OTEL_* wins over the manifest's "none": locally, spans go where you say
    assert middle.env["OTEL_TRACES_EXPORTER"] == "otlp"
    # the retry scenario's workload env (generated from the chart) applies
    assert mesh.workloads["clock"].env["FAULT_INJECTION"] == "true"
    assert "fail" in middle.env["PASSTHROUGH_HEADERS"]
    assert set(mesh.stand_ins) == {"worldtimeapi.org"}  # the ServiceEntry's annotation
    assert mesh.stand_ins["worldtimeapi.org"].argv == [
        sys.executable,
        "-m",
        "services.worldtime.app",
    ]


def test_env_overrides_win_over_everything(tmp_path: Path) -> None:
    mesh = plan(tmp_path, env_overrides={"clock": {"FAULT_INJECTION": "false", "X": "1"}})
    assert mesh.workloads["clock"].env["FAULT_INJECTION"] == "false"
    assert mesh.workloads["clock"].env["X"] == "1"


def test_env_override_syntax_is_workload_colon_name_equals_value() -> None:
    assert parse_env_overrides(["clock:A=1", "clock:B=x=y", "front:C="]) == {
        "clock": {"A": "1", "B": "x=y"},
        "front": {"C": ""},
    }
    for bad in ("clock", "clock:A", ":A=1", "clock:=1"):
        with pytest.raises(SystemExit, match="is not WORKLOAD:NAME=VALUE"):
            parse_env_overrides([bad])


def test_gateway_is_host_colon_port() -> None:
    assert parse_gateway("127.0.0.1:9080") == ("127.0.0.1", 9080)
    assert parse_gateway(":9080") == ("127.0.0.1", 9080)
    with pytest.raises(argparse.ArgumentTypeError, match="is not HOST:PORT"):
        parse_gateway("localhost")
