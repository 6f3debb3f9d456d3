"""The sidecar shape, as configuration: per-workload outbound, per-replica inbound listeners."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import usvc_mesh as mesh
from tests.mesh.conftest import deployment, service
from usvc_mesh import envoy
from usvc_mesh.sidecars import Inbound, Sidecar, service_account
from usvc_mesh.telemetry.collector import otlp_from_zipkin

APP = ("127.0.0.1", 9101)
OTHER = ("127.0.0.1", 9102)


def beta(*inbounds: Inbound) -> Sidecar:
    return Sidecar("beta", "default", "beta-sa", {"app": "beta", "version": "v2"}, 9200, inbounds)


def translated(sidecar: Sidecar, endpoints: Any = APP) -> mesh.Translation:
    objects = [deployment("beta", app="beta"), service("beta", {"app": "beta"})]
    return mesh.translate(objects, endpoints={"beta": endpoints}, sidecars=[sidecar])


def lb_endpoints(translation: mesh.Translation, name: str) -> list[dict[str, Any]]:
    cluster = translation.cluster(name)
    groups = cluster["load_assignment"]["endpoints"]
    return [e["endpoint"] for group in groups for e in group["lb_endpoints"]]


def test_a_mesh_clusters_endpoints_are_the_inbound_listeners_probed_at_the_process() -> None:
    translation = translated(beta(Inbound("beta-1", 9301, APP)))
    (endpoint,) = lb_endpoints(translation, "outbound|80||beta.default.svc.cluster.local")
    assert endpoint["address"]["socket_address"]["port_value"] == 9301
    assert endpoint["health_check_config"] == {"port_value": APP[1]}
    (app,) = lb_endpoints(translation, "inbound|9101||beta-1")
    assert app["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9101}


def test_a_draining_replica_keeps_its_inbound_but_leaves_the_endpoints() -> None:
    """A rolling restart: the old replica is out of the endpoints, its inbound still forwards."""
    sidecar = beta(Inbound("beta-1", 9301, APP), Inbound("beta-1", 9302, OTHER))
    translation = translated(sidecar, endpoints=[OTHER])
    endpoints = lb_endpoints(translation, "outbound|80||beta.default.svc.cluster.local")
    assert [e["address"]["socket_address"]["port_value"] for e in endpoints] == [9302]
    assert lb_endpoints(translation, "inbound|9101||beta-1")  # still there


def test_each_workload_has_an_outbound_listener_and_each_replica_an_inbound(
    tmp_path: Path,
) -> None:
    sidecar = beta(Inbound("beta-1", 9301, APP), Inbound("beta-2", 9302, OTHER))
    listeners = {x["name"]: x for x in envoy.sidecar_listeners([sidecar], tmp_path)}
    assert set(listeners) == {"beta|outbound", "beta-1|inbound|9301", "beta-2|inbound|9302"}
    outbound = listeners["beta|outbound"]
    assert outbound["address"]["socket_address"]["port_value"] == 9200
    assert outbound["traffic_direction"] == "OUTBOUND"  # its spans are CLIENT spans
    hcm = outbound["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == "outbound"
    inbound = listeners["beta-1|inbound|9301"]
    assert inbound["traffic_direction"] == "INBOUND"  # SERVER spans
    hcm = inbound["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["cluster"] == "inbound|9101||beta-1"
    assert route["route"]["timeout"] == "0s"  # istiod's inbound route: no timeout


def test_spans_and_access_lines_name_the_workload(tmp_path: Path) -> None:
    """istiod's span tags (pilot/pkg/networking/core/tracing.go), the workload in access lines."""
    (outbound, _) = envoy.sidecar_listeners([beta(Inbound("beta-1", 9301, APP))], tmp_path)
    hcm = outbound["filter_chains"][0]["filters"][0]["typed_config"]
    tags = {t["tag"]: t["literal"]["value"] for t in hcm["tracing"]["custom_tags"]}
    assert tags == {
        "istio.canonical_service": "beta",
        "istio.canonical_revision": "v2",
        "istio.namespace": "default",
        "istio.mesh_id": "cluster.local",
    }
    fields = hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]
    assert (fields["listener"], fields["workload"]) == ("outbound", "beta")


def test_the_listeners_version_does_not_depend_on_the_order_of_replicas() -> None:
    """Envoy records an LDS version only when a listener changes; the same set, the same one."""
    one = translated(beta(Inbound("beta-1", 9301, APP), Inbound("beta-2", 9302, OTHER)))
    two = translated(beta(Inbound("beta-2", 9302, OTHER), Inbound("beta-1", 9301, APP)))
    assert envoy.versions(one)["lds"] == envoy.versions(two)["lds"]


def test_the_identity_is_the_deployments_service_account() -> None:
    """istio.io Security: a workload's identity is its Kubernetes service account."""
    named = deployment("beta", app="beta")
    named["spec"]["template"]["spec"] = {"serviceAccountName": "beta-sa"}
    assert service_account(named) == "beta-sa"
    assert service_account(deployment("alpha", app="alpha")) == "default"
    assert beta().principal == "cluster.local/ns/default/sa/beta-sa"


def test_the_collector_names_a_sidecars_span_after_istios_tags() -> None:
    span = {
        "traceId": "a" * 32,
        "id": "b" * 16,
        "localEndpoint": {"serviceName": "usvc-local-mesh"},
        "tags": {"istio.canonical_service": "beta", "istio.namespace": "default"},
    }
    plain = {"traceId": "a" * 32, "id": "c" * 16, "localEndpoint": {"serviceName": "front"}}
    request = otlp_from_zipkin(json.dumps([span, plain]).encode())
    names = [
        r["resource"]["attributes"][0]["value"]["stringValue"] for r in request["resourceSpans"]
    ]
    assert names == ["beta.default", "front"]


def test_a_static_check_sees_the_sidecar_listeners(tmp_path: Path) -> None:
    sidecar = beta(Inbound("beta-1", 9301, APP))
    envoy.write_bootstrap(tmp_path, mesh.MeshPorts(gateway=1, outbound=None, admin=3))
    envoy.write(tmp_path, translated(sidecar))
    names = {x["name"] for x in envoy.static_config(tmp_path)["static_resources"]["listeners"]}
    assert names == {"gateway", "beta|outbound", "beta-1|inbound|9301"}
    envoy.validate(tmp_path)  # Envoy's own check of the whole configuration
