"""RequestAuthentication at the local gateway through a real Envoy, and claim-based routing.

istio.io RequestAuthentication reference and the "JWT claim based routing" task:
istiod gives the ingress gateway a ``jwt_authn`` filter with a provider per JWT rule
(pilot/pkg/security/authn/policy_applier.go); a request without a token passes, one
with a token that fails verification is refused with 401; a VirtualService bound to
the gateway may match ``@request.auth.claims.<name>`` (HTTPMatchRequest.headers:
"supported only for gateway").
"""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import usvc_mesh as tr
from tests.mesh.conftest import (
    Backend,
    Backends,
    deployment,
    destination_rule,
    istio,
    service,
    virtual_service,
)
from tests.mesh.gateway_clients import Gateway, http_get, start_gateway
from usvc_mesh.validation import NOT_APPLIED, unapplied

ISSUER = "https://issuer.usvc.test"
KID = "test-key"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An RSA key made by the test, its JWKS, and RS256 tokens signed with it."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        numbers = self.key.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        key = {"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig", "n": _b64(n), "e": _b64(e)}
        return json.dumps({"keys": [key]})

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "sub": "alice", "iat": now, "exp": now + 600, **claims}
        header = {"alg": "RS256", "typ": "JWT", "kid": KID}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"


def request_authentication(name: str, rules: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": spec.pop("namespace", "default")},
        "spec": {"jwtRules": rules, **spec},
    }


def objects(rule: dict[str, Any]) -> list[dict[str, Any]]:
    gateway = istio(
        "Gateway",
        "edge",
        {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}
            ],
        },
    )
    routes = [
        {
            "name": "admins",
            "match": [{"headers": {"@request.auth.claims.groups": {"exact": "admin"}}}],
            "route": [{"destination": {"host": "app", "subset": "a"}}],
        },
        {
            "name": "nested",
            "match": [{"headers": {"@request.auth.claims.org.team": {"prefix": "plat"}}}],
            "route": [{"destination": {"host": "app", "subset": "a"}}],
        },
        {
            "name": "not-alice",
            "match": [
                {
                    "headers": {"x-route": {"exact": "not-alice"}},
                    "withoutHeaders": {"@request.auth.claims.sub": {"exact": "alice"}},
                }
            ],
            "route": [{"destination": {"host": "app", "subset": "a"}}],
        },
        {"name": "others", "route": [{"destination": {"host": "app", "subset": "b"}}]},
    ]
    return [
        deployment("app-a", app="app", subset="a"),
        deployment("app-b", app="app", subset="b"),
        service("app", {"app": "app"}),
        destination_rule("app", "app", {"a": {"subset": "a"}, "b": {"subset": "b"}}),
        gateway,
        virtual_service("app", ["*"], routes, gateways=["edge"]),
        request_authentication(
            "edge-jwt", [rule], selector={"matchLabels": {"istio": "ingressgateway"}}
        ),
    ]


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def apps(backends: Backends) -> dict[str, tuple[str, int]]:
    a = backends.add(Backend("app-a"))
    b = backends.add(Backend("app-b"))
    return {"app-a": ("127.0.0.1", a.port), "app-b": ("127.0.0.1", b.port)}


RULE = {
    "issuer": ISSUER,
    "audiences": ["usvc"],
    "outputPayloadToHeader": "x-jwt-payload",
    "outputClaimToHeaders": [{"header": "x-jwt-sub", "claim": "sub"}],
}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, signer: Signer, apps: dict[str, tuple[str, int]]
) -> Iterator[Gateway]:
    rule = {**RULE, "jwks": signer.jwks()}
    running = start_gateway(tmp_path_factory.mktemp("jwt"), objects(rule), endpoints=apps)
    yield running
    running.stop()


def call(gateway: Gateway, token: str | None = None, **headers: str) -> tuple[int, str]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    reply = http_get(gateway.ports[80], headers=headers)
    name = json.loads(reply.body)["name"] if reply.status == 200 else reply.body
    return reply.status, name


@pytest.mark.slow
def test_a_valid_token_with_groups_admin_is_routed_to_subset_a(
    gateway: Gateway, signer: Signer
) -> None:
    assert call(gateway, signer.token(aud="usvc", groups=["dev", "admin"])) == (200, "app-a")
    assert call(gateway, signer.token(aud="usvc", groups="admin")) == (200, "app-a")


@pytest.mark.slow
def test_other_tokens_and_no_token_go_to_subset_b(gateway: Gateway, signer: Signer) -> None:
    assert call(gateway, signer.token(aud="usvc", groups=["dev"])) == (200, "app-b")
    # Istio semantics: no token passes (an AuthorizationPolicy may require one)
    assert call(gateway) == (200, "app-b")


@pytest.mark.slow
def test_a_nested_claim_routes_by_its_path(gateway: Gateway, signer: Signer) -> None:
    token = signer.token(aud="usvc", org={"team": "platform"})
    assert call(gateway, token) == (200, "app-a")


