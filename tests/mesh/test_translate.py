"""The translator, without Envoy: each Istio field becomes the Envoy field istiod writes.

References: docs/istio-envoy.md (from istiod's route.go, retry.go,
cluster_traffic_policy.go) and Istio's own validation for what is an error.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

import usvc_mesh as tr
from tests.mesh.conftest import (
    deployment,
    destination_rule,
    gateway,
    istio,
    service,
    virtual_service,
)
from usvc_mesh.spec import envoy_duration, parse_duration

FQDN = "middleware-svc.default.svc.cluster.local"
ENDPOINTS = {
    "middle-dev": ("127.0.0.1", 9001),
    "middle-canary": ("127.0.0.1", 9002),
    "middle-prod": ("127.0.0.1", 9003),
    "front": ("127.0.0.1", 9004),
}
SUBSETS = {"dev": {"env": "dev"}, "canary": {"env": "canary"}, "prod": {"env": "prod"}}
UNLIMITED = 4_294_967_295


def workloads() -> list[dict[str, Any]]:
    return [
        deployment("middle-dev", app="middle", env="dev"),
        deployment("middle-canary", app="middle", env="canary"),
        deployment("middle-prod", app="middle", env="prod"),
        deployment("front", app="front"),
        service("middleware-svc", {"app": "middle"}),
        service("front-svc", {"app": "front"}),
    ]


def middle_rule(**spec: Any) -> dict[str, Any]:
    return destination_rule("middleware-svc", "middleware-svc", SUBSETS, **spec)


def mesh_of(
    *objects: dict[str, Any], rule: dict[str, Any] | None = None, **kw: Any
) -> tr.Translation:
    """The demo's middle tier plus ``objects``; ``rule`` replaces its DestinationRule."""
    kw.setdefault("endpoints", ENDPOINTS)
    return tr.translate([*workloads(), rule or middle_rule(), *objects], **kw)


def to(subset: str = "prod", **extra: Any) -> dict[str, Any]:
    return {"destination": {"host": "middleware-svc", "subset": subset}, **extra}


def middle_vs(*http: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return virtual_service("middleware-svc", ["middleware-svc"], list(http), **spec)


def routes_of(translation: tr.Translation, domain: str = "middleware-svc") -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = translation.virtual_host("outbound", domain)["routes"]
    return routes


def route_for(*http: dict[str, Any], rule: dict[str, Any] | None = None) -> dict[str, Any]:
    """The first outbound route a VirtualService for middleware-svc with ``http`` produces."""
    return routes_of(mesh_of(middle_vs(*http), rule=rule))[0]


def cluster_of(translation: tr.Translation, subset: str = "", port: int = 80) -> dict[str, Any]:
    return translation.cluster(f"outbound|{port}|{subset}|{FQDN}")


# -- host names ---------------------------------------------------------------


def test_every_short_and_long_service_name_reaches_the_same_virtual_host() -> None:
    virtual_host = mesh_of().virtual_host("outbound", "middleware-svc")
    for name in ("middleware-svc", "middleware-svc.default", "middleware-svc.default.svc", FQDN):
        assert name in virtual_host["domains"]
        assert f"{name}:80" in virtual_host["domains"]


def test_a_short_name_unique_across_namespaces_reaches_a_service_in_another_namespace() -> None:
    other = service("clock-svc", {"app": "clock"})
    other["metadata"]["namespace"] = "tools"
    translation = mesh_of(other)
    virtual_host = translation.virtual_host("outbound", "clock-svc")
    assert virtual_host["name"] == "clock-svc.tools.svc.cluster.local:80"


def test_an_ambiguous_short_name_goes_to_the_default_namespace() -> None:
    other = service("middleware-svc", {"app": "middle"})
    other["metadata"]["namespace"] = "tools"
    translation = mesh_of(other)
    assert translation.virtual_host("outbound", "middleware-svc")["name"] == f"{FQDN}:80"
    assert (
        "middleware-svc"
        not in translation.virtual_host("outbound", "middleware-svc.tools")["domains"]
    )


def test_a_destination_in_long_form_names_the_same_cluster_as_the_short_form() -> None:
    long = {"destination": {"host": "middleware-svc.default.svc", "subset": "prod"}}
    assert route_for({"route": [long]})["route"]["cluster"] == f"outbound|80|prod|{FQDN}"


def test_a_port_other_than_80_is_reached_only_with_its_port_unless_it_is_the_only_one() -> None:
    translation = tr.translate(
        [deployment("a", app="a"), service("a-svc", {"app": "a"}, 80, 9090)],
        endpoints={"a": ("127.0.0.1", 9001)},
    )
    assert "a-svc" in translation.virtual_host("outbound", "a-svc:80")["domains"]
    assert "a-svc" not in translation.virtual_host("outbound", "a-svc:9090")["domains"]


def sidecar(**spec: Any) -> dict[str, Any]:
    return istio("Sidecar", "default", spec)


def test_an_unknown_host_passes_through_by_default_like_istios_allow_any() -> None:
    translation = mesh_of()
    (route,) = translation.virtual_host("outbound", "*")["routes"]
    assert route["route"]["cluster"] == "PassthroughCluster"
    passthrough = translation.cluster("PassthroughCluster")
    assert passthrough["cluster_type"]["name"] == "envoy.clusters.dynamic_forward_proxy"


def test_a_namespace_sidecar_with_registry_only_answers_502_for_an_unknown_host() -> None:
    translation = mesh_of(sidecar(outboundTrafficPolicy={"mode": "REGISTRY_ONLY"}))
    (route,) = translation.virtual_host("outbound", "*")["routes"]
    assert route["direct_response"]["status"] == 502
    with pytest.raises(KeyError):
        translation.cluster("PassthroughCluster")


def test_the_mesh_default_outbound_policy_can_be_registry_only() -> None:
    translation = mesh_of(outbound_traffic_policy="REGISTRY_ONLY")
    assert translation.virtual_host("outbound", "*")["name"] == "block_all"


def test_a_sidecar_for_some_workloads_only_is_refused_naming_the_field() -> None:
    # one Envoy serves every workload: a per-workload Sidecar cannot be honoured
    with pytest.raises(tr.UnsupportedField, match=r"Sidecar default: workloadSelector"):
        mesh_of(sidecar(workloadSelector={"labels": {"app": "front"}}))


def test_a_sidecar_limiting_egress_hosts_is_refused_naming_the_field() -> None:
    with pytest.raises(tr.UnsupportedField, match=r"egress\[0\]\.hosts"):
        mesh_of(sidecar(egress=[{"hosts": ["./*"]}]))


def test_an_unknown_outbound_mode_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"outboundTrafficPolicy\.mode must be ALLOW_ANY or"):
        mesh_of(sidecar(outboundTrafficPolicy={"mode": "ALLOW_SOME"}))


def test_a_route_without_timeout_lets_grpc_timeout_bound_the_call() -> None:
    # route.go setTimeout: max_grpc_timeout 0s (the grpc-timeout header applies unbounded)
    assert route_for({"route": [to()]})["route"]["max_grpc_timeout"] == "0s"


def test_a_route_timeout_is_also_the_grpc_timeout_cap() -> None:
    action = route_for({"route": [to()], "timeout": "3s"})["route"]
    assert (action["timeout"], action["max_grpc_timeout"]) == ("3s", "3s")


