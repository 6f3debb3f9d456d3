"""The scenarios route as the README's rule table says (docs/design.md).

A small resolver walks the rendered VirtualServices the way Envoy does (first
matching http entry wins) and tells which subsets answer a caller.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

import pytest

from .support import SCENARIOS, env_of, named, of_kind

SPLIT = {"canary": 20, "prod": 80}
ANYONE = (None, "betaUser", "stressTest", "someoneElse")


def header_matches(condition: dict[str, str], value: str | None) -> bool:
    assert set(condition) <= {"exact", "prefix", "regex"}, condition
    if value is None:
        return False
    if "exact" in condition:
        return value == condition["exact"]
    if "prefix" in condition:
        return value.startswith(condition["prefix"])
    return re.fullmatch(condition["regex"], value) is not None


def resolve(objects: list[dict[str, Any]], host: str, dev_user: str | None) -> dict[str, int]:
    """subset -> weight of the route a caller with this x-dev-user reaches."""
    (vs,) = [v for v in of_kind(objects, "VirtualService") if host in v["spec"]["hosts"]]
    for http in vs["spec"]["http"]:
        matches = http.get("match")
        for match in matches or [{}]:
            assert set(match) <= {"headers"}, f"resolver does not know {set(match)}"
            if all(
                header_matches(c, dev_user if name == "x-dev-user" else None)
                for name, c in match.get("headers", {}).items()
            ):
                routes = http["route"]
                return {r["destination"]["subset"]: r.get("weight", 100) for r in routes}
    raise AssertionError(f"no route of {host} for x-dev-user={dev_user}")


# scenario -> x-dev-user -> (middleware-svc subsets, core-svc subsets)
CURRENT = {
    None: (SPLIT, {"prod": 100}),
    "betaUser": ({"dev": 100}, {"test": 100}),
    "stressTest": (SPLIT, {"test": 100}),
    "betauser": (SPLIT, {"prod": 100}),  # values match exactly, case included
    "someoneElse": (SPLIT, {"prod": 100}),
}
RULE_TABLE: dict[str, dict[str | None, tuple[dict[str, int], dict[str, int]]]] = {
    "current": CURRENT,
    "prod": {u: ({"prod": 100}, {"prod": 100}) for u in ANYONE},
    "dev": {u: ({"dev": 100}, {"test": 100}) for u in ANYONE},
    "canary": {u: ({"canary": 100}, {"prod": 100}) for u in ANYONE},
    "beta": {
        None: ({"prod": 100}, {"prod": 100}),
        "betaUser": ({"dev": 100}, {"test": 100}),
        "stressTest": ({"prod": 100}, {"prod": 100}),
    },
    "retry": CURRENT,
    "stress": CURRENT,
}


def test_rule_table_covers_every_scenario() -> None:
    assert set(RULE_TABLE) == set(SCENARIOS)


def test_scenario_routes_each_caller_as_the_rule_table_says(
    scenario_objects: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    objects = scenario_objects[scenario]
    routed = {
        user: (resolve(objects, "middleware-svc", user), resolve(objects, "core-svc", user))
        for user in RULE_TABLE[scenario]
    }
    assert routed == RULE_TABLE[scenario]


def test_front_is_exposed_only_through_the_gateway(default_objects: list[dict[str, Any]]) -> None:
    gateway = named(default_objects, "Gateway", "usvc-gateway")["spec"]
    assert gateway["selector"] == {"istio": "ingressgateway"}
    assert gateway["servers"] == [
        {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}
    ]
    front = named(default_objects, "VirtualService", "front")["spec"]
    assert front["gateways"] == ["usvc-gateway"]
    assert front["http"][0]["route"] == [{"destination": {"host": "front-svc"}}]
    mesh_only = [
        v for v in of_kind(default_objects, "VirtualService") if v["metadata"]["name"] != "front"
    ]
    assert {v["metadata"]["name"] for v in mesh_only} == {"middleware-svc", "core-svc", "clock-svc"}
    assert all("gateways" not in v["spec"] for v in mesh_only)


def test_clock_is_one_route_to_clock(default_objects: list[dict[str, Any]]) -> None:
    assert resolve_hosts(default_objects, "clock-svc") == [[{"destination": {"host": "clock-svc"}}]]


def resolve_hosts(objects: list[dict[str, Any]], host: str) -> list[list[dict[str, Any]]]:
    return [h["route"] for h in named(objects, "VirtualService", host)["spec"]["http"]]


def test_worldtimeapi_is_reached_through_a_mesh_external_service_entry(
    default_objects: list[dict[str, Any]],
) -> None:
    entry = named(default_objects, "ServiceEntry", "worldtimeapi")["spec"]
    assert entry == {
        "hosts": ["worldtimeapi.org"],
        "location": "MESH_EXTERNAL",
        "resolution": "DNS",
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
    }


RETRIES = {
    "attempts": 4,
    "perTryTimeout": "2s",
    "retryOn": "5xx,connect-failure,refused-stream,reset",
}


def test_retry_scenario_retries_on_every_hop(
    scenario_objects: dict[str, list[dict[str, Any]]],
) -> None:
    routes = [
        h for v in of_kind(scenario_objects["retry"], "VirtualService") for h in v["spec"]["http"]
    ]
    assert len(routes) >= 4
    assert [h.get("retries") for h in routes] == [RETRIES] * len(routes)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "retry"])
def test_other_scenarios_leave_retries_to_istio_defaults(
    scenario_objects: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    routes = [
        h for v in of_kind(scenario_objects[scenario], "VirtualService") for h in v["spec"]["http"]
    ]
    assert all("retries" not in h for h in routes)


def test_retry_scenario_injects_faults_at_clock_and_passes_the_fail_header_down(
    scenario_objects: dict[str, list[dict[str, Any]]],
) -> None:
    objects = scenario_objects["retry"]
    assert env_of(named(objects, "Deployment", "clock"))["FAULT_INJECTION"] == "true"
    for name in ("front", "middle-dev", "middle-canary", "middle-prod", "core-prod", "core-test"):
        env = env_of(named(objects, "Deployment", name))
        assert (env["PASSTHROUGH_HEADERS"], env["FAULT_INJECTION"]) == (
            "x-dev-user,fail",
            "false",
        ), name


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "retry"])
def test_fault_injection_is_off_outside_the_retry_scenario(
    scenario_objects: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    deployments = of_kind(scenario_objects[scenario], "Deployment")
    assert {env_of(d)["FAULT_INJECTION"] for d in deployments} == {"false"}
    assert {env_of(d)["PASSTHROUGH_HEADERS"] for d in deployments} == {"x-dev-user"}


def test_stress_scenario_bounds_the_stress_route_and_limits_core(
    scenario_objects: dict[str, list[dict[str, Any]]],
) -> None:
    objects = scenario_objects["stress"]
    core_routes = {
        h["name"]: h for h in named(objects, "VirtualService", "core-svc")["spec"]["http"]
    }
    assert core_routes["stress-test"]["timeout"] == "5s"
    assert "timeout" not in core_routes["default"]
    policy = named(objects, "DestinationRule", "core-svc")["spec"]["trafficPolicy"]
    assert set(policy) == {"loadBalancer", "connectionPool", "outlierDetection"}
    assert (
        "connectionPool"
        not in named(scenario_objects["current"], "DestinationRule", "core-svc")["spec"][
            "trafficPolicy"
        ]
    )


def test_weights_and_match_values_are_overridable(manifests: ModuleType) -> None:
    objects = manifests.render_objects(
        {
            "routing": {
                "weights": {"canary": 50, "prod": 50},
                "match": {"betaUser": "tester", "stressUser": "loadgen"},
            }
        }
    )
    assert resolve(objects, "middleware-svc", None) == {"canary": 50, "prod": 50}
    assert resolve(objects, "middleware-svc", "tester") == {"dev": 100}
    assert resolve(objects, "middleware-svc", "betaUser") == {"canary": 50, "prod": 50}
    assert resolve(objects, "core-svc", "loadgen") == {"test": 100}


def test_every_scenario_names_itself_on_its_objects(
    scenario_objects: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    routing = [
        o for o in scenario_objects[scenario] if o["apiVersion"].startswith("networking.istio.io/")
    ]
    assert {o["metadata"]["annotations"]["usvc.dev/scenario"] for o in routing} == {scenario}
