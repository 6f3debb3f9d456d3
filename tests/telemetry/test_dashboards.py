"""The Grafana dashboards and the Prometheus rules, checked against a real Prometheus
scraping the local mesh: every panel's query of every dashboard returns data — from
the running chain and its Envoy, and for the cluster dashboard from series in the
shape Istio emits (istio_metrics.py)."""

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
from tools.dashboards import defaults, expand

from .conftest import MISSING, PROMTOOL, RULES, RULES_TEST, Observed

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop

DASHBOARD_DIR = ROOT / "helm" / "usvc" / "dashboards"
DASHBOARDS: dict[str, dict[str, Any]] = {
    path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))
}
DASHBOARD = DASHBOARDS["usvc-red"]
PANELS: list[dict[str, Any]] = DASHBOARD["panels"]
TARGETS = [(panel, target) for panel in PANELS for target in panel["targets"]]
EVERY_TARGET = [
    (name, panel, target)
    for name, dashboard in DASHBOARDS.items()
    for panel in dashboard["panels"]
    for target in panel["targets"]
]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SERVICES = {"front", "middle", "core", "clock"}
# What $__rate_interval stands for here: wide enough to hold every scrape the
# fixture waited for, at 1 s apart.
RATE_WINDOW = "20s"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=MISSING)


def promql(
    expr: str, service: str = ".*", env: str = ".*", dashboard: dict[str, Any] | None = None
) -> str:
    """A panel's expression as Grafana sends it: the RED dashboard's variables at "All"
    unless given, another dashboard's at their defaults."""
    chosen = defaults(dashboard) if dashboard is not None else {"service": service, "env": env}
    expr = expand(expr, chosen, RATE_WINDOW)
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


def test_prometheus_scrapes_every_workload_envoy_and_the_istio_stand_in(
    observed: Observed,
) -> None:
    up = {s["metric"]["job"]: s["value"][1] for s in observed.query("up")}
    assert up == dict.fromkeys([*observed.mesh.workloads, "envoy", "istio"], "1")


def test_a_query_prometheus_refuses_fails_with_its_own_message(observed: Observed) -> None:
    # A panel query with a typo must fail its test, not pass as "no data".
    with pytest.raises(AssertionError, match=r"sum\(up\n-> .*parse error"):
        observed.query("sum(up")


@pytest.mark.parametrize(
    ("name", "target"),
    [(name, t) for name, _, t in EVERY_TARGET],
    ids=[f"{name}/{p['title']}/{t['refId']}" for name, p, t in EVERY_TARGET],
)
def test_panel_query_returns_data(observed: Observed, name: str, target: dict[str, Any]) -> None:
    result = observed.query(promql(target["expr"], dashboard=DASHBOARDS[name]))
    assert result, "no series"
    assert any(math.isfinite(v) for v in values(result)), result


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_variable_of_the_dashboard_offers_values(observed: Observed, name: str) -> None:
    dashboard = DASHBOARDS[name]
    for v in dashboard["templating"]["list"]:
        if v["type"] != "query":
            continue
        call = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"])
        assert call is not None, v["definition"]
        series, label = call.groups()
        offered = {
            s["metric"].get(label) for s in observed.query(promql(series, dashboard=dashboard))
        }
        assert offered - {None}, v["name"]
        default = v["current"]["value"][0]
        assert default == "$__all" or default in offered, (v["name"], offered)


def panel_of(name: str, title: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in DASHBOARDS[name]["panels"] if p["title"] == title]
    assert len(found) == 1, title
    return found[0]


def by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


def test_canary_dashboard_shows_the_observed_share_near_the_configured_20_percent(
    observed: Observed,
) -> None:
    dashboard = DASHBOARDS["usvc-canary"]
    share, configured = panel_of("usvc-canary", "Canary share: observed vs configured")["targets"]
    observed_share = by(observed.query(promql(share["expr"], dashboard=dashboard)), "env")
    assert set(observed_share) == {"canary"}
    assert 0.08 < observed_share["canary"] < 0.4, observed_share
    assert values(observed.query(promql(configured["expr"], dashboard=dashboard))) == [0.2]


def test_canary_dashboard_gives_quantiles_per_env(observed: Observed) -> None:
    dashboard = DASHBOARDS["usvc-canary"]
    for target in panel_of("usvc-canary", "Latency p50 / p95 / p99: canary vs prod")["targets"]:
        per_env = by(observed.query(promql(target["expr"], dashboard=dashboard)), "env")
        assert set(per_env) == {"canary", "prod"}
        assert all(0 < v < 1 for v in per_env.values()), per_env


def test_egress_dashboard_shows_each_time_source_and_no_fallback(observed: Observed) -> None:
    # core prod asks worldtimeapi.org (the stand-in always answers); core test
    # asks clock, which fails the `fail: 1` requests: a failed hop, not a fallback.
    dashboard = DASHBOARDS["usvc-egress"]
    (success,) = panel_of("usvc-egress", "Time source success ratio")["targets"]
    (fallback,) = panel_of("usvc-egress", "Fallback rate")["targets"]
    ratio = by(observed.query(promql(success["expr"], dashboard=dashboard)), "upstream")
    assert ratio["worldtimeapi.org"] == 1.0
    assert 0 < ratio["clock-svc"] < 1
    assert by(observed.query(promql(fallback["expr"], dashboard=dashboard)), "upstream") == {
        "worldtimeapi.org": 0.0,
        "clock-svc": 0.0,
    }