# -- istiod's defaults ------------------------------------------------------------


def test_a_service_without_virtual_service_gets_istiods_default_route() -> None:
    route = routes_of(mesh_of(), "front-svc")[0]
    assert route["name"] == "default"
    assert route["match"] == {"prefix": "/"}
    assert route["route"]["cluster"] == "outbound|80||front-svc.default.svc.cluster.local"
    assert route["decorator"]["operation"] == "front-svc.default.svc.cluster.local:80/*"


def test_the_route_timeout_defaults_to_0s_which_disables_it() -> None:
    assert route_for({"route": [to()]})["route"]["timeout"] == "0s"
    assert routes_of(mesh_of(), "front-svc")[0]["route"]["timeout"] == "0s"


def test_the_default_retry_policy_is_istios() -> None:
    policy = route_for({"route": [to()]})["route"]["retry_policy"]
    assert policy["num_retries"] == 2
    assert (
        policy["retry_on"]
        == "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    )
    assert [p["name"] for p in policy["retry_host_predicate"]] == [
        "envoy.retry_host_predicates.previous_hosts"
    ]
    assert policy["host_selection_retry_max_attempts"] == 5
    assert "retriable_status_codes" not in policy


def test_clusters_get_istios_unlimited_circuit_breakers() -> None:
    thresholds = cluster_of(mesh_of())["circuit_breakers"]["thresholds"][0]
    for key in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        assert thresholds[key] == UNLIMITED


def test_clusters_default_to_least_request_and_a_10s_connect_timeout() -> None:
    cluster = cluster_of(mesh_of())
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert cluster["connect_timeout"] == "10s"


def test_clusters_are_named_like_istiods() -> None:
    names = {c["name"] for c in mesh_of().clusters}
    assert {f"outbound|80||{FQDN}", f"outbound|80|dev|{FQDN}", f"outbound|80|prod|{FQDN}"} <= names


def _ports(cluster: dict[str, Any]) -> list[int]:
    return [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for group in cluster["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    ]


def test_the_service_cluster_holds_every_running_workload_the_selector_selects() -> None:
    endpoints = {k: v for k, v in ENDPOINTS.items() if k != "middle-dev"}
    assert sorted(_ports(cluster_of(mesh_of(endpoints=endpoints)))) == [9002, 9003]


def test_a_selector_takes_every_label_in_its_own_namespace_in_deployment_order() -> None:
    """Services select through a label index (O(n) for n Services): the same endpoints."""
    other = deployment("other-ns", app="middle", env="prod")
    other["metadata"]["namespace"] = "elsewhere"
    objects = [
        deployment("b-prod", app="middle", env="prod", tier="x"),
        deployment("a-dev", app="middle", env="dev"),
        other,
        deployment("c-prod", app="middle", env="prod"),
        deployment("front", app="front", env="prod"),
        service("prod-svc", {"app": "middle", "env": "prod"}),
        service("all-svc", {"app": "middle"}),
        service("none-svc", {"app": "middle", "env": "absent"}),
        service("empty-svc", {}),
    ]
    ports = {"b-prod": 9001, "a-dev": 9002, "other-ns": 9003, "c-prod": 9004, "front": 9005}
    translation = tr.translate(objects, endpoints={k: ("127.0.0.1", p) for k, p in ports.items()})

    def selected(name: str) -> list[int]:
        return _ports(translation.cluster(f"outbound|80||{name}.default.svc.cluster.local"))

    assert selected("prod-svc") == [9001, 9004]
    assert selected("all-svc") == [9001, 9002, 9004]
    assert selected("none-svc") == []
    assert selected("empty-svc") == []


def test_a_subset_cluster_holds_only_workloads_with_the_subset_labels() -> None:
    assert _ports(cluster_of(mesh_of(), "canary")) == [9002]


def test_a_subset_that_selects_nothing_is_empty_and_warned_about() -> None:
    rule = destination_rule("middleware-svc", "middleware-svc", {**SUBSETS, "v3": {"env": "v3"}})
    translation = mesh_of(rule=rule)
    assert _ports(cluster_of(translation, "v3")) == []
    assert any("subset v3" in warning for warning in translation.warnings)


# -- VirtualService match ------------------------------------------------------------


def match_of(match: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = route_for({"match": [match], "route": [to()]})["match"]
    return result


def test_a_header_exact_match_is_a_case_sensitive_string_match() -> None:
    headers = match_of({"headers": {"x-dev-user": {"exact": "betaUser"}}})["headers"]
    assert headers == [{"name": "x-dev-user", "string_match": {"exact": "betaUser"}}]


def test_header_prefix_and_regex_matches() -> None:
    headers = match_of({"headers": {"a": {"prefix": "be"}, "b": {"regex": "b.+"}}})["headers"]
    assert headers == [
        {"name": "a", "string_match": {"prefix": "be"}},
        {"name": "b", "string_match": {"safe_regex": {"regex": "b.+"}}},
    ]


def test_an_empty_header_match_or_regex_star_means_present() -> None:
    headers = match_of({"headers": {"a": {}, "b": {"regex": "*"}}})["headers"]
    assert headers == [{"name": "a", "present_match": True}, {"name": "b", "present_match": True}]


def test_without_headers_inverts_the_match_and_treats_a_missing_header_as_empty() -> None:
    headers = match_of({"withoutHeaders": {"x-dev-user": {"exact": "betaUser"}}})["headers"]
    assert headers == [
        {
            "name": "x-dev-user",
            "string_match": {"exact": "betaUser"},
            "invert_match": True,
            "treat_missing_header_as_empty": True,
        }
    ]


def test_uri_exact_prefix_and_regex_become_path_prefix_and_safe_regex() -> None:
    assert match_of({"uri": {"exact": "/hello"}})["path"] == "/hello"
    assert match_of({"uri": {"prefix": "/api"}})["prefix"] == "/api"
    assert match_of({"uri": {"regex": "/v[0-9]+/.*"}})["safe_regex"] == {"regex": "/v[0-9]+/.*"}


def test_ignore_uri_case_clears_case_sensitive() -> None:
    assert match_of({"uri": {"prefix": "/a"}})["case_sensitive"] is True
    assert match_of({"uri": {"prefix": "/a"}, "ignoreUriCase": True})["case_sensitive"] is False


def test_method_authority_and_scheme_match_pseudo_headers() -> None:
    headers = match_of(
        {"method": {"exact": "GET"}, "authority": {"prefix": "mid"}, "scheme": {"exact": "http"}}
    )["headers"]
    assert headers == [
        {"name": ":method", "string_match": {"exact": "GET"}},
        {"name": ":authority", "string_match": {"prefix": "mid"}},
        {"name": ":scheme", "string_match": {"exact": "http"}},
    ]


def test_query_params_become_query_parameter_matchers() -> None:
    params = match_of({"queryParams": {"debug": {"exact": "1"}, "trace": {}}})["query_parameters"]
    assert params == [
        {"name": "debug", "string_match": {"exact": "1"}},
        {"name": "trace", "present_match": True},
    ]


def test_each_match_entry_is_one_route_named_rule_dot_match() -> None:
    rule = {
        "name": "beta",
        "match": [
            {"name": "a", "headers": {"x": {"exact": "1"}}},
            {"name": "b", "headers": {"y": {"exact": "2"}}},
        ],
        "route": [to("dev")],
    }
    routes = routes_of(mesh_of(middle_vs(rule, {"route": [to()]})))
    assert [r["name"] for r in routes] == ["beta.a", "beta.b", "middleware-svc.http[1]"]


def test_rules_after_a_catch_all_rule_are_dropped() -> None:
    routes = routes_of(mesh_of(middle_vs({"route": [to("prod")]}, {"route": [to("dev")]})))
    assert [r["route"]["cluster"] for r in routes] == [f"outbound|80|prod|{FQDN}"]


def test_a_match_port_keeps_the_rule_to_that_service_port() -> None:
    objects = [
        deployment("a", app="a"),
        service("a-svc", {"app": "a"}, 80, 9090),
        virtual_service(
            "a-svc",
            ["a-svc"],
            [
                {
                    "match": [{"port": 9090}],
                    "route": [{"destination": {"host": "a-svc", "port": {"number": 9090}}}],
                },
                {"route": [{"destination": {"host": "a-svc", "port": {"number": 80}}}]},
            ],
        ),
    ]
    translation = tr.translate(objects, endpoints={"a": ("127.0.0.1", 9001)})
    assert [r["route"]["cluster"] for r in routes_of(translation, "a-svc:9090")] == [
        "outbound|9090||a-svc.default.svc.cluster.local"
    ]
    assert [r["route"]["cluster"] for r in routes_of(translation, "a-svc:80")] == [
        "outbound|80||a-svc.default.svc.cluster.local"
    ]


def test_a_match_naming_a_gateway_applies_only_at_that_gateway() -> None:
    vs = virtual_service(
        "front",
        ["front-svc"],
        [
            {
                "match": [{"gateways": ["front-gateway"], "headers": {"x": {"exact": "1"}}}],
                "route": [to("dev")],
            },
            {"route": [{"destination": {"host": "front-svc"}}]},
        ],
        gateways=["front-gateway", "mesh"],
    )
    translation = mesh_of(gateway(), vs)
    assert len(translation.virtual_host("gateway", "front-svc")["routes"]) == 2
    assert len(routes_of(translation, "front-svc")) == 1


# -- VirtualService route ------------------------------------------------------------


def test_a_single_destination_routes_to_its_subset_cluster() -> None:
    assert route_for({"route": [to("dev")]})["route"]["cluster"] == f"outbound|80|dev|{FQDN}"


def test_several_destinations_become_weighted_clusters_without_the_zero_weights() -> None:
    route = route_for(
        {"route": [to("canary", weight=20), to("prod", weight=80), to("dev", weight=0)]}
    )
    assert route["route"]["weighted_clusters"] == {
        "clusters": [
            {"name": f"outbound|80|canary|{FQDN}", "weight": 20},
            {"name": f"outbound|80|prod|{FQDN}", "weight": 80},
        ]
    }


def test_weights_are_relative_and_need_not_add_up_to_100() -> None:
    # Istio dropped the "total must be 100" rule; only a total of 0 is invalid.
    route = route_for({"route": [to("canary", weight=1), to("prod", weight=3)]})
    assert [c["weight"] for c in route["route"]["weighted_clusters"]["clusters"]] == [1, 3]


def test_timeout_sets_the_route_timeout() -> None:
    assert route_for({"route": [to()], "timeout": "1.5s"})["route"]["timeout"] == "1.5s"


def test_retries_set_attempts_per_try_timeout_and_conditions() -> None:
    retries = {
        "attempts": 4,
        "perTryTimeout": "2s",
        "retryOn": "5xx,connect-failure,refused-stream,reset",
    }
    policy = route_for({"route": [to()], "retries": retries})["route"]["retry_policy"]
    assert policy["num_retries"] == 4
    assert policy["per_try_timeout"] == "2s"
    assert policy["retry_on"] == "5xx,connect-failure,refused-stream,reset"
    assert policy["host_selection_retry_max_attempts"] == 5


def test_status_codes_in_retry_on_become_retriable_status_codes() -> None:
    retries = {"attempts": 3, "retryOn": "gateway-error,503,429"}
    policy = route_for({"route": [to()], "retries": retries})["route"]["retry_policy"]
    assert policy["retry_on"] == "gateway-error,retriable-status-codes"
    assert policy["retriable_status_codes"] == [503, 429]


def test_retries_with_zero_attempts_remove_the_retry_policy() -> None:
    assert "retry_policy" not in route_for({"route": [to()], "retries": {"attempts": 0}})["route"]


def test_retry_ignore_previous_hosts_false_drops_the_host_predicate() -> None:
    retries = {"attempts": 2, "retryIgnorePreviousHosts": False}
    policy = route_for({"route": [to()], "retries": retries})["route"]["retry_policy"]
    assert "retry_host_predicate" not in policy


def test_retry_remote_localities_and_backoff() -> None:
    retries = {"attempts": 2, "retryRemoteLocalities": True, "backoff": "100ms"}
    policy = route_for({"route": [to()], "retries": retries})["route"]["retry_policy"]
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert policy["retry_back_off"] == {"base_interval": "0.1s"}


def test_a_fault_delay_switches_on_the_fault_filter_for_the_route() -> None:
    fault = {"delay": {"fixedDelay": "2s", "percentage": {"value": 12.5}}}
    config = route_for({"route": [to()], "fault": fault})["typed_per_filter_config"][
        "envoy.filters.http.fault"
    ]
    assert config["@type"].endswith("envoy.extensions.filters.http.fault.v3.HTTPFault")
    assert config["delay"] == {
        "fixed_delay": "2s",
        "percentage": {"numerator": 125_000, "denominator": "MILLION"},
    }


def test_a_fault_abort_sets_status_and_percentage() -> None:
    fault = {"abort": {"httpStatus": 503, "percentage": {"value": 50}}}
    config = route_for({"route": [to()], "fault": fault})["typed_per_filter_config"][
        "envoy.filters.http.fault"
    ]
    assert config["abort"] == {
        "http_status": 503,
        "percentage": {"numerator": 500_000, "denominator": "MILLION"},
    }


def test_a_fault_without_percentage_injects_nothing_as_in_istio() -> None:
    fault = {"abort": {"httpStatus": 503}}
    config = route_for({"route": [to()], "fault": fault})["typed_per_filter_config"][
        "envoy.filters.http.fault"
    ]
    assert config["abort"]["percentage"]["numerator"] == 0


def test_a_grpc_abort_uses_the_grpc_status_number() -> None:
    fault = {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}
    config = route_for({"route": [to()], "fault": fault})["typed_per_filter_config"][
        "envoy.filters.http.fault"
    ]
    assert config["abort"]["grpc_status"] == 14


def test_header_set_add_and_remove_on_request_and_response() -> None:
    headers = {
        "request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]},
        "response": {"set": {"x-d": "4"}, "remove": ["server"]},
    }
    route = route_for({"route": [to()], "headers": headers})
    assert route["request_headers_to_add"] == [
        {"header": {"key": "x-a", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-b", "value": "2"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
    ]
    assert route["request_headers_to_remove"] == ["x-c"]
    assert route["response_headers_to_add"] == [
        {"header": {"key": "x-d", "value": "4"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
    ]
    assert route["response_headers_to_remove"] == ["server"]


def test_setting_the_host_header_rewrites_the_authority() -> None:
    route = route_for({"route": [to()], "headers": {"request": {"set": {"host": "other"}}}})
    assert route["route"]["host_rewrite_literal"] == "other"
    assert "request_headers_to_add" not in route


def test_destination_headers_go_on_their_weighted_cluster() -> None:
    canary = to("canary", weight=20, headers={"request": {"set": {"x-canary": "yes"}}})
    clusters = route_for({"route": [canary, to("prod", weight=80)]})["route"]["weighted_clusters"][
        "clusters"
    ]
    assert clusters[0]["request_headers_to_add"][0]["header"] == {"key": "x-canary", "value": "yes"}
    assert "request_headers_to_add" not in clusters[1]


def test_mirror_with_percentage_becomes_a_request_mirror_policy() -> None:
    rule = {
        "route": [to()],
        "mirror": {"host": "middleware-svc", "subset": "dev"},
        "mirrorPercentage": {"value": 10},
    }
    assert route_for(rule)["route"]["request_mirror_policies"] == [
        {
            "cluster": f"outbound|80|dev|{FQDN}",
            "runtime_fraction": {"default_value": {"numerator": 100_000, "denominator": "MILLION"}},
            "trace_sampled": False,
            # the copy keeps the original Host (Istio >= 1.28's default)
            "disable_shadow_host_suffix_append": True,
        }
    ]


def test_mirror_without_percentage_mirrors_everything() -> None:
    rule = {"route": [to()], "mirror": {"host": "middleware-svc", "subset": "dev"}}
    policy = route_for(rule)["route"]["request_mirror_policies"][0]
    assert policy["runtime_fraction"]["default_value"]["numerator"] == 1_000_000


def test_rewrite_uri_and_authority() -> None:
    route = route_for({"route": [to()], "rewrite": {"uri": "/v2/", "authority": "core"}})
    assert route["route"]["prefix_rewrite"] == "/v2/"
    assert route["route"]["host_rewrite_literal"] == "core"


def test_uri_regex_rewrite_becomes_regex_rewrite() -> None:
    rewrite = {"uriRegexRewrite": {"match": "^/old/(.*)", "rewrite": "/new/\\1"}}
    route = route_for({"route": [to()], "rewrite": rewrite})
    assert route["route"]["regex_rewrite"] == {
        "pattern": {"regex": "^/old/(.*)"},
        "substitution": "/new/\\1",
    }


def test_redirect_and_direct_response() -> None:
    redirect = route_for({"redirect": {"uri": "/new", "authority": "x", "redirectCode": 302}})
    assert redirect["redirect"] == {
        "path_redirect": "/new",
        "host_redirect": "x",
        "response_code": "FOUND",
    }
    direct = route_for({"directResponse": {"status": 418, "body": {"string": "teapot"}}})
    assert direct["direct_response"] == {"status": 418, "body": {"inline_string": "teapot"}}


def test_the_decorator_names_the_span_host_port_and_path() -> None:
    route = route_for({"match": [{"uri": {"prefix": "/api"}}], "route": [to()]})
    assert route["decorator"]["operation"] == f"{FQDN}:80/api*"


def test_consistent_hash_puts_a_hash_policy_on_the_route_and_a_ring_hash_on_the_cluster() -> None:
    rule = middle_rule(
        trafficPolicy={"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}
    )
    route = route_for({"route": [to()]}, rule=rule)
    assert route["route"]["hash_policy"] == [{"header": {"header_name": "x-user"}}]
    # Retries must stay on the hashed host.
    assert "retry_host_predicate" not in route["route"]["retry_policy"]
    cluster = cluster_of(mesh_of(rule=rule), "prod")
    assert cluster["lb_policy"] == "RING_HASH"
    assert cluster["ring_hash_lb_config"] == {"minimum_ring_size": 1024}


# -- DestinationRule ---------------------------------------------------------------------


def test_load_balancer_simple_sets_the_lb_policy() -> None:
    rule = middle_rule(trafficPolicy={"loadBalancer": {"simple": "ROUND_ROBIN"}})
    assert cluster_of(mesh_of(rule=rule), "prod")["lb_policy"] == "ROUND_ROBIN"


def test_connection_pool_sets_circuit_breakers_timeouts_and_per_connection_limits() -> None:
    pool = {
        "tcp": {"maxConnections": 10, "connectTimeout": "250ms"},
        "http": {
            "http1MaxPendingRequests": 5,
            "http2MaxRequests": 20,
            "maxRetries": 3,
            "maxRequestsPerConnection": 1,
            "idleTimeout": "30s",
        },
    }
    cluster = cluster_of(mesh_of(rule=middle_rule(trafficPolicy={"connectionPool": pool})))
    thresholds = cluster["circuit_breakers"]["thresholds"][0]
    assert (thresholds["max_connections"], thresholds["max_pending_requests"]) == (10, 5)
    assert (thresholds["max_requests"], thresholds["max_retries"]) == (20, 3)
    assert cluster["connect_timeout"] == "0.25s"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["common_http_protocol_options"] == {
        "max_requests_per_connection": 1,
        "idle_timeout": "30s",
    }


def test_outlier_detection_sets_ejection_and_switches_panic_routing_off() -> None:
    outlier = {
        "consecutive5xxErrors": 3,
        "consecutiveGatewayErrors": 0,
        "interval": "1s",
        "baseEjectionTime": "30s",
        "maxEjectionPercent": 50,
    }
    cluster = cluster_of(mesh_of(rule=middle_rule(trafficPolicy={"outlierDetection": outlier})))
    assert cluster["outlier_detection"] == {
        "enforcing_success_rate": 0,
        "consecutive_5xx": 3,
        "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": 0,
        "enforcing_consecutive_gateway_failure": 0,
        "interval": "1s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 50,
    }
    assert cluster["common_lb_config"] == {"healthy_panic_threshold": {"value": 0.0}}


def test_min_health_percent_sets_the_panic_threshold() -> None:
    rule = middle_rule(trafficPolicy={"outlierDetection": {"minHealthPercent": 40}})
    assert cluster_of(mesh_of(rule=rule))["common_lb_config"]["healthy_panic_threshold"] == {
        "value": 40.0
    }


def test_a_subset_traffic_policy_replaces_the_top_level_section_for_that_subset_only() -> None:
    rule = middle_rule(trafficPolicy={"loadBalancer": {"simple": "RANDOM"}})
    rule["spec"]["subsets"][0]["trafficPolicy"] = {"loadBalancer": {"simple": "ROUND_ROBIN"}}
    translation = mesh_of(rule=rule)
    assert cluster_of(translation, "dev")["lb_policy"] == "ROUND_ROBIN"
    assert cluster_of(translation, "prod")["lb_policy"] == "RANDOM"


def test_port_level_settings_apply_to_their_port_only() -> None:
    objects = [
        deployment("a", app="a"),
        service("a-svc", {"app": "a"}, 80, 9090),
        istio(
            "DestinationRule",
            "a",
            {
                "host": "a-svc",
                "trafficPolicy": {
                    "portLevelSettings": [
                        {"port": {"number": 9090}, "loadBalancer": {"simple": "RANDOM"}}
                    ]
                },
            },
        ),
    ]
    translation = tr.translate(objects, endpoints={"a": ("127.0.0.1", 9001)})
    assert (
        translation.cluster("outbound|9090||a-svc.default.svc.cluster.local")["lb_policy"]
        == "RANDOM"
    )
    assert (
        translation.cluster("outbound|80||a-svc.default.svc.cluster.local")["lb_policy"]
        == "LEAST_REQUEST"
    )


def test_istio_mutual_tls_is_accepted_because_local_plaintext_is_what_apps_see() -> None:
    rule = middle_rule(trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}})
    assert "transport_socket" not in cluster_of(mesh_of(rule=rule))


# -- ServiceEntry ------------------------------------------------------------------------


def service_entry(resolution: str = "DNS", *ports: tuple[int, str]) -> dict[str, Any]:
    return istio(
        "ServiceEntry",
        "worldtimeapi",
        {
            "hosts": ["worldtimeapi.org"],
            "location": "MESH_EXTERNAL",
            "resolution": resolution,
            "ports": [
                {"number": n, "name": p.lower(), "protocol": p} for n, p in ports or [(80, "HTTP")]
            ],
        },
    )


def test_a_service_entry_with_a_local_stand_in_is_a_static_cluster_on_it() -> None:
    translation = mesh_of(service_entry(), externals={"worldtimeapi.org": ("127.0.0.1", 9200)})
    cluster = translation.cluster("outbound|80||worldtimeapi.org")
    assert cluster["type"] == "STATIC"
    assert _ports(cluster) == [9200]


def test_a_service_entry_without_a_stand_in_resolves_by_dns() -> None:
    cluster = mesh_of(service_entry()).cluster("outbound|80||worldtimeapi.org")
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "worldtimeapi.org", "port_value": 80}
    }


def test_dns_round_robin_resolution_is_a_logical_dns_cluster() -> None:
    cluster = mesh_of(service_entry("DNS_ROUND_ROBIN")).cluster("outbound|80||worldtimeapi.org")
    assert cluster["type"] == "LOGICAL_DNS"


def test_a_service_entry_host_is_routed_on_the_outbound_listener() -> None:
    virtual_host = mesh_of(service_entry()).virtual_host("outbound", "worldtimeapi.org")
    assert virtual_host["routes"][0]["route"]["cluster"] == "outbound|80||worldtimeapi.org"


def test_a_tls_port_is_a_connect_tunnel() -> None:
    translation = mesh_of(service_entry("DNS", (80, "HTTP"), (443, "TLS")))
    route = translation.virtual_host("outbound", "worldtimeapi.org:443")["routes"][0]
    assert route["match"] == {"connect_matcher": {}}
    assert route["route"]["upgrade_configs"] == [{"upgrade_type": "CONNECT", "connect_config": {}}]


def test_resolution_none_passes_the_call_to_the_host_the_request_names() -> None:
    # istio.io ServiceEntry resolution NONE: "forward to the original destination"
    cluster = mesh_of(service_entry("NONE")).cluster("outbound|80||worldtimeapi.org")
    assert cluster["cluster_type"]["name"] == "envoy.clusters.dynamic_forward_proxy"
    assert "load_assignment" not in cluster


# -- Gateway --------------------------------------------------------------------------


def front_vs(hosts: list[str], **spec: Any) -> dict[str, Any]:
    spec.setdefault("gateways", ["front-gateway"])
    return virtual_service(
        "front", hosts, [{"route": [{"destination": {"host": "front-svc"}}]}], **spec
    )


def test_a_virtual_service_bound_to_a_gateway_routes_on_the_gateway_listener_only() -> None:
    translation = mesh_of(gateway(), front_vs(["*"]))
    route = translation.virtual_host("gateway", "*")["routes"][0]
    assert route["route"]["cluster"] == "outbound|80||front-svc.default.svc.cluster.local"
    assert routes_of(translation, "front-svc")[0]["name"] == "default"


def test_a_gateway_host_accepts_any_port_in_the_host_header() -> None:
    translation = mesh_of(gateway(hosts=("front.example.com",)), front_vs(["front.example.com"]))
    assert translation.virtual_host("gateway", "front.example.com")["domains"] == [
        "front.example.com",
        "front.example.com:*",
    ]


def test_a_virtual_service_host_outside_its_gateways_hosts_is_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"VirtualService front: hosts\[0\] 'b.example' matches no host"
    ):
        mesh_of(gateway(hosts=("a.example",)), front_vs(["b.example"]))


def test_a_virtual_service_naming_an_unknown_gateway_is_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"VirtualService front: gateways\[0\] 'nope' names no Gateway"
    ):
        mesh_of(gateway(), front_vs(["*"], gateways=["nope"]))


def test_https_redirect_on_a_gateway_server_requires_tls_on_its_hosts() -> None:
    redirecting = gateway()
    redirecting["spec"]["servers"][0]["tls"] = {"httpsRedirect": True}
    translation = mesh_of(redirecting, front_vs(["*"]))
    (virtual_host,) = translation.gateway_routes["virtual_hosts"]
    assert virtual_host["require_tls"] == "ALL"


def test_an_https_server_gets_a_listener_of_its_own_with_an_sni_filter_chain() -> None:
    # pilot/pkg/networking/core/gateway.go: a listener per port, a chain per server.
    https = gateway(hosts=("front.example.com",))
    https["spec"]["servers"].append(
        {
            "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["front.example.com"],
            "tls": {"mode": "SIMPLE", "credentialName": "front-cert"},
        }
    )
    translation = mesh_of(https, front_vs(["front.example.com"]))
    plain, secure = translation.gateway_listeners
    assert (plain.port, plain.name, plain.https) == (80, "gateway", False)
    assert (secure.port, secure.name, secure.https) == (443, "gateway.443", True)
    (chain,) = secure.chains
    assert chain.server_names == ("front.example.com",)
    assert chain.routes == "https.443.https.front-gateway.default"
    assert chain.tls is not None and chain.tls.certificate is None  # no Secret: made at start
    assert translation.virtual_host(chain.routes, "front.example.com")["routes"]


def test_an_https_gateway_server_needs_tls_settings() -> None:
    https = gateway()
    https["spec"]["servers"][0]["port"]["protocol"] = "HTTPS"
    with pytest.raises(
        ValueError, match=r"Gateway front-gateway: servers\[0\].tls.mode is required"
    ):
        mesh_of(https)


# -- errors ---------------------------------------------------------------------------

MIDDLE_RULE: dict[str, Any] = {"name": "r", "route": [to("prod")]}


def vs_with(**fields: Any) -> dict[str, Any]:
    return middle_vs({**copy.deepcopy(MIDDLE_RULE), **fields})


def test_a_jwt_claim_match_in_a_mesh_route_is_refused_as_gateway_only() -> None:
    # istio.io VirtualService HTTPMatchRequest.headers: claim matches are for gateways.
    vs = vs_with(match=[{"headers": {"@request.auth.claims.groups": {"exact": "admin"}}}])
    message = (
        "VirtualService middleware-svc: http[0].match[0].headers.@request.auth.claims.groups "
        "is not supported by the local mesh (JWT claim routing is supported only for gateways"
    )
    with pytest.raises(tr.UnsupportedField, match=re.escape(message)):
        mesh_of(vs)


UNSUPPORTED = {
    "http[0].delegate": vs_with(delegate={"name": "x"}),
    "tcp": middle_vs(MIDDLE_RULE, tcp=[{"route": [to()]}]),
    "tls": middle_vs(MIDDLE_RULE, tls=[{"route": [to()]}]),
    "http[0].fault.delay.exponentialDelay": vs_with(fault={"delay": {"exponentialDelay": "1s"}}),
    "http[0].fault.abort.http2Error": vs_with(fault={"abort": {"http2Error": "x"}}),
}


@pytest.mark.parametrize("path", UNSUPPORTED)
def test_an_unsupported_virtual_service_field_is_an_error_naming_object_and_path(path: str) -> None:
    message = f"VirtualService middleware-svc: {path} is an Istio field the local mesh does not"
    with pytest.raises(tr.UnsupportedField, match=re.escape(message)):
        mesh_of(UNSUPPORTED[path])


def test_export_to_own_namespace_is_applied_when_every_workload_is_in_it() -> None:
    translation = mesh_of(middle_vs({"route": [to("canary")]}, exportTo=["."]))
    assert "canary" in routes_of(translation)[0]["route"]["cluster"]


def test_export_to_hiding_a_rule_from_a_local_workloads_namespace_is_refused() -> None:
    # istio.io VirtualService exportTo: "." exports to the object's namespace only
    other = {**deployment("shop", app="shop"), "metadata": {"name": "shop", "namespace": "shop"}}
    vs = middle_vs({"route": [to("canary")]}, exportTo=["."])
    with pytest.raises(tr.UnsupportedField, match=r"VirtualService middleware-svc: exportTo.*shop"):
        mesh_of(vs, other)


def test_export_to_hiding_a_destination_rule_is_refused_too() -> None:
    other = {**deployment("shop", app="shop"), "metadata": {"name": "shop", "namespace": "shop"}}
    with pytest.raises(tr.UnsupportedField, match=r"DestinationRule .*: exportTo"):
        mesh_of(other, rule=middle_rule(exportTo=["~"]))


def test_a_gateway_virtual_service_with_export_to_is_applied_with_a_warning() -> None:
    vs = virtual_service(
        "front", ["*"], [{"route": [to()]}], gateways=["front-gateway"], exportTo=["."]
    )
    translation = mesh_of(gateway(), vs)
    assert any("exportTo" in w and "ingress gateway" in w for w in translation.warnings)


def test_a_delegate_virtual_service_without_hosts_is_refused_naming_delegates() -> None:
    child = virtual_service("child", [], [{"route": [to()]}])
    with pytest.raises(tr.UnsupportedField, match=r"VirtualService child: hosts .*delegate"):
        mesh_of(child)


def test_a_cors_policy_becomes_istiods_per_route_cors_config() -> None:
    cors = {
        "allowOrigins": [{"exact": "https://shop.example"}, {"regex": "https://.*\\.example"}],
        "allowMethods": ["GET", "POST"],
        "allowHeaders": ["x-dev-user"],
        "exposeHeaders": ["x-request-id"],
        "maxAge": "24h",
        "allowCredentials": True,
    }
    route = route_for({"route": [to()], "corsPolicy": cors})
    assert route["typed_per_filter_config"]["envoy.filters.http.cors"] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "forward_not_matching_preflights": True,
        "allow_origin_string_match": [
            {"exact": "https://shop.example"},
            {"safe_regex": {"regex": "https://.*\\.example"}},
        ],
        "allow_methods": "GET,POST",
        "allow_headers": "x-dev-user",
        "expose_headers": "x-request-id",
        "max_age": "86400",
        "allow_credentials": True,
    }


def test_cors_unmatched_preflights_ignore_answers_them_at_the_proxy() -> None:
    cors = {"allowOrigins": [{"exact": "a"}], "unmatchedPreflights": "IGNORE"}
    route = route_for({"route": [to()], "corsPolicy": cors})
    assert (
        route["typed_per_filter_config"]["envoy.filters.http.cors"][
            "forward_not_matching_preflights"
        ]
        is False
    )


def test_a_misspelt_cors_field_is_an_error_naming_it() -> None:
    with pytest.raises(tr.UnsupportedField, match=r"corsPolicy\.allowOrigns is not an Istio field"):
        route_for({"route": [to()], "corsPolicy": {"allowOrigns": [{"exact": "a"}]}})


def test_tls_simple_originates_tls_verified_against_the_system_roots_and_the_sni() -> None:
    rule = middle_rule(trafficPolicy={"tls": {"mode": "SIMPLE"}})
    socket = cluster_of(mesh_of(rule=rule), "prod")["transport_socket"]
    tls = socket["typed_config"]
    assert tls["sni"] == FQDN
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/etc/ssl/certs/ca-certificates.crt"}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": FQDN}}
    ]


