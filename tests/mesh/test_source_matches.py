"""``sourceLabels``/``sourceNamespace`` matches: each caller's outbound listener sees its view.

istio.io VirtualService reference, HTTPMatchRequest: ``sourceLabels`` "constrain the
applicability of a rule to source (client) workloads with the given labels",
``sourceNamespace`` to "workloads in that namespace". istiod builds each proxy's routes
for that proxy and drops the match conditions it does not satisfy
(pilot/pkg/networking/core/route/route.go ``sourceMatchHTTP``, ``TranslateRoute``): a
rule all of whose matches are dropped is dropped, a rule without matches stays, a host
left without routes gets its default route, and a match naming ``gateways`` is decided
by those alone. Locally the workloads that see the same matches share one outbound
RouteConfiguration.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import usvc_mesh as mesh
from tests.mesh.conftest import (
    Backend,
    Backends,
    Envoy,
    deployment,
    destination_rule,
    gateway,
    service,
    start_envoy,
    stop_envoy,
    virtual_service,
)
from usvc_mesh import envoy as envoy_files
from usvc_mesh.sidecars import Inbound, Sidecar

CORE = "core.default.svc.cluster.local"
WORKLOADS = {  # name -> (namespace, pod labels)
    "front": ("default", {"app": "front", "version": "v1"}),
    "middle": ("default", {"app": "middle", "version": "v1"}),
    "batch": ("jobs", {"app": "batch"}),
    "core-a": ("default", {"app": "core", "version": "a"}),
    "core-b": ("default", {"app": "core", "version": "b"}),
}


def in_namespace(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    obj["metadata"]["namespace"] = namespace
    return obj


def core_vs(*http: dict[str, Any]) -> dict[str, Any]:
    return virtual_service("core", ["core"], list(http))


def to(subset: str, **rule: Any) -> dict[str, Any]:
    return {"route": [{"destination": {"host": "core", "subset": subset}}], **rule}


FRONT_TO_A = core_vs(to("a", match=[{"sourceLabels": {"app": "front"}}]), to("b"))
JOBS_TO_A = core_vs(to("a", match=[{"sourceNamespace": "jobs"}]), to("b"))
EVERYONE_TO_B = core_vs(to("b"))


def objects(*rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *(
            in_namespace(deployment(name, **labels), namespace)
            for name, (namespace, labels) in WORKLOADS.items()
        ),
        service("core", {"app": "core"}),
        destination_rule("core", "core", {"a": {"version": "a"}, "b": {"version": "b"}}),
        *rules,
    ]


def sidecars(ports: dict[str, int], apps: dict[str, tuple[str, int]]) -> list[Sidecar]:
    return [
        Sidecar(
            name,
            namespace,
            "default",
            labels,
            ports.get(name, 0),
            (Inbound(f"{name}-1", apps[name]),),
        )
        for name, (namespace, labels) in WORKLOADS.items()
    ]


APPS = {name: ("127.0.0.1", 9300 + i) for i, name in enumerate(WORKLOADS)}
PORTS = {name: 9400 + i for i, name in enumerate(WORKLOADS)}


def translated(*rules: dict[str, Any], ports: dict[str, int] = PORTS) -> mesh.Translation:
    return mesh.translate(objects(*rules), endpoints=APPS, sidecars=sidecars(ports, APPS))


def core_clusters(routes: dict[str, Any]) -> list[str]:
    (vhost,) = [v for v in routes["virtual_hosts"] if v["name"] == f"{CORE}:80"]
    return [r["route"]["cluster"] for r in vhost["routes"]]


def view_of(translation: mesh.Translation, workload: str) -> dict[str, Any]:
    (sidecar,) = [s for s in translation.sidecars if s.workload == workload]
    if sidecar.routes == "outbound":
        return translation.outbound_routes
    (view,) = [v for v in translation.outbound_views if v["name"] == sidecar.routes]
    return view


# -- configuration ---------------------------------------------------------------


def test_a_mesh_without_source_matches_has_one_outbound_route_configuration() -> None:
    translation = translated(EVERYONE_TO_B)
    assert translation.outbound_views == ()
    assert {s.routes for s in translation.sidecars} == {"outbound"}


def test_workloads_with_the_same_view_share_one_route_configuration() -> None:
    """front alone sees the sourceLabels match; every other workload sees ``outbound``."""
    translation = translated(FRONT_TO_A)
    routes = {s.workload: s.routes for s in translation.sidecars}
    assert routes == {
        "front": "outbound.front",
        "middle": "outbound",
        "batch": "outbound",
        "core-a": "outbound",
        "core-b": "outbound",
    }
    (view,) = translation.outbound_views
    # For front the match is a catch-all (prefix /): istiod stops there (IsCatchAllRoute).
    assert core_clusters(view) == [f"outbound|80|a|{CORE}"]
    # The catch-all rule is what a caller no match selects sees.
    assert core_clusters(translation.outbound_routes) == [f"outbound|80|b|{CORE}"]


def test_a_source_namespace_match_applies_to_the_workloads_of_that_namespace() -> None:
    translation = translated(JOBS_TO_A)
    assert {s.workload for s in translation.sidecars if s.routes != "outbound"} == {"batch"}
    assert core_clusters(view_of(translation, "batch"))[0] == f"outbound|80|a|{CORE}"
    assert core_clusters(view_of(translation, "front")) == [f"outbound|80|b|{CORE}"]


def test_every_source_label_must_be_among_the_callers_labels() -> None:
    """route.go sourceMatchHTTP: the match's labels are a subset of the proxy's."""
    both = core_vs(to("a", match=[{"sourceLabels": {"app": "front", "version": "v2"}}]), to("b"))
    translation = translated(both)
    assert translation.outbound_views == ()  # front is version v1: nobody sees the match


def test_a_rule_whose_every_match_is_dropped_leaves_the_host_its_default_route() -> None:
    """istiod: no routes for this proxy -> the Service's default virtual host."""
    translation = translated(core_vs(to("a", match=[{"sourceLabels": {"app": "front"}}])))
    assert core_clusters(view_of(translation, "front")) == [f"outbound|80|a|{CORE}"]
    assert core_clusters(view_of(translation, "middle")) == [f"outbound|80||{CORE}"]


