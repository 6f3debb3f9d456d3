"""The demo chain behind the local Envoy, routed by the chart's own Istio rules."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from usvc.settings import Settings
from usvc_mesh.supervisor import LocalMesh

from .conftest import JSON, fetch_many, gateway, hops, path_of

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop


async def test_no_header_goes_to_middle_prod_or_canary_and_core_prod(mesh: LocalMesh) -> None:
    results = await fetch_many(gateway(mesh), 60)
    assert {status for status, _ in results} == {200}
    paths = {tuple(path_of(body)) for _, body in results}
    assert paths <= {
        ("front/prod", "middle/prod", "core/prod"),
        ("front/prod", "middle/canary", "core/prod"),
    }
    # core prod asked worldtimeapi (here its local stand-in), through the mesh's egress
    assert all(
        hops(body)[-1]["called"].startswith("http://worldtimeapi.org/") for _, body in results
    )


async def test_canary_gets_20_percent_of_2000_requests_within_4_points(mesh: LocalMesh) -> None:
    results = await fetch_many(gateway(mesh), 2000, concurrency=24)
    assert all(status == 200 for status, _ in results)
    envs = Counter(hops(body)[1]["env"] for _, body in results)
    share = envs["canary"] / len(results)
    print(f"canary share over {len(results)} requests: {share:.1%}")  # quoted in the notes
    assert set(envs) == {"canary", "prod"}
    assert 0.16 <= share <= 0.24, envs


async def test_beta_user_goes_to_middle_dev_and_core_test_every_time(mesh: LocalMesh) -> None:
    results = await fetch_many(gateway(mesh), 100, {"x-dev-user": "betaUser"})
    paths = Counter(tuple(path_of(body)) for _, body in results)
    assert paths == {("front/prod", "middle/dev", "core/test", "clock/prod"): 100}


async def test_stress_test_goes_to_core_test_every_time_whatever_the_middle(
    mesh: LocalMesh,
) -> None:
    results = await fetch_many(gateway(mesh), 100, {"x-dev-user": "stressTest"})
    cores = Counter(path_of(body)[2] for _, body in results)
    middles = Counter(path_of(body)[1] for _, body in results)
    # the header is matched at the third hop: it survived two services
    assert cores == {"core/test": 100}
    assert set(middles) <= {"middle/prod", "middle/canary"}


async def test_the_header_match_is_case_sensitive(mesh: LocalMesh) -> None:
    results = await fetch_many(gateway(mesh), 40, {"x-dev-user": "betauser"})
    paths = {tuple(path_of(body)) for _, body in results}
    assert all(p[1] != "middle/dev" and p[2] == "core/prod" for p in paths)


async def test_plain_text_reply_shows_the_path_and_the_time_of_each_hop(mesh: LocalMesh) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(gateway(mesh), headers={"x-dev-user": "betaUser"}) as resp:
            text = await resp.text()
    lines = text.splitlines()
    # each hop names its instance (SERVICE_INSTANCE) after its env
    assert re.search(r"front v1 \(prod\) \S+ --> http://middleware-svc/$", lines[0])
    assert re.search(r"middle v3 \(dev\) \S+ --> http://core-svc/$", lines[1])
    assert re.search(r"core v2 \(test\) \S+ --> http://clock-svc/$", lines[2])
    assert re.search(r"clock v1 \(prod\) \S+$", lines[3])
    assert all(line.lstrip().startswith("took (") for line in lines[:4])


def access_lines(run_dir: Path, trace_id: str) -> dict[str, dict[str, Any]]:
    """Each workload's access-log line for one trace, by workload."""
    found: dict[str, dict[str, Any]] = {}
    for path in run_dir.glob("*.log"):
        for raw in path.read_text(errors="replace").splitlines():
            if trace_id not in raw or not raw.startswith("{"):
                continue
            line = json.loads(raw)
            if line.get("logger") == "usvc.access":
                found[path.stem.rsplit("-", 1)[0]] = line  # front-2.log: a replica of front
    return found


async def test_one_trace_id_in_every_hops_log_line_and_in_the_reply(mesh: LocalMesh) -> None:
    assert mesh.run_dir is not None
    async with aiohttp.ClientSession() as client:
        async with client.get(gateway(mesh), headers={**JSON, "x-dev-user": "betaUser"}) as resp:
            reply = await resp.json()
    trace_id = reply["trace_id"]
    assert len(trace_id) == 32
    assert {h["trace_id"] for h in hops(reply)} == {trace_id}
    lines: dict[str, dict[str, Any]] = {}
    for _ in range(40):  # log lines are written after the reply leaves
        lines = access_lines(mesh.run_dir, trace_id)
        if len(lines) == 4:
            break
        await asyncio.sleep(0.05)
    assert set(lines) == {"front", "middle-dev", "core-test", "clock"}
    assert {line["trace_id"] for line in lines.values()} == {trace_id}
    # Envoy made the request id at the gateway; every hop kept it
    assert len({line["request_id"] for line in lines.values()}) == 1