def test_tls_insecure_skip_verify_drops_the_validation() -> None:
    tls = {"mode": "SIMPLE", "sni": "api.example", "insecureSkipVerify": True}
    socket = cluster_of(mesh_of(rule=middle_rule(trafficPolicy={"tls": tls})))["transport_socket"]
    assert socket["typed_config"]["sni"] == "api.example"
    assert socket["typed_config"]["common_tls_context"] == {}


RULE_UNSUPPORTED: dict[str, dict[str, Any]] = {
    "workloadSelector": {"workloadSelector": {"matchLabels": {"app": "x"}}},
    "trafficPolicy.tunnel": {"trafficPolicy": {"tunnel": {"targetHost": "x"}}},
    "trafficPolicy.loadBalancer.localityLbSetting": {
        "trafficPolicy": {"loadBalancer": {"localityLbSetting": {"enabled": True}}}
    },
    "trafficPolicy.connectionPool.http.maxConcurrentStreams": {
        "trafficPolicy": {"connectionPool": {"http": {"maxConcurrentStreams": 5}}}
    },
    "trafficPolicy.outlierDetection.consecutiveErrors": {
        "trafficPolicy": {"outlierDetection": {"consecutiveErrors": 5}}
    },
    "trafficPolicy.tls.credentialName": {
        "trafficPolicy": {"tls": {"mode": "SIMPLE", "credentialName": "secret"}}
    },
}