def test_a_match_with_gateways_ignores_its_source_labels_as_istiod_does() -> None:
    rule = core_vs(to("a", match=[{"sourceLabels": {"app": "front"}, "gateways": ["mesh"]}]))
    translation = translated(rule)
    assert translation.outbound_views == ()
    assert core_clusters(translation.outbound_routes) == [f"outbound|80|a|{CORE}"]
    assert any("istiod ignores its sourceLabels" in w for w in translation.warnings)


def test_source_labels_must_map_strings_to_strings() -> None:
    rule = core_vs(to("a", match=[{"sourceLabels": ["app=front"]}]))
    with pytest.raises(ValueError, match=r"http\[0\]\.match\[0\]\.sourceLabels must be a mapping"):
        translated(rule)


def test_views_change_only_the_hosts_with_source_matches() -> None:
    """Every other virtual host of a view is ``outbound``'s own (no rebuild per view)."""
    other = service("other", {"app": "middle"})
    translation = mesh.translate(
        [*objects(FRONT_TO_A), other], endpoints=APPS, sidecars=sidecars(PORTS, APPS)
    )
    (view,) = translation.outbound_views
    pairs = zip(view["virtual_hosts"], translation.outbound_routes["virtual_hosts"], strict=True)
    shared = [a is b for a, b in pairs if a["name"] != f"{CORE}:80"]
    assert shared and all(shared)


