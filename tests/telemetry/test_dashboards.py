"""The Grafana dashboard and the Prometheus rules, checked against a real Prometheus
scraping the local mesh: every panel's query returns data from the running chain."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from typing import Any

import pytest
import yaml

from tests.manifests.support import named, tool
from tests.procs import ROOT

from .conftest import MISSING, PROMTOOL, RULES, RULES_TEST, Observed

DASHBOARD_FILE = ROOT / "helm" / "usvc" / "dashboards" / "usvc-red.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
PANELS: list[dict[str, Any]] = DASHBOARD["panels"]
TARGETS = [(panel, target) for panel in PANELS for target in panel["targets"]]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SERVICES = {"front", "middle", "core", "clock"}
# What $__rate_interval stands for here: wide enough to hold every scrape the
# fixture waited for, at 1 s apart.
RATE_WINDOW = "20s"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=MISSING)


def promql(expr: str, service: str = ".*", env: str = ".*") -> str:
    """A panel's expression as Grafana sends it; the variables at "All" unless given."""
    chosen = {"service": service, "env": env}
    expr = expr.replace("$__rate_interval", RATE_WINDOW)
    expr = re.sub(r"\$\{?(service|env)\}?", lambda m: chosen[m[1]], expr)
    assert "$" not in expr, f"a variable this test does not know: {expr}"
    return expr