@pytest.mark.parametrize("path", RULE_UNSUPPORTED)
def test_an_unsupported_destination_rule_field_is_an_error_naming_object_and_path(
    path: str,
) -> None:
    with pytest.raises(
        tr.UnsupportedField,
        match=f"DestinationRule middleware-svc: {path} is an Istio field the local mesh does not",
    ):
        mesh_of(rule=middle_rule(**RULE_UNSUPPORTED[path]))


def test_an_unsupported_value_of_a_field_is_an_error_naming_the_value() -> None:
    with pytest.raises(
        tr.UnsupportedField,
        match=r"DestinationRule middleware-svc: trafficPolicy\.tls\.mode MUTUAL is not supported",
    ):
        mesh_of(rule=middle_rule(trafficPolicy={"tls": {"mode": "MUTUAL"}}))


# Istio fields newer than the chart's first local mesh (istio/api
# networking/v1alpha3/virtual_service.proto, destination_rule.proto), once reported as typos.
REAL_FIELDS_NOT_APPLIED: dict[str, tuple[str, dict[str, Any]]] = {
    "HTTPRedirect.prefixRewrite": (
        "VirtualService middleware-svc: http[0].redirect.prefixRewrite",
        {"vs": vs_with(route=None, redirect={"prefixRewrite": "/new"})},
    ),
    "OutlierDetection.outlierDetectionHttpErrorCodes": (
        "DestinationRule middleware-svc: trafficPolicy.outlierDetection"
        ".outlierDetectionHttpErrorCodes",
        {
            "rule": middle_rule(
                trafficPolicy={"outlierDetection": {"outlierDetectionHttpErrorCodes": [503]}}
            )
        },
    ),
    "LoadBalancerSettings.zoneAwareLbSetting": (
        "DestinationRule middleware-svc: trafficPolicy.loadBalancer.zoneAwareLbSetting",
        {"rule": middle_rule(trafficPolicy={"loadBalancer": {"zoneAwareLbSetting": {}}})},
    ),
    "HTTPSettings.http2KeepAlive": (
        "DestinationRule middleware-svc: trafficPolicy.connectionPool.http.http2KeepAlive",
        {
            "rule": middle_rule(
                trafficPolicy={"connectionPool": {"http": {"http2KeepAlive": {"interval": "1s"}}}}
            )
        },
    ),
    "HTTPCookie.attributes": (
        "DestinationRule middleware-svc: trafficPolicy.loadBalancer.consistentHash"
        ".httpCookie.attributes",
        {
            "rule": middle_rule(
                trafficPolicy={
                    "loadBalancer": {
                        "consistentHash": {
                            "httpCookie": {"name": "c", "attributes": [{"name": "a"}]}
                        }
                    }
                }
            )
        },
    ),
    "LoadBalancerSettings.zoneAwareLbSetting (port level)": (
        "DestinationRule middleware-svc: trafficPolicy.portLevelSettings[0].loadBalancer"
        ".zoneAwareLbSetting",
        {
            "rule": middle_rule(
                trafficPolicy={
                    "portLevelSettings": [
                        {"port": {"number": 80}, "loadBalancer": {"zoneAwareLbSetting": {}}}
                    ]
                }
            )
        },
    ),
}


