"""`helm lint --strict` (helm-python-sdk) and rendering of the chart."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import helm_python
import pytest

from .support import SCENARIOS, tool


def lint_problems(values: dict[str, Any] | None, kube_version: str) -> list[str]:
    report = helm_python.lint(
        tool.CHART, values, strict=True, namespace=tool.NAMESPACE, kube_version=f"v{kube_version}"
    )
    problems = list(report.get("errors") or [])
    # severity 1 is info ("icon is recommended"); 2 warning and 3 error fail --strict.
    problems += [
        f"{m['path']}: {m['error']}" for m in report.get("messages") or [] if m["severity"] >= 2
    ]
    return problems


def test_chart_lints_clean_with_default_values(kube_version: str) -> None:
    assert lint_problems(None, kube_version) == []


def test_chart_lints_clean_in_every_scenario(scenario: str, kube_version: str) -> None:
    assert lint_problems(tool.scenario_values(scenario), kube_version) == []


def test_lint_reports_a_broken_values_file(tmp_path: Any, kube_version: str) -> None:
    # The linter is only worth running if it can fail: a value of the wrong type.
    values = tool.helm_values()
    values["services"]["front"]["workloads"]["front"]["replicas"] = "two"
    assert lint_problems(values, kube_version) != []


def test_every_scenario_renders_the_same_routing_objects(scenario_objects: dict[str, Any]) -> None:
    # Applying one scenario's file must replace the previous one's completely.
    def routing_keys(scenario: str) -> set[tuple[str, str]]:
        return {
            (o["kind"], o["metadata"]["name"])
            for o in scenario_objects[scenario]
            if o["apiVersion"].startswith("networking.istio.io/")
        }

    expected = routing_keys("current")
    assert {s: routing_keys(s) for s in SCENARIOS} == {s: expected for s in SCENARIOS}


def test_rendered_objects_are_namespaced_to_the_release(manifests: ModuleType) -> None:
    objects = manifests.render_objects(namespace="elsewhere")
    assert {o["metadata"].get("namespace") for o in objects} == {"elsewhere"}


def test_notes_show_the_gateway_call_with_and_without_the_header() -> None:
    with helm_python.Chart.load(tool.CHART) as chart:
        notes = chart.render({}, name="usvc", namespace="usvc")["usvc/templates/NOTES.txt"]
    assert "curl -s http://127.0.0.1:18080/" in notes
    assert "curl -s -H 'x-dev-user: betaUser' http://127.0.0.1:18080/" in notes
    assert "port-forward svc/istio-ingressgateway 18080:80" in notes


def test_rendering_is_deterministic(manifests: ModuleType) -> None:
    assert manifests.render() == manifests.render()


@pytest.mark.parametrize("enabled", [True, False])
def test_grafana_dashboards_ship_as_labelled_configmaps(
    tmp_path: Any, manifests: ModuleType, enabled: bool
) -> None:
    import shutil

    chart = tmp_path / "usvc"
    shutil.copytree(tool.CHART, chart)
    for shipped in (chart / "dashboards").glob("*.json"):
        shipped.unlink()  # this test counts the dashboard it adds itself
    (chart / "dashboards" / "usvc_red.json").write_text('{"title": "usvc RED"}\n')
    objects = manifests.render_objects(
        {"telemetry": {"grafanaDashboards": {"enabled": enabled}}}, chart=chart
    )
    configmaps = [o for o in objects if o["kind"] == "ConfigMap"]
    if not enabled:
        assert configmaps == []
        return
    (configmap,) = configmaps
    assert configmap["metadata"]["name"] == "usvc-dashboard-usvc-red"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {"usvc_red.json": '{"title": "usvc RED"}'}