def test_mesh_dashboard_names_each_subset_cluster_envoy_sends_to(observed: Observed) -> None:
    dashboard = DASHBOARDS["usvc-mesh"]
    (rate,) = panel_of("usvc-mesh", "Requests per upstream cluster")["targets"]
    clusters = by(observed.query(promql(rate["expr"], dashboard=dashboard)), "envoy_cluster_name")
    for subset in ("canary", "prod", "dev"):
        assert clusters[f"outbound|80|{subset}|middleware-svc_usvc_svc_cluster_local"] > 0
    assert clusters["outbound|80||worldtimeapi_org"] > 0


def test_mesh_dashboard_shows_the_5xx_of_clock(observed: Observed) -> None:
    dashboard = DASHBOARDS["usvc-mesh"]
    (errors,) = panel_of("usvc-mesh", "5xx per upstream cluster")["targets"]
    found = by(observed.query(promql(errors["expr"], dashboard=dashboard)), "envoy_cluster_name")
    assert found["outbound|80||clock-svc_usvc_svc_cluster_local"] > 0
    assert found["outbound|80||worldtimeapi_org"] == 0


def test_istio_dashboard_shows_the_crafted_canary_share(observed: Observed) -> None:
    dashboard = DASHBOARDS["usvc-istio"]
    (share,) = panel_of("usvc-istio", "Canary share of middle")["targets"]
    found = by(observed.query(promql(share["expr"], dashboard=dashboard)), "destination_version")
    assert found == {"v1": pytest.approx(0.8, abs=0.02), "v2": pytest.approx(0.2, abs=0.02)}


def test_istio_dashboard_counts_unanswered_egress_as_failed(observed: Observed) -> None:
    dashboard = DASHBOARDS["usvc-istio"]
    (ratio,) = panel_of("usvc-istio", "worldtimeapi.org success ratio (egress)")["targets"]
    found = by(
        observed.query(promql(ratio["expr"], dashboard=dashboard)), "source_canonical_service"
    )
    assert found == {"core": pytest.approx(0.9, abs=0.02)}


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


def test_running_versions_table_counts_the_replicas_of_each_workload(observed: Observed) -> None:
    (target,) = panel("Running versions")["targets"]
    rows = {
        (s["metric"]["service"], s["metric"]["env"], s["metric"]["version"]): s["value"][1]
        for s in observed.query(promql(target["expr"]))
    }
    assert rows == {
        # every replica is scraped (front runs 3), as every pod is in a cluster
        (w.env["SERVICE_NAME"], w.env["SERVICE_ENV"], w.env["SERVICE_VERSION"]): str(len(w.members))
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


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_the_chart_ships_each_dashboard_file_unchanged_as_a_configmap(name: str) -> None:
    rendered = tool.render(tool.scenario_values(tool.DEFAULT_SCENARIO))
    objects = tool.load_objects(rendered["templates/telemetry/dashboards.yaml"])
    configmap = named(objects, "ConfigMap", f"usvc-dashboard-{name}")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    # The template's `|-` block drops the file's one final newline, nothing else.
    assert configmap["data"] == {
        f"{name}.json": (DASHBOARD_DIR / f"{name}.json").read_text().removesuffix("\n")
    }


def test_the_chart_ships_the_rules_file_as_a_prometheusrule_when_asked() -> None:
    values = {"telemetry": {"prometheusRules": {"create": "always", "labels": {"release": "kps"}}}}
    rendered = tool.render(tool.scenario_values(tool.DEFAULT_SCENARIO, values))
    (rule,) = tool.load_objects(rendered["templates/telemetry/prometheusrule.yaml"])
    assert rule["kind"] == "PrometheusRule" and rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_the_chart_makes_no_prometheusrule_without_the_operators_crd() -> None:
    rendered = tool.render(tool.scenario_values(tool.DEFAULT_SCENARIO))
    assert "templates/telemetry/prometheusrule.yaml" not in rendered


def test_the_add_on_grafana_patch_mounts_the_charts_configmap_where_the_provider_reads() -> None:
    patch = json.loads((ROOT / "telemetry" / "grafana" / "addon-patch.json").read_text())
    provider = yaml.safe_load((ROOT / "telemetry" / "grafana" / "provider.yaml").read_text())
    volumes = {op["value"]["name"]: op["value"] for op in patch if op["path"].endswith("volumes/-")}
    mounts = {op["value"]["name"]: op["value"] for op in patch if "volumeMounts" in op["path"]}
    assert volumes["usvc-dashboards"]["configMap"]["name"] == "usvc-grafana-dashboards"
    (usvc,) = provider["providers"]
    assert mounts["usvc-dashboards"]["mountPath"] == usvc["options"]["path"]
    assert mounts["usvc-provider"]["mountPath"].startswith("/etc/grafana/provisioning/dashboards/")