@pytest.mark.parametrize("field", REAL_FIELDS_NOT_APPLIED)
def test_a_real_istio_field_is_reported_as_not_applied_not_as_misspelt(field: str) -> None:
    where, objects = REAL_FIELDS_NOT_APPLIED[field]
    escaped = re.escape(f"{where} is an Istio field the local mesh does not apply")
    with pytest.raises(tr.UnsupportedField, match=escaped):
        if "vs" in objects:
            mesh_of(objects["vs"])
        else:
            mesh_of(rule=objects["rule"])


MISSPELT = {
    "http[0].retries.atempts": vs_with(retries={"atempts": 3}),
    "http[0].route[0].wieght": vs_with(
        route=[{"destination": {"host": "middleware-svc"}, "wieght": 10}]
    ),
    "http[0].route[0].destination.subst": vs_with(
        route=[{"destination": {"host": "middleware-svc", "subst": "x"}}]
    ),
    "http[0].match[0].headers.x-dev-user.exakt": vs_with(
        match=[{"headers": {"x-dev-user": {"exakt": "a"}}}]
    ),
    "http[0].timout": vs_with(timout="1s"),
}


@pytest.mark.parametrize("path", MISSPELT)
def test_a_misspelt_field_is_an_error_naming_object_and_path(path: str) -> None:
    escaped = path.replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(
        tr.UnsupportedField,
        match=rf"VirtualService middleware-svc: {escaped} is not an Istio field of \w+ \(misspelt",
    ):
        mesh_of(MISSPELT[path])


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"timeout": "2 s"}, "timeout"),
        ({"timeout": 2}, "timeout"),
        ({"retries": {"attempts": 2, "perTryTimeout": "fast"}}, "retries.perTryTimeout"),
        (
            {"fault": {"delay": {"fixedDelay": "1x", "percentage": {"value": 1}}}},
            "fault.delay.fixedDelay",
        ),
    ],
)
def test_a_bad_duration_is_an_error_naming_the_field(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(
        ValueError, match=rf"VirtualService middleware-svc: http\[0\]\.{path} is not a duration"
    ):
        mesh_of(vs_with(**fields))


@pytest.mark.parametrize(
    ("text", "envoy"),
    [
        ("2s", "2s"),
        ("500ms", "0.5s"),
        ("1.5s", "1.5s"),
        ("1m", "60s"),
        ("1m30s", "90s"),
        ("1h", "3600s"),
        ("10us", "0.00001s"),
    ],
)
def test_durations_are_read_with_gos_grammar(text: str, envoy: str) -> None:
    nanos = parse_duration(text)
    assert nanos is not None
    assert envoy_duration(nanos) == envoy


def test_a_negative_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"http\[0\]\.route\[0\]\.weight must be >= 0"):
        mesh_of(vs_with(route=[to("canary", weight=-20), to("prod", weight=120)]))