def panel(title: str) -> dict[str, Any]:
    found = [p for p in PANELS if p["title"] == title]
    assert len(found) == 1, title
    return found[0]


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def variable(name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in DASHBOARD["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, name
    return found[0]


# --- the dashboard's model ------------------------------------------------------


def test_every_panel_has_a_title_a_description_and_at_least_one_query() -> None:
    for p in PANELS:
        assert p["title"] and len(p["description"]) > 40, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]


def test_every_panel_and_query_reads_the_datasource_variable() -> None:
    assert variable("datasource")["type"] == "datasource"
    assert variable("datasource")["query"] == "prometheus"
    for p in PANELS:
        assert p["datasource"] == DATASOURCE, p["title"]
        assert all(t["datasource"] == DATASOURCE for t in p["targets"]), p["title"]


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    assert len({p["id"] for p in PANELS}) == len(PANELS)
    cells: dict[tuple[int, int], str] = {}
    for p in PANELS:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_service_and_env_variables_come_from_build_info_and_offer_all() -> None:
    for name in ("service", "env"):
        v = variable(name)
        assert v["type"] == "query" and v["datasource"] == DATASOURCE
        assert v["definition"].startswith("label_values(usvc_build_info")
        assert v["query"]["query"] == v["definition"]
        assert v["includeAll"] and v["multi"] and v["allValue"] == ".*"


def test_every_server_and_client_query_is_joined_to_build_info_on_job_and_instance() -> None:
    for p, t in TARGETS:
        if "http_" in t["expr"]:
            joins = t["expr"].count("* on(job, instance) group_left(service, env, version)")
            assert joins == t["expr"].count("http_"), f"{p['title']} {t['refId']}"


# --- the dashboard against a live Prometheus ------------------------------------


def test_prometheus_scrapes_every_workload(observed: Observed) -> None:
    up = {s["metric"]["job"]: s["value"][1] for s in observed.query("up")}
    assert up == dict.fromkeys(observed.mesh.workloads, "1")


@pytest.mark.parametrize(
    "target", [t for _, t in TARGETS], ids=[f"{p['title']}/{t['refId']}" for p, t in TARGETS]
)
def test_panel_query_returns_data_from_the_running_chain(
    observed: Observed, target: dict[str, Any]
) -> None:
    result = observed.query(promql(target["expr"]))
    assert result, "no series"
    assert any(math.isfinite(v) for v in values(result)), result


def test_the_variables_list_the_running_services_and_envs(observed: Observed) -> None:
    found: dict[str, set[str]] = {}
    for name in ("service", "env"):
        call = re.fullmatch(r"label_values\((.+), (\w+)\)", variable(name)["definition"])
        assert call is not None, variable(name)["definition"]
        series, label = call.groups()
        found[name] = {s["metric"][label] for s in observed.query(promql(series))}
    assert found == {"service": SERVICES, "env": {"prod", "canary", "dev", "test"}}


def test_request_rate_shows_every_service_and_env(observed: Observed) -> None:
    (target,) = panel("Request rate")["targets"]
    result = observed.query(promql(target["expr"]))
    pairs = {(s["metric"]["service"], s["metric"]["env"]) for s in result}
    assert pairs == {
        (w.env["SERVICE_NAME"], w.env["SERVICE_ENV"]) for w in observed.mesh.workloads.values()
    }
    assert all(v > 0 for v in values(result))


def test_canary_panel_shows_about_a_fifth_of_middles_traffic(observed: Observed) -> None:
    (target,) = panel("Canary vs prod: share of middle's traffic")["targets"]
    share = {
        s["metric"]["env"]: float(s["value"][1]) for s in observed.query(promql(target["expr"]))
    }
    assert set(share) == {"canary", "prod"}
    assert 0.08 < share["canary"] < 0.4, share
    assert share["canary"] + share["prod"] == pytest.approx(1.0)


def test_error_ratio_panel_shows_the_failures_of_the_betauser_path(observed: Observed) -> None:
    # `fail: 1` makes clock answer 500, and every hop above it 502
    (target,) = panel("Error ratio (5xx)")["targets"]
    ratio = {
        s["metric"]["service"]: float(s["value"][1]) for s in observed.query(promql(target["expr"]))
    }
    assert set(ratio) == SERVICES
    assert all(0 < r < 1 for r in ratio.values()), ratio


def test_error_ratio_panel_shows_0_not_a_gap_for_a_service_without_errors(
    observed: Observed,
) -> None:
    (target,) = panel("Error ratio (5xx)")["targets"]
    result = observed.query(promql(target["expr"], service="middle", env="canary|prod"))
    assert [(s["metric"], s["value"][1]) for s in result] == [({"service": "middle"}, "0")]


def test_egress_panel_names_every_upstream_with_its_outcomes(observed: Observed) -> None:
    (target,) = panel("Egress calls by upstream and outcome")["targets"]
    calls = {
        (s["metric"]["service"], s["metric"]["upstream"], s["metric"]["outcome"])
        for s in observed.query(promql(target["expr"]))
    }
    assert {(service, upstream) for service, upstream, _ in calls} == {
        ("front", "middleware-svc"),
        ("middle", "core-svc"),
        ("core", "clock-svc"),
        ("core", "worldtimeapi.org"),
    }
    assert {("core", "clock-svc", "500"), ("core", "clock-svc", "200")} <= calls


def test_running_versions_table_counts_one_instance_per_workload(observed: Observed) -> None:
    (target,) = panel("Running versions")["targets"]
    rows = {
        (s["metric"]["service"], s["metric"]["env"], s["metric"]["version"]): s["value"][1]
        for s in observed.query(promql(target["expr"]))
    }
    assert rows == {
        (w.env["SERVICE_NAME"], w.env["SERVICE_ENV"], w.env["SERVICE_VERSION"]): "1"
        for w in observed.mesh.workloads.values()
    }


# --- the rules ------------------------------------------------------------------


def test_every_recording_rule_gives_series_from_the_running_chain(observed: Observed) -> None:
    records = [
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]
    # Rules run every second; the first runs may precede the second scrape.
    deadline = time.monotonic() + 10
    missing = records
    while missing and time.monotonic() < deadline:
        missing = [r for r in records if not observed.query(r, at=time.time())]
        time.sleep(0.2)
    assert not missing


def test_the_error_ratio_alert_is_pending_for_the_failing_path_only(observed: Observed) -> None:
    # Above 5 % on the betaUser path; `for: 5m` keeps it pending. middle canary
    # and prod never fail: their ratio is 0, and no alert.
    expected = {("front", "prod"), ("middle", "dev"), ("core", "test"), ("clock", "prod")}
    deadline = time.monotonic() + 10
    while True:
        alerts = observed.query('ALERTS{alertname="UsvcHighErrorRatio"}', at=time.time())
        found = {(a["metric"]["service"], a["metric"]["env"]) for a in alerts}
        if found == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert found == expected
    assert {a["metric"]["alertstate"] for a in alerts} == {"pending"}


@needs_promtool
def test_promtool_accepts_the_generated_prometheus_config(observed: Observed) -> None:
    assert PROMTOOL is not None
    run = subprocess.run(
        [PROMTOOL, "check", "config", str(observed.config)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    run = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_the_rules_pass_their_unit_tests() -> None:
    assert PROMTOOL is not None
    run = subprocess.run(
        [PROMTOOL, "test", "rules", RULES_TEST.name],
        cwd=RULES_TEST.parent,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


# --- the chart ------------------------------------------------------------------


def test_the_chart_ships_the_dashboard_file_unchanged_as_a_configmap() -> None:
    rendered = tool.render(tool.scenario_values(tool.DEFAULT_SCENARIO))
    objects = tool.load_objects(rendered["templates/telemetry/dashboards.yaml"])
    configmap = named(objects, "ConfigMap", "usvc-dashboard-usvc-red")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    # The template's `|-` block drops the file's one final newline, nothing else.
    assert configmap["data"] == {"usvc-red.json": DASHBOARD_FILE.read_text().removesuffix("\n")}
