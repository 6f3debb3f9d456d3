"""The sidecar shape, as configuration: per-workload outbound, per-replica inbound listeners."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import usvc_mesh as mesh
from tests.mesh.conftest import deployment, service
from usvc_mesh import envoy, supervisor
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
    translation = translated(beta(Inbound("beta-1", APP)))
    (endpoint,) = lb_endpoints(translation, "outbound|80||beta.default.svc.cluster.local")
    listener = {"server_listener_name": "inbound|9101||beta-1"}
    assert endpoint["address"] == {"envoy_internal_address": listener}
    process = {"socket_address": {"address": "127.0.0.1", "port_value": APP[1]}}
    assert endpoint["health_check_config"] == {"address": process}
    cluster = translation.cluster("outbound|80||beta.default.svc.cluster.local")
    socket = cluster["transport_socket"]["name"]
    assert socket == "envoy.transport_sockets.internal_upstream"  # carries the filter state
    (app,) = lb_endpoints(translation, "inbound|9101||beta-1")
    assert app["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9101}


def test_a_draining_replica_keeps_its_inbound_but_leaves_the_endpoints() -> None:
    """A rolling restart: the old replica is out of the endpoints, its inbound still forwards."""
    sidecar = beta(Inbound("beta-1", APP), Inbound("beta-1", OTHER))
    translation = translated(sidecar, endpoints=[OTHER])
    endpoints = lb_endpoints(translation, "outbound|80||beta.default.svc.cluster.local")
    names = [e["address"]["envoy_internal_address"]["server_listener_name"] for e in endpoints]
    assert names == ["inbound|9102||beta-1"]
    assert lb_endpoints(translation, "inbound|9101||beta-1")  # still there


def test_each_workload_has_an_outbound_listener_and_each_replica_an_inbound(
    tmp_path: Path,
) -> None:
    sidecar = beta(Inbound("beta-1", APP), Inbound("beta-2", OTHER))
    listeners = {x["name"]: x for x in envoy.sidecar_listeners([sidecar], tmp_path)}
    assert set(listeners) == {"beta|outbound", "inbound|9101||beta-1", "inbound|9102||beta-2"}
    outbound = listeners["beta|outbound"]
    assert outbound["address"]["socket_address"]["port_value"] == 9200
    assert outbound["traffic_direction"] == "OUTBOUND"  # its spans are CLIENT spans
    hcm = outbound["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == "outbound"
    inbound = listeners["inbound|9101||beta-1"]
    assert inbound["traffic_direction"] == "INBOUND"  # SERVER spans
    assert inbound["internal_listener"] == {} and "address" not in inbound  # no socket
    hcm = inbound["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["cluster"] == "inbound|9101||beta-1"
    assert route["route"]["timeout"] == "0s"  # istiod's inbound route: no timeout


def test_spans_and_access_lines_name_the_workload(tmp_path: Path) -> None:
    """istiod's span tags (pilot/pkg/networking/core/tracing.go), the workload in access lines."""
    (outbound, _) = envoy.sidecar_listeners([beta(Inbound("beta-1", APP))], tmp_path)
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
    one = translated(beta(Inbound("beta-1", APP), Inbound("beta-2", OTHER)))
    two = translated(beta(Inbound("beta-2", OTHER), Inbound("beta-1", APP)))
    assert envoy.versions(one)["lds"] == envoy.versions(two)["lds"]


def test_the_identity_is_the_deployments_service_account() -> None:
    """istio.io Security: a workload's identity is its Kubernetes service account."""
    named = deployment("beta", app="beta")
    named["spec"]["template"]["spec"] = {"serviceAccountName": "beta-sa"}
    assert service_account(named) == "beta-sa"
    assert service_account(deployment("alpha", app="alpha")) == "default"
    assert beta().principal == "cluster.local/ns/default/sa/beta-sa"
    assert beta().spiffe_id == "spiffe://cluster.local/ns/default/sa/beta-sa"


