"""The cluster set-up scripts and make targets, checked without a cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .support import REPO, SCENARIOS, tool

SCRIPTS = REPO / "scripts" / "cluster"
ENTRY_POINTS = sorted(p.name for p in SCRIPTS.glob("*.sh") if p.name != "common.sh")
MAKEFILE = REPO / "mk" / "k8s.mk"


def test_there_are_scripts_for_every_workflow() -> None:
    assert ENTRY_POINTS == [
        "call.sh",
        "demo-install.sh",
        "istio-install.sh",
        "reset.sh",
        "rules.sh",
    ]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", [*ENTRY_POINTS, "common.sh"])
def test_script_passes_shellcheck(script: str) -> None:
    result = subprocess.run(
        ["shellcheck", "--external-sources", "--severity=style", str(SCRIPTS / script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_script_is_executable_and_says_it_needs_a_real_cluster(script: str) -> None:
    path = SCRIPTS / script
    assert os.access(path, os.X_OK)
    assert "NEEDS A REAL CLUSTER" in path.read_text().split("\nsource ", 1)[0]


@pytest.fixture
def no_cluster(tmp_path: Path) -> dict[str, str]:
    """An environment whose kubectl context points at a closed loopback port."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [{"name": "nowhere", "context": {"cluster": "none", "user": "nobody"}}],
                "current-context": "nowhere",
            }
        )
    )
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}


def run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / script), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("script", "args"),
    [("demo-install.sh", ()), ("rules.sh", ("canary",)), ("reset.sh", ()), ("call.sh", ())],
)
def test_script_stops_with_a_clear_message_without_a_cluster(
    no_cluster: dict[str, str], script: str, args: tuple[str, ...]
) -> None:
    result = run(script, *args, env=no_cluster)
    assert result.returncode == 1
    expected = (
        "needs a real Kubernetes cluster" if shutil.which("kubectl") else "needs 'kubectl' on PATH"
    )
    assert expected in result.stderr
    assert result.stdout == ""


def test_script_without_a_kubectl_context_refuses_to_guess(tmp_path: Path) -> None:
    # kubectl without a context would call localhost:8080, the local gateway's port.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    result = run("rules.sh", "prod", env=env)
    assert result.returncode == 1
    assert "needs a real Kubernetes cluster" in result.stderr or "needs 'kubectl'" in result.stderr


def test_istio_install_stops_without_its_tools_or_cluster(no_cluster: dict[str, str]) -> None:
    result = run("istio-install.sh", env=no_cluster)
    assert result.returncode == 1
    assert re.search(r"needs ('helm' on PATH|a real Kubernetes cluster)", result.stderr)


@pytest.mark.parametrize(
    ("script", "args"), [("rules.sh", ("canry",)), ("demo-install.sh", ("Prod",))]
)
def test_unknown_scenario_is_refused_before_touching_a_cluster(
    no_cluster: dict[str, str], script: str, args: tuple[str, ...]
) -> None:
    result = run(script, *args, env=no_cluster)
    assert result.returncode == 1
    assert f"unknown scenario '{args[0]}' (one of: {' '.join(SCENARIOS)})" in result.stderr


def test_unknown_mode_is_refused(no_cluster: dict[str, str]) -> None:
    result = run("rules.sh", "prod", env={**no_cluster, "USVC_MODE": "kustomize"})
    assert result.returncode == 1
    assert "USVC_MODE must be helm or kubectl" in result.stderr


def test_scripts_know_the_chart_scenarios_and_registry() -> None:
    common = (SCRIPTS / "common.sh").read_text()
    scenarios = re.search(r"^SCENARIOS=\(([^)]*)\)", common, re.M)
    registry = re.search(r"^DEFAULT_REGISTRY=(\S+)", common, re.M)
    assert scenarios and registry
    assert tuple(scenarios[1].split()) == SCENARIOS
    assert registry[1] == tool.helm_values()["image"]["registry"]


def test_istiod_traces_to_jaeger_by_default() -> None:
    values = yaml.safe_load((SCRIPTS / "istiod-values.yaml").read_text())["meshConfig"]
    providers = {p["name"]: p for p in values["extensionProviders"]}
    assert values["enableTracing"] is True
    assert values["defaultProviders"]["tracing"] == ["jaeger"]
    # The local mesh's tracer (usvc_mesh.envoy: OpenTelemetry, OTLP/HTTP): one set of rules.
    assert providers["jaeger"]["opentelemetry"] == {
        "service": "jaeger-collector.istio-system.svc.cluster.local",
        "port": 4318,
        "http": {"path": "/v1/traces", "timeout": "1s"},
    }


def make_dry_run(*targets: str) -> list[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-f", str(MAKEFILE), *targets, "PYTHON=python"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_make_targets_run_the_tool_and_the_scripts() -> None:
    assert make_dry_run("manifests", "manifests-check", "helm-lint") == [
        "python -m tools.manifests write",
        "python -m tools.manifests check",
        "python -m tools.manifests validate",
        "python -m tools.manifests lint",
    ]
    assert make_dry_run("istio-install", "demo-install", "call", "reset", "istio-uninstall") == [
        "scripts/cluster/istio-install.sh",
        "scripts/cluster/demo-install.sh current",
        "scripts/cluster/call.sh",
        "scripts/cluster/reset.sh",
        "scripts/cluster/reset.sh --istio",
    ]


@needs_make
def test_there_is_a_rules_target_per_scenario_and_no_other() -> None:
    assert make_dry_run(*(f"rules-{s}" for s in SCENARIOS)) == [
        f"scripts/cluster/rules.sh {s}" for s in SCENARIOS
    ]
    result = subprocess.run(
        ["make", "-n", "-f", str(MAKEFILE), "rules-bogus"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0


@pytest.mark.slow
@needs_make
def test_make_helm_lint_passes() -> None:
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-f",
            str(MAKEFILE),
            "helm-lint",
            f"PYTHON={sys.executable}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