def test_weights_adding_up_to_0_over_several_destinations_are_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"VirtualService middleware-svc: http\[0\]\.route weights add up to 0"
    ):
        mesh_of(vs_with(route=[to("canary"), to("prod")]))


def test_a_subset_no_destination_rule_defines_is_an_error_naming_the_route() -> None:
    with pytest.raises(
        ValueError,
        match=r"VirtualService middleware-svc: http\[0\]\.route\[0\]\.destination\.subset "
        r"'beta' is not defined",
    ):
        mesh_of(vs_with(route=[to("beta")]))


def test_an_unknown_destination_host_is_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"destination\.host 'nowhere' names no Service or ServiceEntry"
    ):
        mesh_of(vs_with(route=[{"destination": {"host": "nowhere"}}]))


def test_an_unknown_retry_condition_is_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"http\[0\]\.retries\.retryOn '5xxx' is not a retry condition"
    ):
        mesh_of(vs_with(retries={"attempts": 2, "retryOn": "5xxx"}))


def test_an_upper_case_header_name_in_a_match_is_an_error() -> None:
    with pytest.raises(ValueError, match="header names must be lower-case"):
        mesh_of(vs_with(match=[{"headers": {"X-Dev-User": {"exact": "a"}}}]))


def test_two_virtual_services_for_one_host_are_an_error() -> None:
    second = middle_vs(MIDDLE_RULE)
    second["metadata"]["name"] = "second"
    with pytest.raises(
        ValueError, match=r"VirtualService second: hosts\[0\] 'middleware-svc' is already routed"
    ):
        mesh_of(middle_vs(MIDDLE_RULE), second)


