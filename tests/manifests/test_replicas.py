"""Replicas and load balancing in the chart: what issue #12 asks of a cluster."""

from __future__ import annotations

from typing import Any

from tests.manifests.support import named
from tools import manifests as tool


def test_front_runs_three_replicas_by_default(default_objects: list[dict[str, Any]]) -> None:
    assert named(default_objects, "Deployment", "front")["spec"]["replicas"] == 3


def test_fronts_budget_lets_a_rolling_update_and_a_drain_proceed(
    default_objects: list[dict[str, Any]],
) -> None:
    objects = default_objects
    strategy = named(objects, "Deployment", "front")["spec"]["strategy"]
    # a rollout adds a pod before it removes one, so it never needs an eviction
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    budget = named(objects, "PodDisruptionBudget", "front")["spec"]
    # evictions (a node drain) may take one of three at a time: never blocked, two keep serving
    assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "front"}}}


def test_the_load_balancing_policy_is_a_value() -> None:
    values = tool.scenario_values(
        "current",
        {"routing": {"trafficPolicy": {"front": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}}},
    )
    rule = named(tool.render_objects(values), "DestinationRule", "front-svc")
    assert rule["spec"]["trafficPolicy"]["loadBalancer"] == {"simple": "ROUND_ROBIN"}


def test_istios_default_load_balancing_policy_is_the_charts_default(
    default_objects: list[dict[str, Any]],
) -> None:
    rule = named(default_objects, "DestinationRule", "front-svc")
    assert rule["spec"]["trafficPolicy"]["loadBalancer"] == {"simple": "LEAST_REQUEST"}
