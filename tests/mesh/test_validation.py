"""The one Istio validator: Istio's schema, the rules its CEL and webhook add, what the
local mesh applies. Each rule's test names the Istio source it follows."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from usvc_mesh import cli, validation
from usvc_mesh.manifests import Layout

ROUTE = [{"destination": {"host": "x"}}]


def vs_with(route: list[dict[str, Any]] | None = None, **http: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "x"},
        "spec": {"hosts": ["x"], "http": [{"route": ROUTE if route is None else route, **http}]},
    }


def rule(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "x"},
        "spec": {"host": "x", **spec},
    }


def messages(obj: dict[str, Any]) -> list[str]:
    return [str(f) for f in validation.validate_object(obj)]


def split(a: int, b: int) -> list[dict[str, Any]]:
    return [
        {"destination": {"host": "x", "subset": "a"}, "weight": a},
        {"destination": {"host": "x", "subset": "b"}, "weight": b},
    ]


# -- the schema ----------------------------------------------------------------------


def test_a_misspelt_field_is_not_an_istio_field() -> None:
    assert messages(vs_with(retries={"atempts": 2})) == [
        "VirtualService x: http[0].retries.atempts: not an Istio field (misspelt?)"
    ]


def test_a_misspelt_metadata_key_is_not_an_istio_field() -> None:
    obj = vs_with()
    obj["metadata"]["lables"] = {}
    assert messages(obj) == ["VirtualService x: metadata.lables: not an Istio field (misspelt?)"]


def test_a_wrong_enum_value_names_its_path() -> None:
    obj = rule(trafficPolicy={"loadBalancer": {"simple": "FAST"}})
    (finding,) = validation.validate_object(obj)
    assert finding.where == "DestinationRule x"
    assert finding.message.startswith("trafficPolicy.loadBalancer.simple: Input should be")


@pytest.mark.parametrize(
    "obj",
    [
        # istio/api networking/v1alpha3/virtual_service.proto (HTTPRedirect, HTTPRetry)
        vs_with(route=[], redirect={"prefixRewrite": "/v2"}),
        vs_with(retries={"attempts": 2, "backoff": "50ms", "retryIgnorePreviousHosts": False}),
        # istio/api networking/v1alpha3/destination_rule.proto
        rule(trafficPolicy={"outlierDetection": {"outlierDetectionHttpErrorCodes": [503]}}),
        rule(trafficPolicy={"loadBalancer": {"zoneAwareLbSetting": {"enabled": True}}}),
        rule(trafficPolicy={"retryBudget": {"percent": {"value": 20}}}),
    ],
)
def test_istio_fields_newer_than_the_models_are_not_taken_for_typos(obj: dict[str, Any]) -> None:
    if not obj["spec"].get("http", [{}])[0].get("route", True):
        del obj["spec"]["http"][0]["route"]
    assert messages(obj) == []


def test_the_strict_models_are_a_private_copy() -> None:
    # Forbidding extra fields on cloudcoil's own classes would change them for every
    # other user in the process.
    import cloudcoil.models.istio.networking.v1 as shared

    strict = validation.strict_models("networking.istio.io/v1")
    assert strict.VirtualService is not shared.VirtualService
    assert strict.Retries.model_config.get("extra") == "forbid"
    assert shared.Retries.model_config.get("extra") != "forbid"


@pytest.mark.parametrize(
    ("kind", "path", "key", "known"),
    [
        ("VirtualService", "http[0].redirect", "prefixRewrite", True),
        ("VirtualService", "http[0].redirect", "prefixRewite", False),
        ("VirtualService", "http[0].match[0].headers.x-user", "exact", True),
        ("VirtualService", "http[0].match[0].headers.x-user", "exakt", False),
        ("DestinationRule", "subsets[0].trafficPolicy.loadBalancer", "zoneAwareLbSetting", True),
        ("Gateway", "servers[0]", "tls", True),
        ("AuthorizationPolicy", "rules[0].from[0].source", "principals", True),
    ],
)
def test_istio_fields_are_told_from_typos_by_istio_schema(
    kind: str, path: str, key: str, known: bool
) -> None:
    assert validation.is_istio_field(kind, path, key) is known


# -- rules beyond the schema (each cites its source) -----------------------------------


@pytest.mark.parametrize("text", ["5", "2 s", "two seconds", "-1s", "1d", ""])
def test_a_malformed_duration_is_rejected(text: str) -> None:
    # CRD CEL `duration(self) >= duration('1ms')`
    # (istio/api kubernetes/customresourcedefinitions.gen.yaml)
    assert messages(vs_with(timeout=text)) == [
        f"VirtualService x: http[0].timeout: {text!r} is not a duration (like 2s, 500ms, 1m30s)"
    ]


def test_a_duration_below_1ms_is_rejected() -> None:
    # CRD CEL `duration(self) >= duration('1ms')`
    assert messages(vs_with(timeout="500us")) == [
        "VirtualService x: http[0].timeout: '500us' is below Istio's minimum of 1ms"
    ]


def test_a_duration_finer_than_a_millisecond_is_rejected() -> None:
    # istio/istio pkg/config/validation/agent/validation.go ValidateDuration
    assert messages(vs_with(timeout="1500us")) == [
        "VirtualService x: http[0].timeout: '1500us' is finer than Istio's millisecond precision"
    ]


def test_durations_are_checked_in_every_duration_field() -> None:
    obj = rule(trafficPolicy={"outlierDetection": {"interval": "5"}})
    assert messages(obj) == [
        "DestinationRule x: trafficPolicy.outlierDetection.interval: '5' is not a duration "
        "(like 2s, 500ms, 1m30s)"
    ]


def test_a_zero_tcp_idle_timeout_is_allowed() -> None:
    # validation.go validateConnectionPool: 0s disables the TCP idle timeout.
    assert messages(rule(trafficPolicy={"connectionPool": {"tcp": {"idleTimeout": "0s"}}})) == []


def redirect(match: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    obj = vs_with(redirect=fields, **({"match": match} if match else {}))
    del obj["spec"]["http"][0]["route"]
    return obj


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        # pkg/config/validation/validation.go validateWeight
        pytest.param(
            vs_with(split(-20, 120)),
            "VirtualService x: http[0].route[0].weight: -20 is negative",
            id="a-negative-weight",
        ),
        # validation.go validateHTTPRouteDestinations: "total destination weight = 0"
        pytest.param(
            vs_with(split(0, 0)),
            "VirtualService x: http[0].route: the weights add up to 0 "
            "(total destination weight = 0)",
            id="weights-that-add-up-to-zero",
        ),
        # pkg/config/validation/agent/validation.go ValidateHTTPRetry, supportedRetryOnPolicies
        pytest.param(
            vs_with(retries={"attempts": 2, "retryOn": "5xx,gateway-eror"}),
            "VirtualService x: http[0].retries.retryOn: 'gateway-eror' is not a retry condition "
            "or HTTP status code",
            id="an-unknown-retry-condition",
        ),
        # agent/validation.go ValidateHTTPRetry: "http retry policy configured when attempts
        # are set to 0 (disabled)"
        pytest.param(
            vs_with(retries={"attempts": 0, "perTryTimeout": "1s"}),
            "VirtualService x: http[0].retries: a retry policy with attempts 0 (retries disabled)",
            id="a-retry-policy-with-zero-attempts",
        ),
        # istio/api networking/v1alpha3/virtual_service.proto: "The header keys must be lowercase"
        pytest.param(
            vs_with(match=[{"headers": {"X-Dev-User": {"exact": "betaUser"}}}]),
            "VirtualService x: http[0].match[0].headers: 'X-Dev-User' must be lower case",
            id="an-upper-case-header-match",
        ),
        # validation.go ValidateHTTPHeaderNameOrJwtClaimRoute (RFC 7230 token characters)
        pytest.param(
            vs_with(match=[{"headers": {"x user": {"exact": "a"}}}]),
            "VirtualService x: http[0].match[0].headers: 'x user' is not a valid header name",
            id="a-header-name-that-is-no-token",
        ),
        # validation.go validatePercentage
        pytest.param(
            vs_with(fault={"abort": {"httpStatus": 503, "percentage": {"value": 150}}}),
            "VirtualService x: http[0].fault.abort.percentage.value: 150 is neither 0 nor within "
            "0.0001-100",
            id="a-fault-percentage-above-100",
        ),
        # validation.go validatePercentage: "neither 0.0, nor in range [0.0001, 100.0]"
        pytest.param(
            vs_with(fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 0.00001}}}),
            "VirtualService x: http[0].fault.delay.percentage.value: 1e-05 is neither 0 nor within "
            "0.0001-100",
            id="a-fault-percentage-below-one-in-a-million",
        ),
        # virtualservice.go validateHTTPRoute: "mirror_percentage must have a max value of 100"
        pytest.param(
            vs_with(mirror={"host": "y"}, mirrorPercentage={"value": 101}),
            "VirtualService x: http[0].mirrorPercentage.value: 101 is not within 0-100",
            id="a-mirror-percentage-above-100",
        ),
        # validation.go validateHTTPStatus
        pytest.param(
            vs_with(fault={"abort": {"httpStatus": 100, "percentage": {"value": 1}}}),
            "VirtualService x: http[0].fault.abort.httpStatus: 100 is not within 200-599",
            id="a-fault-abort-status-outside-200-599",
        ),
        # virtualservice.go validateHTTPRouteConflict: "HTTP route cannot contain both mirror
        # and mirrors"
        pytest.param(
            vs_with(mirror={"host": "y"}, mirrors=[{"destination": {"host": "z"}}]),
            "VirtualService x: http[0]: mirror and mirrors cannot both be set",
            id="mirror-and-mirrors-together",
        ),
        # validation.go validateHTTPRedirect
        pytest.param(
            redirect(uri="/new", redirectCode=200),
            "VirtualService x: http[0].redirect.redirectCode: 200 is not a 3xx code",
            id="a-redirect-code-that-is-not-3xx",
        ),
        # agent/validation.go ValidateHTTPRetry: "attempts cannot be negative"
        pytest.param(
            vs_with(retries={"attempts": -1}),
            "VirtualService x: http[0].retries.attempts: -1 is negative",
            id="a-negative-retry-count",
        ),
        # CRD CEL `0 < self && self <= 65535`
        pytest.param(
            vs_with(match=[{"port": 70000}]),
            "VirtualService x: http[0].match[0].port: 70000 is not within 1-65535",
            id="a-match-port-out-of-range",
        ),
        # pkg/config/validation/validation.go validateSubsetName (labels.IsDNS1123Label)
        pytest.param(
            rule(subsets=[{"name": "Canary_1", "labels": {"v": "1"}}]),
            "DestinationRule x: subsets[0].name: 'Canary_1' is not a DNS-1123 label "
            "(lower case, digits, -)",
            id="a-subset-name-that-is-no-dns-label",
        ),
        # validation.go validateTrafficPolicy: "traffic policy must have at least one field"
        pytest.param(
            rule(trafficPolicy={}),
            "DestinationRule x: trafficPolicy: a traffic policy needs at least one field",
            id="an-empty-traffic-policy",
        ),
    ],
)
def test_a_value_istio_rejects_is_one_finding_naming_its_path(
    obj: dict[str, Any], expected: str
) -> None:
    assert messages(obj) == [expected]


def test_weights_need_not_add_up_to_100() -> None:
    # validation.go validateHTTPRouteDestinations checks only negative and all-zero
    # weights; istiod passes the weights on to Envoy as they are.
    assert messages(vs_with(split(20, 70))) == []


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (redirect(uri="/a", prefixRewrite="/b"), "http[0].redirect: uri and prefixRewrite cannot"),
        (
            redirect([{"uri": {"exact": "/a"}}], prefixRewrite="/b"),
            "http[0].redirect.prefixRewrite: needs every match's uri to be a prefix match",
        ),
        (redirect(redirectCode=301), "http[0].redirect: needs uri, prefixRewrite, authority"),
        (redirect(uri="/a", scheme="ftp"), "http[0].redirect.scheme: 'ftp' is neither http"),
    ],
)
def test_a_redirect_istio_rejects_is_rejected(obj: dict[str, Any], expected: str) -> None:
    # pkg/config/validation/validation.go validateHTTPRedirect
    (finding,) = validation.validate_object(obj)
    assert finding.message.startswith(expected)


def test_a_valid_object_has_no_findings() -> None:
    obj = vs_with(
        split(20, 80),
        timeout="1m30s",
        retries={"attempts": 2, "perTryTimeout": "500ms", "retryOn": "5xx,503,reset"},
    )
    assert messages(obj) == []


# -- what the local mesh applies --------------------------------------------------------

SECURITY = [
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "jwt"},
        "spec": {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]},
    },
    {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "ratelimit"},
        "spec": {},
    },
]


def test_each_object_of_a_kind_the_local_mesh_does_not_apply_is_reported() -> None:
    assert [str(f) for f in validation.unapplied([vs_with(), *SECURITY])] == [
        "AuthorizationPolicy jwt: rules[0].from[0].source.requestPrincipals: not applied "
        "locally (request authentication: the local sidecars validate no JWTs "
        "(RequestAuthentication applies at the local gateway only); ALLOW rules with it never "
        "match, DENY rules match without it)",
        "EnvoyFilter ratelimit: not applied locally; in a cluster it sets patches to the "
        "generated Envoy configuration",
    ]


def test_unapplied_objects_are_findings_of_their_own_level() -> None:
    assert {f.level for f in validation.unapplied(SECURITY)} == {validation.NOT_APPLIED}


def test_the_translator_checks_run_on_the_object_set() -> None:
    objects = [vs_with(split(20, 80))]
    (finding,) = validation.validate_objects(objects)
    assert finding.where == "VirtualService x"
    assert "names no Service or ServiceEntry" in finding.message


def test_invalid_objects_are_reported_before_the_translator_runs() -> None:
    bad = copy.deepcopy(vs_with(timeout="5"))
    assert [f.message for f in validation.validate_objects([bad])] == [
        "http[0].timeout: '5' is not a duration (like 2s, 500ms, 1m30s)"
    ]


# -- usvc up: what it says before starting ------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
# PeerAuthentication and AuthorizationPolicy apply at the inbound listeners (usvc_mesh.authz).
CHART_SECURITY = [
    "Telemetry tracing: not applied locally; in a cluster it sets tracing, metrics and access logs",
]


def test_usvc_up_reports_the_chart_security_objects_one_line_each() -> None:
    assert [str(f) for f in cli.check_manifests(Layout(ROOT), "current")] == CHART_SECURITY


def test_usvc_up_reports_an_envoy_filter_in_a_scenario(tmp_path: Path) -> None:
    manifests = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", manifests)
    scenario = manifests / "mesh" / "scenarios" / "current.yaml"
    envoy_filter = yaml.safe_dump(SECURITY[1])
    scenario.write_text(f"{scenario.read_text()}---\n{envoy_filter}")
    found = [str(f) for f in cli.check_manifests(Layout(ROOT, manifests_dir=manifests), "current")]
    assert found[-1].startswith("EnvoyFilter ratelimit: not applied locally")


def test_usvc_up_strict_refuses_to_start_naming_each_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    status = cli.main(["up", "--strict", "--root", str(ROOT), "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.splitlines()
    assert status == 1
    assert err == [
        *(f"usvc up: {line}" for line in CHART_SECURITY),
        "usvc up: --strict: 1 Istio object(s) would not be applied locally",
    ]
    assert not run_dir.exists()  # nothing was started


def test_usvc_up_refuses_to_start_on_what_istio_would_reject(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", manifests)
    scenario = manifests / "mesh" / "scenarios" / "current.yaml"
    scenario.write_text(scenario.read_text().replace("  gateways:", "  gateway:", 1))
    run_dir = tmp_path / "run"
    status = cli.main(["up", "--root", str(tmp_path), "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.splitlines()
    assert status == 1
    assert "usvc up: VirtualService front: gateway: not an Istio field (misspelt?)" in err
    assert err[-1] == "usvc up: 1 error(s) in the Istio objects; nothing started"
    assert not run_dir.exists()


def test_usvc_up_prints_a_translator_error_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", manifests)
    scenario = manifests / "mesh" / "scenarios" / "current.yaml"
    scenario.write_text(scenario.read_text().replace("subset: canary", "subset: canery", 1))
    status = cli.main(["up", "--root", str(tmp_path), "--run-dir", str(tmp_path / "run")])
    last = capsys.readouterr().err.splitlines()[-1]
    assert status == 1
    assert last.startswith("usvc up: VirtualService middleware-svc: ")
    assert "'canery' is not defined for middleware-svc.usvc.svc.cluster.local" in last