@pytest.mark.slow
def test_without_headers_on_a_claim_inverts_the_match(gateway: Gateway, signer: Signer) -> None:
    bob = signer.token(aud="usvc", sub="bob")
    alice = signer.token(aud="usvc", sub="alice")
    assert call(gateway, bob, **{"x-route": "not-alice"}) == (200, "app-a")
    assert call(gateway, alice, **{"x-route": "not-alice"}) == (200, "app-b")


@pytest.mark.slow
def test_a_forged_token_is_refused_with_401(gateway: Gateway, signer: Signer) -> None:
    forged = Signer().token(aud="usvc", groups=["admin"])
    assert call(gateway, forged) == (401, "Jwt verification fails")


@pytest.mark.slow
def test_an_expired_token_is_refused_with_401(gateway: Gateway, signer: Signer) -> None:
    expired = signer.token(aud="usvc", exp=int(time.time()) - 3600)
    status, body = call(gateway, expired)
    assert status == 401
    assert body == "Jwt is expired"


@pytest.mark.slow
def test_a_token_for_another_audience_is_refused(gateway: Gateway, signer: Signer) -> None:
    # Envoy's jwt_authn answers a wrong audience with 403, not 401, in Istio too.
    assert call(gateway, signer.token(aud="someone-else")) == (
        403,
        "Audiences in Jwt are not allowed",
    )


@pytest.mark.slow
def test_payload_and_claims_are_given_to_the_upstream_and_the_token_is_not(
    gateway: Gateway, signer: Signer, backends: Backends
) -> None:
    backend = backends["app-b"]
    backend.reset()
    assert call(gateway, signer.token(aud="usvc"))[0] == 200
    seen = backend.seen[0]["headers"]
    assert seen["x-jwt-sub"] == "alice"
    payload = json.loads(base64.urlsafe_b64decode(seen["x-jwt-payload"] + "=="))
    assert payload["iss"] == ISSUER
    assert "authorization" not in seen  # forwardOriginalToken unset: removed