def filter_names(listener: dict[str, Any]) -> list[str]:
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [f["name"] for f in hcm["http_filters"]]


def test_the_outbound_listener_stamps_the_workloads_identity_for_the_inbound(
    tmp_path: Path,
) -> None:
    """What mTLS carries in a cluster: the caller's SPIFFE identity, to the callee's inbound."""
    (outbound, inbound) = envoy.sidecar_listeners([beta(Inbound("beta-1", APP))], tmp_path)
    hcm = outbound["filter_chains"][0]["filters"][0]["typed_config"]
    (stamp,) = [f for f in hcm["http_filters"] if f["name"].endswith("set_filter_state")]
    (entry,) = stamp["typed_config"]["on_request_headers"]
    assert entry["object_key"] == "usvc.peer_principal"
    # Hashable: Envoy keys the upstream connection pool on it (envoy.string has no hash).
    assert entry["factory_key"] == "envoy.hashable_string"
    assert entry["shared_with_upstream"] == "ONCE"
    value = entry["format_string"]["text_format_source"]["inline_string"]
    assert value == "spiffe://cluster.local/ns/default/sa/beta-sa"
    # The inbound stamps nothing and routes nothing: only its router (and, later, RBAC).
    assert filter_names(inbound) == ["envoy.filters.http.router"]
    fields = inbound["filter_chains"][0]["filters"][0]["typed_config"]["access_log"][0]
    json_format = fields["typed_config"]["log_format"]["json_format"]
    assert json_format["peer"] == "%FILTER_STATE(usvc.peer_principal:PLAIN)%"


def test_the_gateway_stamps_istios_ingress_gateway_identity(tmp_path: Path) -> None:
    """k8s/mesh/security.yaml: front admits the ingress gateway's service account."""
    config = envoy.bootstrap(tmp_path, mesh.MeshPorts(gateway=1, outbound=0, admin=3))
    (gateway,) = config["static_resources"]["listeners"]
    hcm = gateway["filter_chains"][0]["filters"][0]["typed_config"]
    (stamp,) = [f for f in hcm["http_filters"] if f["name"].endswith("set_filter_state")]
    (entry,) = stamp["typed_config"]["on_request_headers"]
    value = entry["format_string"]["text_format_source"]["inline_string"]
    assert value == "spiffe://cluster.local/ns/istio-ingress/sa/istio-ingressgateway"


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
    sidecar = beta(Inbound("beta-1", APP))
    envoy.write_bootstrap(tmp_path, mesh.MeshPorts(gateway=1, outbound=0, admin=3))
    envoy.write(tmp_path, translated(sidecar))
    names = {x["name"] for x in envoy.static_config(tmp_path)["static_resources"]["listeners"]}
    assert names == {"gateway", "beta|outbound", "inbound|9101||beta-1"}
    envoy.validate(tmp_path)  # Envoy's own check of the whole configuration


def test_an_inbound_retries_a_request_reset_before_it_reached_the_replica(
    tmp_path: Path,
) -> None:
    """A rolling restart loses no request (tests/chain/test_supervision.py), as in Istio.

    istiod's inbound route (pilot/pkg/networking/core/route/route.go
    BuildDefaultHTTPInboundRoute, route/retry/retry.go defaultInboundRetryOn)
    retries a request reset before it reached the application; and the inbound
    cluster drops idle connections before the supervisor stops a drained replica,
    so Envoy never puts a request on a connection the replica is closing.
    """
    (_, inbound) = envoy.sidecar_listeners([beta(Inbound("beta-1", APP))], tmp_path)
    hcm = inbound["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["retry_policy"] == {"retry_on": "reset-before-request", "num_retries": 2}
    cluster = translated(beta(Inbound("beta-1", APP))).cluster("inbound|9101||beta-1")
    (http,) = cluster["typed_extension_protocol_options"].values()
    idle = float(http["common_http_protocol_options"]["idle_timeout"].rstrip("s"))
    assert idle < supervisor.ENDPOINT_PROPAGATION