async def test_clock_down_fails_fast_with_a_502_naming_it_and_recovers_on_restart(
    mesh: LocalMesh,
) -> None:
    headers = {"x-dev-user": "betaUser"}
    mesh.workloads["clock"].stop()
    try:
        started = time.monotonic()
        results = await fetch_many(gateway(mesh), 10, headers, concurrency=2)
        elapsed = time.monotonic() - started
        assert {status for status, _ in results} == {502}
        # ten requests, two at a time, all answered before one egress timeout would end
        assert elapsed < Settings.egress_timeout / 2  # the default, which core-test has
        problem = results[0][1]
        assert problem["service"] == "front"
        assert "clock-svc" in json.dumps(problem)
        # the innermost cause is core's, naming clock-svc as the hop that failed
        cause = problem
        while "cause" in cause and isinstance(cause["cause"], dict) and "service" in cause["cause"]:
            cause = cause["cause"]
        assert cause["service"] == "core" and "clock-svc" in cause["upstream"]
    finally:
        mesh.restart("clock")
    results = await fetch_many(gateway(mesh), 10, headers)
    assert {status for status, _ in results} == {200}


async def test_a_scenario_switch_under_steady_load_loses_no_request(mesh: LocalMesh) -> None:
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def load(client: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with client.get(gateway(mesh)) as resp:
                await resp.read()
                statuses[resp.status] += 1

    async with aiohttp.ClientSession() as client:
        workers = [asyncio.create_task(load(client)) for _ in range(8)]
        try:
            for scenario in ("canary", "prod", "current"):
                await asyncio.sleep(0.4)
                await asyncio.to_thread(mesh.use, scenario)
            await asyncio.sleep(0.4)
        finally:
            stop.set()
            await asyncio.gather(*workers)
    assert statuses[200] > 50
    assert set(statuses) == {200}, statuses


async def test_use_switches_the_running_mesh_to_the_named_scenarios_rules(mesh: LocalMesh) -> None:
    try:
        await asyncio.to_thread(mesh.use, "canary")
        results = await fetch_many(gateway(mesh), 40)
        assert {tuple(path_of(b)) for _, b in results} == {
            ("front/prod", "middle/canary", "core/prod")
        }
        await asyncio.to_thread(mesh.use, "dev")
        results = await fetch_many(gateway(mesh), 40)
        assert {tuple(path_of(b)) for _, b in results} == {
            ("front/prod", "middle/dev", "core/test", "clock/prod")
        }
    finally:
        await asyncio.to_thread(mesh.use, "current")


async def test_the_local_mesh_routes_by_the_charts_rendered_rules(mesh: LocalMesh) -> None:
    """Values given to `helm install` change local routing the same way: one source of rules."""
    from tests.manifests.support import tool

    values = tool.scenario_values(
        "current",
        {"routing": {"weights": {"canary": 100, "prod": 0}, "match": {"betaUser": "alice"}}},
    )
    rules = [
        obj
        for obj in tool.render_objects(values)
        if obj["apiVersion"].startswith("networking.istio.io/")
    ]
    assert mesh.layout.manifests_dir is not None
    target = mesh.layout.manifests_dir / "mesh" / "scenarios" / "helm-values.yaml"
    target.write_text(tool.dump(rules))
    try:
        await asyncio.to_thread(mesh.use, "helm-values")
        plain = await fetch_many(gateway(mesh), 40)
        alice = await fetch_many(gateway(mesh), 20, {"x-dev-user": "alice"})
        beta = await fetch_many(gateway(mesh), 20, {"x-dev-user": "betaUser"})
    finally:
        await asyncio.to_thread(mesh.use, "current")
    assert {path_of(b)[1] for _, b in plain} == {"middle/canary"}
    assert {path_of(b)[1] for _, b in alice} == {"middle/dev"}
    assert "middle/dev" not in {path_of(b)[1] for _, b in beta}


def test_the_mesh_envoy_runs_one_worker_thread(mesh: LocalMesh) -> None:
    # One worker costs less Envoy CPU per request than two here (bench/README.md).
    assert mesh.ports is not None
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(f"http://127.0.0.1:{mesh.ports.admin}/server_info") as response:
        info = json.loads(response.read())
    assert info["command_line_options"]["concurrency"] == 1