@pytest.mark.slow
def test_token_locations_forwarding_and_a_local_jwks_uri(
    tmp_path: Path, signer: Signer, apps: dict[str, tuple[str, int]], backends: Backends
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(signer.jwks())
    rule = {
        "issuer": ISSUER,
        "jwksUri": jwks.as_uri(),
        "fromHeaders": [{"name": "x-token", "prefix": "Token "}],
        "fromParams": ["access"],
        "fromCookies": ["session"],
        "forwardOriginalToken": True,
    }
    running = start_gateway(tmp_path / "gw", objects(rule), endpoints=apps)
    try:
        admin = signer.token(groups=["admin"])
        port = running.ports[80]
        assert http_get(port, headers={"x-token": f"Token {admin}"}).status == 200
        assert json.loads(http_get(port, headers={"x-token": f"Token {admin}"}).body)["name"] == (
            "app-a"
        )
        assert json.loads(http_get(port, f"/?access={admin}").body)["name"] == "app-a"
        backend = backends["app-a"]
        backend.reset()
        reply = http_get(port, headers={"Cookie": f"session={admin}"})
        assert json.loads(reply.body)["name"] == "app-a"
        assert backend.seen[0]["headers"]["cookie"] == f"session={admin}"  # forwarded
        # Authorization is not among this rule's locations: the forged token there is
        # not looked at
        assert http_get(port, headers={"Authorization": "Bearer x.y.z"}).status == 200
    finally:
        running.stop()


@pytest.mark.slow
def test_a_jwks_uri_on_a_loopback_server_is_fetched_at_translation(
    tmp_path: Path, signer: Signer, apps: dict[str, tuple[str, int]]
) -> None:
    body = signer.jwks().encode()

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rule = {"issuer": ISSUER, "jwksUri": f"http://127.0.0.1:{server.server_port}/jwks"}
        translation = tr.translate(objects(rule), endpoints=apps)
    finally:
        server.shutdown()
        server.server_close()
    (jwt,) = translation.gateway_filters
    provider = jwt["typed_config"]["providers"]["origins-0"]
    assert json.loads(provider["local_jwks"]["inline_string"]) == json.loads(body)


# -- the filter's shape and what is refused or reported (no Envoy) -------------------------


def test_the_filter_is_istiods_one_provider_or_allow_missing(signer: Signer) -> None:
    translation = tr.translate(objects({**RULE, "jwks": signer.jwks()}), endpoints={})
    (jwt,) = translation.gateway_filters
    config = jwt["typed_config"]
    assert jwt["name"] == "envoy.filters.http.jwt_authn"
    assert config["rules"] == [
        {
            "match": {"prefix": "/"},
            "requires": {
                "requires_any": {
                    "requirements": [{"provider_name": "origins-0"}, {"allow_missing": {}}]
                }
            },
        }
    ]
    provider = config["providers"]["origins-0"]
    assert provider["payload_in_metadata"] == "payload"
    assert provider["issuer"] == ISSUER and provider["audiences"] == ["usvc"]


def test_a_non_local_jwks_uri_is_refused() -> None:
    rule = {"issuer": ISSUER, "jwksUri": "https://issuer.example.com/.well-known/jwks.json"}
    with pytest.raises(tr.UnsupportedField, match=r"jwtRules\[0\]\.jwksUri .* no internet"):
        tr.translate(objects(rule), endpoints={})


def test_a_jwks_without_keys_is_refused_before_envoy_would_be() -> None:
    rule = {"issuer": ISSUER, "jwks": '{"keys": []}'}
    with pytest.raises(ValueError, match=r"jwtRules\[0\]\.jwks holds no public key"):
        tr.translate(objects(rule), endpoints={})


def test_target_refs_are_reported_not_applied(signer: Signer) -> None:
    policy = request_authentication(
        "by-ref", [{"issuer": ISSUER, "jwks": signer.jwks()}], targetRef={"kind": "Gateway"}
    )
    with pytest.raises(tr.UnsupportedField, match=r"targetRef is an Istio field the local mesh"):
        tr.translate([policy], endpoints={})


def test_a_policy_selecting_workloads_is_reported_not_applied(signer: Signer) -> None:
    workload = request_authentication(
        "front", [{"issuer": ISSUER}], selector={"matchLabels": {"app": "front"}}
    )
    mesh_wide = request_authentication("all", [{"issuer": ISSUER}], namespace="istio-system")
    edge = objects({**RULE, "jwks": signer.jwks()})
    found = {f.where: f for f in unapplied([*edge, workload, mesh_wide])}
    assert found["RequestAuthentication front"].level == NOT_APPLIED
    assert "selects mesh workloads" in found["RequestAuthentication front"].message
    assert "applied at the local gateway; not applied to the mesh's workloads" in (
        found["RequestAuthentication all"].message
    )
    assert "RequestAuthentication edge-jwt" not in found  # the gateway's own: applied


def test_claims_at_a_gateway_without_request_authentication_warn(signer: Signer) -> None:
    without = [
        o for o in objects({**RULE, "jwks": signer.jwks()}) if o["kind"] != "RequestAuthentication"
    ]
    translation = tr.translate(without, endpoints={})
    assert any("no RequestAuthentication applies to the gateway" in w for w in translation.warnings)


def test_a_claims_route_merged_from_another_virtual_service_stays_before_a_catch_all(
    signer: Signer,
) -> None:
    # istiod moves catch-all routes of merged VirtualServices last; a route that matches
    # only claims is not one.
    base = objects({**RULE, "jwks": signer.jwks()})
    catch_all = virtual_service(
        "first",
        ["*"],
        [{"route": [{"destination": {"host": "app", "subset": "b"}}]}],
        gateways=["edge"],
    )
    claims = virtual_service(
        "second",
        ["*"],
        [
            {
                "match": [{"headers": {"@request.auth.claims.groups": {"exact": "admin"}}}],
                "route": [{"destination": {"host": "app", "subset": "a"}}],
            }
        ],
        gateways=["edge"],
    )
    chosen = [o for o in base if o["kind"] != "VirtualService"] + [catch_all, claims]
    translation = tr.translate(chosen, endpoints={})
    routes = translation.virtual_host("gateway", "*")["routes"]
    assert [bool(r["match"].get("dynamic_metadata")) for r in routes] == [True, False]


def test_the_old_jwks_uri_spelling_reads_the_same_keys(tmp_path: Path, signer: Signer) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(signer.jwks())
    translation = tr.translate(objects({"issuer": ISSUER, "jwks_uri": jwks.as_uri()}), endpoints={})
    provider = translation.gateway_filters[0]["typed_config"]["providers"]["origins-0"]
    assert provider["local_jwks"]["inline_string"] == signer.jwks()


def test_the_rule_timeout_bounds_the_jwks_fetch() -> None:
    # A loopback server that accepts connections and never answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks"
        with pytest.raises(ValueError, match=r"jwtRules\[0\]\.jwksUri .* could not be fetched"):
            tr.translate(
                objects({"issuer": ISSUER, "jwksUri": uri, "timeout": "100ms"}), endpoints={}
            )


def test_a_policy_without_selector_in_the_gateways_namespace_is_the_gateways(
    signer: Signer,
) -> None:
    edge = [o for o in objects(RULE) if o["kind"] != "RequestAuthentication"]
    policy = request_authentication(
        "ingress", [{"issuer": ISSUER, "jwks": signer.jwks()}], namespace="istio-ingress"
    )
    translation = tr.translate([*edge, policy], endpoints={})
    assert translation.gateway_filters
    assert not unapplied([*edge, policy])
    elsewhere = request_authentication("ns", [{"issuer": ISSUER, "jwks": signer.jwks()}])
    assert not tr.translate([*edge, elsewhere], endpoints={}).gateway_filters
    (finding,) = unapplied([*edge, elsewhere])
    assert "selects mesh workloads" in finding.message