def test_endpoints_naming_no_deployment_are_an_error() -> None:
    with pytest.raises(ValueError, match="endpoints name no Deployment: midle-prod"):
        mesh_of(endpoints={**ENDPOINTS, "midle-prod": ("127.0.0.1", 1)})


def test_an_unknown_istio_api_version_is_an_error() -> None:
    vs = middle_vs(MIDDLE_RULE)
    vs["apiVersion"] = "networking.istio.io/v2"
    with pytest.raises(ValueError, match=r"apiVersion networking\.istio\.io/v2"):
        mesh_of(vs)


def test_cluster_only_kinds_are_ignored() -> None:
    ignored = [
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "x"},
            "spec": {"mtls": {"mode": "STRICT"}},
        },
        {
            "apiVersion": "telemetry.istio.io/v1",
            "kind": "Telemetry",
            "metadata": {"name": "x"},
            "spec": {"anything": 1},
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}},
    ]
    assert mesh_of(*ignored) == mesh_of()


# -- the bootstrap --------------------------------------------------------------------


def hcm(config: dict[str, Any], listener: str) -> dict[str, Any]:
    for candidate in config["static_resources"]["listeners"]:
        if candidate["name"] == listener:
            manager: dict[str, Any] = candidate["filter_chains"][0]["filters"][0]["typed_config"]
            return manager
    raise KeyError(listener)