def test_the_gateway_sees_source_label_matches_on_its_own_labels() -> None:
    """A gateway-bound VirtualService: istiod matches sourceLabels against the gateway pod's."""
    bound = {"gateways": ["front-gateway"], "hosts": ["*"]}
    rules = [
        gateway(),
        virtual_service(
            "edge",
            ["*"],
            [
                to("a", match=[{"sourceLabels": {"istio": "ingressgateway"}}]),
                to("b"),
            ],
            gateways=bound["gateways"],
        ),
    ]
    translation = mesh.translate(objects(*rules), endpoints=APPS)
    (vhost,) = translation.gateway_routes["virtual_hosts"]
    assert vhost["routes"][0]["route"]["cluster"] == f"outbound|80|a|{CORE}"
    elsewhere = {"sourceLabels": {"app": "front"}}
    rules[1]["spec"]["http"][0]["match"] = [elsewhere]
    (vhost,) = mesh.translate(objects(*rules), endpoints=APPS).gateway_routes["virtual_hosts"]
    assert [r["route"]["cluster"] for r in vhost["routes"]] == [f"outbound|80|b|{CORE}"]


def test_without_sidecars_a_source_match_is_reported_as_applying_to_no_caller() -> None:
    """compose: one shared outbound listener for every workload cannot tell callers apart."""
    translation = mesh.translate(objects(FRONT_TO_A), endpoints=APPS)
    assert core_clusters(translation.outbound_routes) == [f"outbound|80|b|{CORE}"]
    (warning,) = [w for w in translation.warnings if "sourceLabels" in w]
    assert "VirtualService core: http[0].match[0]" in warning
    assert "applies to no caller" in warning


def test_each_outbound_listener_subscribes_to_its_views_route_configuration(
    tmp_path: Path,
) -> None:
    translation = translated(FRONT_TO_A)
    envoy_files.write_bootstrap(tmp_path, mesh.MeshPorts(gateway=1, outbound=0, admin=3))
    envoy_files.write(tmp_path, translation)
    written = json.loads((tmp_path / "rds-outbound.front.json").read_text())
    assert written["resources"][0]["name"] == "outbound.front"
    assert envoy_files.versions(translation)["outbound.front"] == written["version_info"]
    listeners = envoy_files.static_config(tmp_path)["static_resources"]["listeners"]
    names = {
        x["name"]: x["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["name"]
        for x in listeners
        if x["name"].endswith("|outbound")
    }
    assert names["front|outbound"] == "outbound.front"
    assert names["middle|outbound"] == "outbound"
    envoy_files.validate(tmp_path)


# -- through the real Envoy -------------------------------------------------------


@pytest.fixture(scope="module")
def running(backends: Backends) -> Backends:
    for name in WORKLOADS:
        backends.add(Backend(name))
    return backends


def live(running: Backends, ports: dict[str, int], *rules: dict[str, Any]) -> mesh.Translation:
    apps = running.endpoints()
    return mesh.translate(objects(*rules), endpoints=apps, sidecars=sidecars(ports, apps))


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    from tests.mesh.conftest import free_port

    return {name: free_port() for name in WORKLOADS}


@pytest.fixture(scope="module")
def envoy(
    running: Backends, ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Envoy]:
    started = start_envoy(tmp_path_factory.mktemp("source"), live(running, ports, EVERYONE_TO_B))
    yield started
    stop_envoy(started)


def through(ports: dict[str, int], caller: str) -> str:
    """GET http://core/ through ``caller``'s outbound listener: which core answered."""
    proxy = urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{ports[caller]}"})
    with urllib.request.build_opener(proxy).open("http://core/", timeout=10) as response:
        return str(json.loads(response.read())["name"])


def test_two_callers_of_one_host_get_the_routes_of_their_own_views(
    envoy: Envoy, running: Backends, ports: dict[str, int]
) -> None:
    """Applied hot (as `mesh use` does): front's listener moves to its own view."""
    assert {through(ports, c) for c in ("front", "middle")} == {"core-b"}
    envoy.apply(live(running, ports, FRONT_TO_A))
    assert through(ports, "front") == "core-a"
    assert through(ports, "middle") == "core-b"
    assert through(ports, "batch") == "core-b"


def test_a_source_namespace_match_routes_the_callers_of_that_namespace(
    envoy: Envoy, running: Backends, ports: dict[str, int]
) -> None:
    envoy.apply(live(running, ports, JOBS_TO_A))  # front's view is gone again
    assert through(ports, "batch") == "core-a"
    assert through(ports, "front") == "core-b"
    envoy.apply(live(running, ports, EVERYONE_TO_B))
    assert through(ports, "batch") == "core-b"
