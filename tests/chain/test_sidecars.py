"""A sidecar per workload in the one local Envoy: the shape Istio gives every pod.

Each workload calls through its own outbound listener (its ``EGRESS_PROXY``)
and each replica is reached through its own inbound listener, so the mesh
knows who calls whom (istio.io: Architecture, "Envoy ... deployed as a
sidecar to the relevant service in the same Kubernetes pod").
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chain.conftest import start_mesh
from usvc_mesh import envoy
from usvc_mesh.sidecars import IDENTITY_NOTE
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


def access_lines(
    mesh: LocalMesh, request_id: str, listener: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """Envoy's access lines of one request, once they are written (flushed every second).

    Once there are two, or once there is one of ``listener`` (listener, workload).
    """
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
        if listener is None and len(found) >= 2:
            return found
        if listener in {(x["listener"], x["workload"]) for x in found}:
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
    status, body = through(mesh, "core-prod", "http://clock-svc/", **{"x-request-id": "sc-1"})
    assert status == 200, body
    lines = access_lines(mesh, "sc-1")
    assert {(line["listener"], line["workload"]) for line in lines} == {
        ("outbound", "core-prod"),
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
    names = {envoy.host_name(h["address"]) for h in front["host_statuses"]}
    assert names == {f"inbound|{m.port}||{m.name}" for m in mesh.workloads["front"].members}


def test_core_refuses_front_and_admits_middle_by_their_identities(mesh: LocalMesh) -> None:
    """k8s/mesh/security.yaml: core admits only middle's service account (issue 10, item 8).

    Called from front's own outbound listener, core's inbound answers Envoy's
    ``403 RBAC: access denied``, as in the cluster; from middle's, 200. The callee's
    sidecar reads the identity that, in a cluster, the caller's mTLS certificate
    carries. Front and middle alternate on the same core replicas: were the upstream
    connections not kept apart by the identity they carry (Envoy keys its pools on
    the hashable shared filter state), one caller's request would ride the other's
    idle connection and arrive with its identity.
    """
    expected = {"front": 403, "middle-prod": 200}
    seen: dict[str, set[str]] = {}
    for round_ in range(3):
        for caller, status_wanted in expected.items():
            request_id = f"sc-id-{caller}-{round_}"
            status, body = through(mesh, caller, "http://core-svc/", **{"x-request-id": request_id})
            assert status == status_wanted, body
            if status == 403:
                assert body == b"RBAC: access denied"
            lines = access_lines(mesh, request_id, ("inbound", "core-prod"))
            (inbound,) = [x for x in lines if x["listener"] == "inbound"]
            seen.setdefault(caller, set()).add(inbound["peer"])
    sidecars = {s.workload: s for s in mesh.sidecars()}
    assert seen == {caller: {sidecars[caller].spiffe_id} for caller in expected}
    assert sidecars["front"].spiffe_id != sidecars["middle-prod"].spiffe_id


def test_the_gateway_reaches_front_as_istios_ingress_gateway(mesh: LocalMesh) -> None:
    """k8s/mesh/security.yaml admits the ingress gateway's service account to front."""
    assert mesh.ports is not None and mesh.run_dir is not None
    url = f"http://127.0.0.1:{mesh.ports.gateway}/?marker=sc-gw-id"
    with DIRECT.open(urllib.request.Request(url), timeout=10) as response:
        assert response.status == 200
    deadline = time.monotonic() + 10
    edge: list[dict[str, Any]] = []
    while not edge and time.monotonic() < deadline:
        text = (mesh.run_dir / "envoy-access.log").read_text()
        edge = [x for x in map(json.loads, text.splitlines()) if x["path"] == "/?marker=sc-gw-id"]
        time.sleep(0.1)
    (gateway,) = [x for x in edge if x["listener"] == "gateway"]
    lines = access_lines(mesh, gateway["request_id"], ("inbound", "front"))
    front = [x for x in lines if (x["listener"], x["workload"]) == ("inbound", "front")]
    assert {x["peer"] for x in front} == {
        "spiffe://cluster.local/ns/istio-ingress/sa/istio-ingressgateway"
    }
    # Envoy names an internal address envoy://LISTENER/ (Address::EnvoyInternalInstance).
    assert gateway["upstream_host"] in {
        f"envoy://inbound|{m.port}||{m.name}/" for m in mesh.workloads["front"].members
    }


def test_usvc_up_says_once_how_the_local_identity_differs_from_istios_mtls(
    mesh: LocalMesh,
) -> None:
    assert mesh.warnings.count(IDENTITY_NOTE) == 1
    assert "not in an mTLS certificate" in IDENTITY_NOTE


def test_under_the_charts_strict_mode_a_plaintext_client_at_a_pod_address_gets_no_answer(
    mesh: LocalMesh,
) -> None:
    """k8s/mesh/security.yaml: PeerAuthentication ``default`` is STRICT for the namespace.

    istio.io, "PeerAuthentication": STRICT accepts mutual TLS only, so a client
    without a sidecar is refused at the pod address; each replica's plain listener
    (its pod address, ``ports.pod`` in mesh.json) closes such a connection before
    any HTTP. The mesh's own calls still arrive (the other tests here).
    """
    assert mesh.run_dir is not None
    pods = json.loads((mesh.run_dir / "mesh.json").read_text())["ports"]["pod"]
    member = mesh.workloads["front"].members[0]
    assert pods[member.name] == member.pod_port
    with socket.create_connection(("127.0.0.1", member.pod_port), timeout=5) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n")
        try:
            answer = client.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert answer == b""