PORTS = tr.MeshPorts(gateway=8080, outbound=15001, admin=15000)
CONFIG_DIR = Path("/run/mesh")


def test_the_bootstrap_listens_where_the_caller_says() -> None:
    config = tr.bootstrap(CONFIG_DIR, PORTS)
    addresses = {
        listener["name"]: listener["address"]["socket_address"]
        for listener in config["static_resources"]["listeners"]
    }
    assert addresses == {
        "gateway": {"address": "127.0.0.1", "port_value": 8080},
        "outbound": {"address": "127.0.0.1", "port_value": 15001},
    }
    assert config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 15000,
    }


def test_the_mesh_envoy_runs_one_worker_thread_by_default() -> None:
    # Cheaper per request than two on a 2-core laptop (bench/README.md: Envoy's parts).
    command = tr.envoy_command(Path("/run/mesh/bootstrap.json"))
    assert command[command.index("--concurrency") + 1] == "1"


def test_routes_and_clusters_come_from_files_in_the_config_dir() -> None:
    config = tr.bootstrap(CONFIG_DIR, PORTS)
    rds = hcm(config, "outbound")["rds"]
    assert rds["route_config_name"] == "outbound"
    assert rds["config_source"]["path_config_source"]["path"] == "/run/mesh/rds-outbound.json"
    assert (
        config["dynamic_resources"]["cds_config"]["path_config_source"]["path"]
        == "/run/mesh/cds.json"
    )


def test_the_cors_and_fault_filters_run_empty_before_the_router() -> None:
    # as istiod orders them; routes switch them on with typed_per_filter_config. First
    # the gateway's identity for the next inbound listener (usvc_mesh.sidecars).
    stamp, *filters = hcm(tr.bootstrap(CONFIG_DIR, PORTS), "gateway")["http_filters"]
    assert stamp["name"] == "envoy.filters.http.set_filter_state"
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]
    assert set(filters[0]["typed_config"]) == set(filters[1]["typed_config"]) == {"@type"}


def test_the_outbound_listener_resolves_passthrough_hosts_before_routing() -> None:
    filters = hcm(tr.bootstrap(CONFIG_DIR, PORTS), "outbound")["http_filters"]
    names = [f["name"] for f in filters]
    assert names.index("envoy.filters.http.dynamic_forward_proxy") == len(names) - 2


def test_listeners_generate_request_ids_and_trace_with_opentelemetry_over_otlp_http() -> None:
    config = tr.bootstrap(CONFIG_DIR, PORTS, collector=("127.0.0.1", 4318))
    manager = hcm(config, "outbound")
    assert manager["generate_request_id"] is True
    assert manager["tracing"]["random_sampling"] == {"value": 100.0}
    assert manager["tracing"]["provider"]["name"] == "envoy.tracers.opentelemetry"
    otel = manager["tracing"]["provider"]["typed_config"]
    assert otel["http_service"]["http_uri"] == {
        "uri": "http://127.0.0.1:4318/v1/traces",
        "cluster": "trace-collector",
        "timeout": "1s",
    }
    # Envoy's spans are the node's service, as the Zipkin tracer names them.
    assert otel["service_name"] == config["node"]["id"] == "usvc-local-mesh"
    # The gateway's spans name the ingress gateway, as a sidecar's name its workload.
    gateway = hcm(config, "gateway")["tracing"]["provider"]
    assert gateway["name"] == "envoy.tracers.opentelemetry"
    assert gateway["typed_config"]["service_name"] == "istio-ingressgateway.istio-ingress"


def test_the_zipkin_tracer_is_istios_zipkin_provider_with_b3() -> None:
    manager = hcm(
        tr.bootstrap(CONFIG_DIR, PORTS, collector=("127.0.0.1", 9411), tracer="zipkin"),
        "outbound",
    )
    zipkin = manager["tracing"]["provider"]["typed_config"]
    assert manager["tracing"]["provider"]["name"] == "envoy.tracers.zipkin"
    assert (zipkin["trace_id_128bit"], zipkin["shared_span_context"]) == (True, False)
    assert zipkin["collector_endpoint"] == "/api/v2/spans"
    # istiod always asks for JSON (pilot/pkg/networking/core/tracing.go).
    assert zipkin["collector_endpoint_version"] == "HTTP_JSON"


def test_w3c_adds_traceparent_to_the_b3_headers_envoy_reads_and_writes() -> None:
    plain = hcm(tr.bootstrap(CONFIG_DIR, PORTS, tracer="zipkin"), "outbound")["tracing"]
    both = hcm(tr.bootstrap(CONFIG_DIR, PORTS, tracer="zipkin", w3c=True), "outbound")["tracing"]
    assert "trace_context_option" not in plain["provider"]["typed_config"]
    assert both["provider"]["typed_config"]["trace_context_option"] == (
        "USE_B3_WITH_W3C_PROPAGATION"
    )


def test_w3c_is_refused_with_the_opentelemetry_tracer_which_is_w3c_anyway() -> None:
    with pytest.raises(ValueError, match="w3c"):
        tr.bootstrap(CONFIG_DIR, PORTS, w3c=True)
    with pytest.raises(ValueError, match="tracer"):
        tr.bootstrap(CONFIG_DIR, PORTS, tracer="jaeger")


def test_without_a_collector_spans_go_to_a_cluster_with_no_endpoints() -> None:
    (collector,) = tr.bootstrap(CONFIG_DIR, PORTS)["static_resources"]["clusters"]
    assert collector["name"] == "trace-collector"
    assert collector["load_assignment"]["endpoints"] == []


def test_the_outbound_listener_accepts_absolute_urls_from_http_proxy_clients() -> None:
    manager = hcm(tr.bootstrap(CONFIG_DIR, PORTS), "outbound")
    assert manager["http_protocol_options"] == {"allow_absolute_url": True}


def test_only_the_gateway_is_the_edge_for_x_forwarded_for() -> None:
    config = tr.bootstrap(CONFIG_DIR, PORTS)
    assert hcm(config, "gateway")["use_remote_address"] is True
    assert hcm(config, "outbound")["use_remote_address"] is False


def test_each_sidecars_opentelemetry_spans_name_its_workload_as_istiod_does() -> None:
    from usvc_mesh import envoy

    tags = {"istio.canonical_service": "front", "istio.namespace": "usvc"}
    otel = envoy._tagged_tracing(envoy._tracing(None, 100.0, False), tags)
    assert otel["provider"]["typed_config"]["service_name"] == "front.usvc"
    assert {"tag": "istio.namespace", "literal": {"value": "usvc"}} in otel["custom_tags"]
    # The Zipkin tracer has one service per process: the tags alone name the sidecar.
    zipkin = envoy._tagged_tracing(envoy._tracing(None, 100.0, False, envoy.ZIPKIN), tags)
    assert "service_name" not in zipkin["provider"]["typed_config"]
    # The shared tracing is not changed for the next listener.
    assert envoy._tracing(None, 100.0, False)["provider"]["typed_config"]["service_name"] == (
        "usvc-local-mesh"
    )
