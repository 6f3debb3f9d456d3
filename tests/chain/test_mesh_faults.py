"""Retries, fault injection and timeouts: Istio rules applied by the local Envoy."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from usvc_mesh.manifests import MeshError
from usvc_mesh.supervisor import LocalMesh

from .conftest import fetch_many, gateway, scenario_with, start_mesh

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop

BETA = {"x-dev-user": "betaUser"}


@pytest.fixture(scope="module")
def retry_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    """The retry scenario: its rules, and fault injection switched on at clock."""
    tmp = tmp_path_factory.mktemp("retry")
    running = start_mesh(tmp, scenario="retry")
    scenarios = tmp / "k8s" / "mesh" / "scenarios"

    def abort_half_at_front(doc: dict[str, Any]) -> None:
        if doc["kind"] == "VirtualService" and doc["metadata"]["name"] == "front":
            doc["spec"]["http"][0]["fault"] = {
                "abort": {"httpStatus": 503, "percentage": {"value": 50}}
            }

    def delay_core_past_middles_timeout(doc: dict[str, Any]) -> None:
        if doc["kind"] != "VirtualService":
            return
        if doc["metadata"]["name"] == "middleware-svc":
            for rule in doc["spec"]["http"]:
                rule["timeout"] = "0.5s"
        if doc["metadata"]["name"] == "core-svc":
            for rule in doc["spec"]["http"]:
                delay = {"fixedDelay": f"{DELAY:g}s", "percentage": {"value": 100}}
                rule["fault"] = {"delay": delay}

    current = scenarios / "current.yaml"
    # current's rules with retry's workload env: fault injection on, no mesh retries
    scenario_with(current, scenarios / "no-retries.yaml", lambda doc: None)
    # the others keep it too, so switching to them restarts nothing
    for name in ("no-retries", "abort", "delay", "tcp"):
        shutil.copy(scenarios / "retry.env.yaml", scenarios / f"{name}.env.yaml")
    scenario_with(current, scenarios / "abort.yaml", abort_half_at_front)
    scenario_with(current, scenarios / "delay.yaml", delay_core_past_middles_timeout)
    yield running
    running.stop()


DELAY = 10.0  # core's fault delay: long, so middle's 0.5 s route timeout comes first


def successes(results: list[tuple[int, Any]]) -> int:
    return sum(status == 200 for status, _ in results)


async def test_retry_rules_hide_a_50_percent_failure_at_the_bottom_hop(
    retry_mesh: LocalMesh,
) -> None:
    retry_mesh.use("retry")
    results = await fetch_many(gateway(retry_mesh), 200, {**BETA, "fail": "0.5"})
    print(f"retry scenario, fail: 0.5 at clock: {successes(results)}/200 succeeded")
    assert successes(results) >= 198


async def test_without_the_retry_rules_about_half_fail(retry_mesh: LocalMesh) -> None:
    retry_mesh.use("no-retries")
    try:
        results = await fetch_many(gateway(retry_mesh), 200, {**BETA, "fail": "0.5"})
    finally:
        retry_mesh.use("retry")
    failed = Counter(status for status, _ in results if status != 200)
    print(f"no retries, fail: 0.5 at clock: {sum(failed.values())}/200 failed {failed}")
    # binomial(200, 0.5): mean 100, sd 7.1; +-5 sd
    assert 64 <= sum(failed.values()) <= 136
    assert set(failed) == {502}  # each hop reports the failure beneath it as a bad gateway


async def test_a_virtualservice_abort_of_50_percent_answers_503_as_configured(
    retry_mesh: LocalMesh,
) -> None:
    retry_mesh.use("abort")
    try:
        results = await fetch_many(gateway(retry_mesh), 200)
    finally:
        retry_mesh.use("retry")
    aborted = sum(status == 503 for status, _ in results)
    assert aborted + successes(results) == 200
    assert 64 <= aborted <= 136


async def test_a_delay_past_the_route_timeout_is_a_504_close_to_the_timeout(
    retry_mesh: LocalMesh,
) -> None:
    retry_mesh.use("delay")
    try:
        async with aiohttp.ClientSession() as client:
            started = time.monotonic()
            async with client.get(gateway(retry_mesh)) as resp:
                body = await resp.text()
            elapsed = time.monotonic() - started
    finally:
        retry_mesh.use("retry")
    # front's call to middleware-svc timed out at 0.5 s in Envoy; front says which hop
    assert resp.status == 504, body
    assert "front called http://middleware-svc/, which answered 504" in body
    assert elapsed < DELAY / 2, elapsed  # the route's timeout, long before the delay's end


def test_an_unknown_scenario_is_refused_with_the_known_ones(retry_mesh: LocalMesh) -> None:
    with pytest.raises(MeshError, match=r"unknown scenario 'nope'; known: .*current"):
        retry_mesh.use("nope")


def test_a_rule_the_local_mesh_cannot_honour_is_refused_before_envoy_sees_it(
    retry_mesh: LocalMesh, tmp_path: Path
) -> None:
    assert retry_mesh.layout.manifests_dir is not None
    scenarios = retry_mesh.layout.manifests_dir / "mesh" / "scenarios"

    def add_tcp_route(doc: dict[str, Any]) -> None:
        # tcp routes are Istio's; the local mesh's outbound proxy routes HTTP only
        if doc["kind"] == "VirtualService" and doc["metadata"]["name"] == "front":
            doc["spec"]["tcp"] = [{"route": [{"destination": {"host": "front-svc"}}]}]

    scenario_with(scenarios / "current.yaml", scenarios / "tcp.yaml", add_tcp_route)
    with pytest.raises(ValueError, match=r"VirtualService.*front.*tcp"):
        retry_mesh.use("tcp")
    assert retry_mesh.scenario == "retry"  # still running the rules it had
