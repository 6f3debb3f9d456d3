"""A sidecar per workload in the one local Envoy: the shape Istio gives every pod.

Each workload calls through its own outbound listener (its ``EGRESS_PROXY``)
and each replica is reached through its own inbound listener, so the mesh
knows who calls whom (istio.io: Architecture, "Envoy ... deployed as a
sidecar to the relevant service in the same Kubernetes pod").
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chain.conftest import start_mesh
from usvc_mesh.supervisor import LocalMesh

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    running = start_mesh(tmp_path_factory.mktemp("sidecars"))
    yield running
    running.stop()


def through(mesh: LocalMesh, caller: str, url: str, **headers: str) -> tuple[int, bytes]:
    """GET ``url`` as the workload ``caller`` sends it: to its own sidecar's outbound listener."""
    proxy = mesh.workloads[caller].env["EGRESS_PROXY"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    request = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def access_lines(mesh: LocalMesh, request_id: str) -> list[dict[str, Any]]:
    """Envoy's access lines of one request, once they are written (flushed every second)."""
    assert mesh.run_dir is not None
    deadline = time.monotonic() + 10
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        text = (mesh.run_dir / "envoy-access.log").read_text()
        found = [
            line
            for line in map(json.loads, text.splitlines())
            if line.get("request_id") == request_id
        ]
        if len(found) >= 2:
            return found
        time.sleep(0.1)
    return found


def test_every_workload_has_an_egress_proxy_of_its_own(mesh: LocalMesh) -> None:
    proxies = [w.env["EGRESS_PROXY"] for w in mesh.workloads.values()]
    assert len(set(proxies)) == len(proxies) == len(mesh.workloads)


def test_a_call_through_a_workloads_outbound_listener_reaches_the_callee_through_its_inbound(
    mesh: LocalMesh,
) -> None:
    """The access lines of one call: the caller's outbound side, the callee's inbound side."""
    status, body = through(mesh, "middle-prod", "http://clock-svc/", **{"x-request-id": "sc-1"})
    assert status == 200, body
    lines = access_lines(mesh, "sc-1")
    assert {(line["listener"], line["workload"]) for line in lines} == {
        ("outbound", "middle-prod"),
        ("inbound", "clock"),
    }
    (inbound,) = [line for line in lines if line["listener"] == "inbound"]
    clock_ports = {f"127.0.0.1:{m.port}" for m in mesh.workloads["clock"].members}
    assert inbound["upstream_host"] in clock_ports  # the inbound forwards to the process


def test_the_gateways_access_lines_name_the_ingress_gateway(mesh: LocalMesh) -> None:
    """The edge makes its own x-request-id, which every later hop carries."""
    assert mesh.ports is not None
    url = f"http://127.0.0.1:{mesh.ports.gateway}/?marker=sc-2"
    with DIRECT.open(urllib.request.Request(url), timeout=10) as response:
        assert response.status == 200
    assert mesh.run_dir is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [
            json.loads(x) for x in (mesh.run_dir / "envoy-access.log").read_text().splitlines()
        ]
        edge = [x for x in lines if x["listener"] == "gateway" and x["path"] == "/?marker=sc-2"]
        if edge:
            break
        time.sleep(0.1)
    (gateway,) = edge
    assert gateway["workload"] == "istio-ingressgateway"
    hops = access_lines(mesh, gateway["request_id"])
    assert ("inbound", "front") in {(x["listener"], x["workload"]) for x in hops}


def test_mesh_endpoints_are_the_replicas_inbound_listeners(mesh: LocalMesh) -> None:
    assert mesh.ports is not None
    url = f"http://127.0.0.1:{mesh.ports.admin}/clusters?format=json"
    with DIRECT.open(url, timeout=5) as response:
        dump = json.loads(response.read())
    (front,) = [
        c
        for c in dump["cluster_statuses"]
        if c["name"] == "outbound|80||front-svc.usvc.svc.cluster.local"
    ]
    ports = {h["address"]["socket_address"]["port_value"] for h in front["host_statuses"]}
    assert ports == {m.inbound_port for m in mesh.workloads["front"].members}
