"""AuthorizationPolicy at the local ingress gateway, after its RequestAuthentication.

istio.io task "Authorization on Ingress Gateway" / "JWT token" and the AuthorizationPolicy
reference: a policy selecting the ingress gateway (``istio: ingressgateway``, in the
gateway's namespace or the root namespace) runs there after ``jwt_authn``, so
``requestPrincipals`` ("iss/sub") and ``request.auth.*`` match the verified token
(pilot/pkg/security/authz/model/generator.go requestPrincipalGenerator,
requestClaimGenerator).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import usvc_mesh as tr
from tests.mesh.conftest import Backend, Backends
from tests.mesh.gateway_clients import Gateway, http_get, start_gateway
from tests.mesh.test_request_authn import ISSUER, RULE, Signer, objects
from usvc_mesh import authz, validation

GATEWAY_LABELS = {"istio": "ingressgateway"}


def policy(name: str, spec: dict[str, Any], namespace: str = "istio-ingress") -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": GATEWAY_LABELS}, **spec},
    }


POLICIES = [
    policy(
        "require-jwt",
        {
            "rules": [
                {"from": [{"source": {"requestPrincipals": [f"{ISSUER}/alice", "*/carol"]}}]},
                {"to": [{"operation": {"paths": ["/public*"]}}]},
            ]
        },
    ),
    policy(
        "no-banned",
        {
            "action": "DENY",
            "rules": [
                {"when": [{"key": "request.auth.claims[groups]", "values": ["banned"]}]},
                {"when": [{"key": "request.auth.claims[org][team]", "values": ["evil*"]}]},
                {"when": [{"key": "request.auth.presenter", "values": ["bad-client"]}]},
                {"when": [{"key": "request.auth.principal", "values": [f"{ISSUER}/mallory"]}]},
            ],
        },
    ),
    # In another namespace: selects the gateway's labels, but not the gateway (istio-ingress).
    policy("elsewhere", {"action": "DENY", "rules": [{}]}, namespace="usvc"),
]


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, signer: Signer, backends: Backends
) -> Iterator[Gateway]:
    a = backends.add(Backend("app-a"))
    b = backends.add(Backend("app-b"))
    apps = {"app-a": ("127.0.0.1", a.port), "app-b": ("127.0.0.1", b.port)}
    manifests = [*objects({**RULE, "jwks": signer.jwks()}), *POLICIES]
    running = start_gateway(tmp_path_factory.mktemp("authz"), manifests, endpoints=apps)
    yield running
    running.stop()


def status(gateway: Gateway, token: str | None = None, path: str = "/") -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = http_get(gateway.ports[80], path, headers=headers)
    return reply.status, reply.body if reply.status != 200 else json.loads(reply.body)["name"]


@pytest.mark.slow
def test_request_principals_need_a_verified_token_of_that_subject(
    gateway: Gateway, signer: Signer
) -> None:
    """requestPrincipals "iss/sub": no token or another subject is 403 RBAC: access denied."""
    assert status(gateway)[0] == 403
    assert status(gateway) == (403, "RBAC: access denied")
    assert status(gateway, signer.token(aud="usvc"))[0] == 200
    assert status(gateway, signer.token(aud="usvc", sub="bob"))[0] == 403
    assert status(gateway, signer.token(aud="usvc", sub="carol"))[0] == 200  # "*/carol"
    assert status(gateway, path="/public/x")[0] == 200  # the other rule: no token needed


@pytest.mark.slow
def test_deny_on_claims_beats_allow(gateway: Gateway, signer: Signer) -> None:
    """request.auth.claims[groups] (a list claim holding the value) and the nested
    claims[org][team] with a prefix; DENY before ALLOW."""
    assert status(gateway, signer.token(aud="usvc", groups=["dev", "banned"]))[0] == 403
    assert status(gateway, signer.token(aud="usvc", groups="banned"))[0] == 403
    assert status(gateway, signer.token(aud="usvc", org={"team": "evil-corp"}))[0] == 403
    assert status(gateway, signer.token(aud="usvc", groups=["dev"]))[0] == 200


@pytest.mark.slow
def test_deny_on_the_presenter_and_the_request_principal(gateway: Gateway, signer: Signer) -> None:
    """request.auth.presenter (the azp claim) and request.auth.principal ("iss/sub")."""
    assert status(gateway, signer.token(aud="usvc", azp="bad-client"))[0] == 403
    assert status(gateway, signer.token(aud="usvc", azp="web"))[0] == 200
    assert status(gateway, signer.token(aud="usvc", sub="mallory"), "/public/x")[0] == 403
    assert status(gateway, signer.token(aud="usvc", sub="bob"), "/public/x")[0] == 200


@pytest.mark.slow
def test_an_invalid_token_is_still_refused_by_jwt_authn_first(
    gateway: Gateway, signer: Signer
) -> None:
    """istiod's order: authentication (401) before authorization (403)."""
    assert status(gateway, signer.token(aud="usvc") + "x")[0] == 401


def test_a_policy_in_another_namespace_does_not_select_the_gateway() -> None:
    """Istio selects by labels within the policy's namespace (or the root namespace)."""
    result = authz.gateway_authorization(POLICIES, GATEWAY_LABELS)
    names = [n for f in result.http_filters for n in f["typed_config"]["rules"]["policies"]]
    assert not any("elsewhere" in name for name in names)
    assert any(
        "AuthorizationPolicy elsewhere: selects the gateway's labels" in w for w in result.warnings
    )


def test_at_the_gateway_request_principals_are_applied_not_reported() -> None:
    """validation.unapplied: applied at the gateway, reported where a sidecar would need them."""
    gateway = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge"},
        "spec": {"selector": GATEWAY_LABELS},
    }
    assert validation.unapplied([gateway, *POLICIES]) == []
    mesh_wide = policy("mesh", {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]})
    del mesh_wide["spec"]["selector"]
    mesh_wide["metadata"]["namespace"] = "istio-system"
    (finding,) = validation.unapplied([gateway, mesh_wide])
    assert "requestPrincipals: not applied locally" in finding.message


def test_ports_at_the_gateway_are_reported_and_fail_closed() -> None:
    """The local gateway's ports are not the cluster's: an ALLOW rule on ports is dropped."""
    obj = policy("ports", {"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]})
    result = authz.gateway_authorization([obj], GATEWAY_LABELS)
    (config,) = [f["typed_config"] for f in result.http_filters]
    assert config["rules"]["policies"] == {}
    assert any("ports: not applied locally" in w for w in result.warnings)


def test_the_gateway_filters_follow_jwt_authn() -> None:
    manifests = [*objects({**RULE, "jwks": Signer().jwks()}), *POLICIES]
    names = [f["name"] for f in tr.translate(manifests, endpoints={}).gateway_filters]
    assert names == [
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.rbac",
        "envoy.filters.http.rbac",
    ]
