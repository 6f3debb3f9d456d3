"""AuthorizationPolicy and PeerAuthentication at a workload's inbound listener, in a real Envoy.

Each live test builds the sidecar shape of tests/mesh/sidecar_envoy.py: callers whose
outbound listeners stamp their identity (``usvc.peer_principal``), an internal inbound
listener per target carrying :func:`usvc_mesh.authz.rbac_filters`, a plain TCP listener
with the same filters and no principal, and a real aiohttp backend behind them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mesh.conftest import Backends
from tests.mesh.sidecar_envoy import SidecarEnvoy, Target, refused
from usvc_mesh import authz, validation
from usvc_mesh.envoy import validate_static
from usvc_mesh.registry import Workload

ROOT = Path(__file__).resolve().parents[2]
NS = "usvc"
DENIED = "RBAC: access denied"


def spiffe(namespace: str, account: str) -> str:
    return f"spiffe://cluster.local/ns/{namespace}/sa/{account}"


GATEWAY = spiffe("istio-ingress", "istio-ingressgateway")
CALLERS: dict[str, str | None] = {
    "gateway": GATEWAY,
    "front": spiffe(NS, "front"),
    "middle": spiffe(NS, "middle"),
    "core": spiffe(NS, "core"),
    "prometheus": spiffe("istio-system", "prometheus"),
    "other-ns": spiffe("shop", "front"),
    "outside": None,  # no principal: a caller without the mesh's identity
}


def workload(app: str, namespace: str = NS, **labels: str) -> Workload:
    return Workload(app, namespace, {"app": app, **labels})


def policy(
    name: str, spec: dict[str, Any], namespace: str = NS, kind: str = "AuthorizationPolicy"
) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def peer(name: str, spec: dict[str, Any], namespace: str = NS) -> dict[str, Any]:
    return policy(name, spec, namespace, kind="PeerAuthentication")


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    running = Backends()
    yield running
    running.close()


def sidecars(
    tmp_path: Path, backends: Backends, policies: list[dict[str, Any]], *targets: Workload
) -> SidecarEnvoy:
    chosen = targets or (workload("app"),)
    return SidecarEnvoy(
        tmp_path,
        backends,
        CALLERS,
        [Target(t.name, authz.rbac_filters(policies, t, 8080)) for t in chosen],
    )


def statuses(envoy: SidecarEnvoy, target: str, path: str = "/", **options: Any) -> dict[str, int]:
    return {caller: envoy.call(caller, target, path, **options).status for caller in CALLERS}


# -- the chart's own policies ---------------------------------------------------------


def chart_objects(path: str) -> list[dict[str, Any]]:
    text = (ROOT / path).read_text()
    return [obj for obj in yaml.safe_load_all(text) if obj]


@pytest.mark.slow
def test_the_charts_policies_let_each_service_be_called_by_its_caller_only(
    tmp_path: Path, backends: Backends
) -> None:
    """k8s/mesh/security.yaml (rendered from helm/usvc/templates/mesh/security.yaml): front
    only from the ingress gateway, middle only from front, core only from middle, clock
    only from core; /metrics GET from istio-system. istio.io AuthorizationPolicy reference:
    ALLOW policies are ORed, allow-nothing (spec {}) adds no match, anything else is 403."""
    objects = chart_objects("k8s/mesh/security.yaml")
    allowed = {"front": "gateway", "middle": "front", "core": "middle", "clock": "core"}
    with sidecars(tmp_path, backends, objects, *(workload(app) for app in allowed)) as envoy:
        for target, caller in allowed.items():
            got = statuses(envoy, target)
            assert got == {c: 200 if c == caller else 403 for c in CALLERS}, target
            assert envoy.call("prometheus", target, "/metrics").status == 200
            assert envoy.call("prometheus", target, "/metrics", method="POST").status == 403
        reply = envoy.call("front", "core")  # issue 10 item 8: core from front's listener
        assert (reply.status, reply.body) == (403, DENIED)
        assert envoy.plain("core").body == DENIED  # no principal at the pod address


def test_the_helm_template_and_the_rendered_policies_agree() -> None:
    """The live test reads k8s/; the chart's template is what renders it (tools.manifests)."""
    template = (ROOT / "helm/usvc/templates/mesh/security.yaml").read_text()
    assert "kind: AuthorizationPolicy" in template and "usvc.principal" in template
    rendered = chart_objects("k8s/mesh/security.yaml")
    names = {o["metadata"]["name"] for o in rendered if o["kind"] == "AuthorizationPolicy"}
    assert names == {"allow-nothing", "clock", "core", "front", "middle"}


@pytest.mark.slow
def test_identities_do_not_share_a_pooled_upstream_connection(
    tmp_path: Path, backends: Backends
) -> None:
    """envoyproxy.io (filter state, shared_with_upstream): a shared object takes part in the
    upstream connection pool's hash only if it is hashable. With envoy.string the wrong
    caller reuses the right caller's connection, and its identity; authz.PRINCIPAL_FACTORY
    (envoy.hashable_string) keeps them apart."""
    objects = [
        policy(
            "core",
            {
                "rules": [
                    {"from": [{"source": {"principals": ["cluster.local/ns/usvc/sa/middle"]}}]}
                ]
            },
        )
    ]
    targets = [Target("core", authz.rbac_filters(objects, workload("core"), 8080))]
    with SidecarEnvoy(tmp_path, backends, CALLERS, targets) as envoy:
        assert [envoy.call(c, "core").status for c in ("middle", "front", "middle")] == [
            200,
            403,
            200,
        ]
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    with SidecarEnvoy(leaky, backends, CALLERS, targets, factory="envoy.string") as envoy:
        assert [envoy.call(c, "core").status for c in ("middle", "front")] == [200, 200]


# -- actions and their order ------------------------------------------------------------


def source(**fields: list[str]) -> dict[str, Any]:
    return {"from": [{"source": fields}]}


@pytest.mark.slow
def test_deny_beats_allow_and_allow_nothing_denies_all(tmp_path: Path, backends: Backends) -> None:
    """istio.io AuthorizationPolicy reference, "Authorization Policy precedence": DENY before
    ALLOW; an ALLOW policy without rules matches nothing (builder.go rbacPolicyMatchNever);
    a rule {} matches every request; no policy at all allows everything."""
    objects = [
        policy("allow-all", {"rules": [{}]}, namespace="istio-system"),  # mesh-wide
        policy(
            "no-front",
            {
                "selector": {"matchLabels": {"app": "a"}},
                "action": "DENY",
                **{"rules": [source(principals=["cluster.local/ns/usvc/sa/front"])]},
            },
        ),
        policy("nothing", {"selector": {"matchLabels": {"app": "b"}}}),
    ]
    targets = workload("a"), workload("b"), workload("c", namespace="shop"), workload("d", "x")
    with sidecars(tmp_path, backends, objects, *targets) as envoy:
        a = statuses(envoy, "a")
        assert a == {c: 403 if c == "front" else 200 for c in CALLERS}
        # allow-nothing adds no match beside allow-all: still allowed (ALLOW policies OR)
        assert set(statuses(envoy, "b").values()) == {200}
        assert set(statuses(envoy, "c").values()) == {200}
    nothing = [policy("nothing", {})]
    later = tmp_path / "later"
    later.mkdir()
    with sidecars(later, backends, nothing, workload("a"), workload("e", "shop")) as envoy:
        assert set(statuses(envoy, "a").values()) == {403}
        assert envoy.call("front", "a").body == DENIED
        assert set(statuses(envoy, "e").values()) == {200}  # another namespace: no policy


def test_no_policy_means_no_filter_and_filters_come_in_istiods_order() -> None:
    """builder.go build: CUSTOM (here DENY), AUDIT (LOG), DENY, ALLOW; none without policies."""
    assert authz.rbac_filters([], workload("a")) == []
    objects = [
        policy("allow", {"rules": [{}]}),
        policy("deny", {"action": "DENY", "rules": [{}]}),
        policy("audit", {"action": "AUDIT", "rules": [{}]}),
        policy("ext", {"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
    ]
    filters = authz.rbac_filters(objects, workload("a"))
    actions = [f["typed_config"]["rules"]["action"] for f in filters]
    assert actions == ["DENY", "LOG", "DENY", "ALLOW"]
    assert list(filters[0]["typed_config"]["rules"]["policies"]) == [
        "ns[usvc]-policy[ext]-rule[0]-bad-custom-action"
    ]
    assert list(filters[3]["typed_config"]["rules"]["policies"]) == [
        "ns[usvc]-policy[allow]-rule[0]"
    ]


@pytest.mark.slow
def test_audit_logs_and_custom_without_a_provider_denies(
    tmp_path: Path, backends: Backends
) -> None:
    """AUDIT never denies (RBAC action LOG); CUSTOM needs an ext_authz provider, which the local
    mesh has none of: its rules deny, as istiod's getBadCustomDenyRules (builder.go) does for
    a provider it cannot find. Both are reported."""
    objects = [
        policy(
            "audit", {"selector": {"matchLabels": {"app": "a"}}, "action": "AUDIT", "rules": [{}]}
        ),
        policy(
            "ext",
            {
                "selector": {"matchLabels": {"app": "b"}},
                "action": "CUSTOM",
                "provider": {"name": "opa"},
                "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}],
            },
        ),
    ]
    with sidecars(tmp_path, backends, objects, workload("a"), workload("b")) as envoy:
        assert set(statuses(envoy, "a").values()) == {200}
        # Matched AUDIT rules set Envoy's access_log_hint, which Istio's access logs read.
        assert envoy.access_lines("a", 1) == ["/ 200 true"]
        assert envoy.call("front", "b", "/admin/x").status == 403
        assert envoy.call("front", "b", "/public").status == 200
    (line,) = authz.findings(objects[1])
    assert "CUSTOM is not applied locally" in line and "denied" in line


@pytest.mark.slow
def test_a_dry_run_policy_is_evaluated_and_not_enforced(tmp_path: Path, backends: Backends) -> None:
    """istio.io "Dry Run" (istio.io/dry-run: "true"): the result is counted in the shadow
    stats (istio_dry_run_allow_shadow_denied, as istiod names them), the request passes."""
    obj = policy("try", {"rules": [source(principals=["cluster.local/ns/usvc/sa/front"])]})
    obj["metadata"]["annotations"] = {"istio.io/dry-run": "true"}
    with sidecars(tmp_path, backends, [obj], workload("a")) as envoy:
        assert set(statuses(envoy, "a").values()) == {200}
        shadow = envoy.stats("inbound-a.rbac.istio_dry_run_allow_")
        assert shadow["http.inbound-a.rbac.istio_dry_run_allow_.shadow_allowed"] == 1
        assert shadow["http.inbound-a.rbac.istio_dry_run_allow_.shadow_denied"] == len(CALLERS) - 1


def test_dry_run_policies_are_shadow_rules() -> None:
    """istio.io dry-run annotation (istio.io/dry-run): evaluated and logged, never enforced
    (builder.go: shadow_rules, shadow_rules_stat_prefix istio_dry_run_allow_)."""
    obj = policy("try", {"rules": [source(principals=["x"])]})
    obj["metadata"]["annotations"] = {"istio.io/dry-run": "true"}
    (config,) = [f["typed_config"] for f in authz.rbac_filters([obj], workload("a"))]
    assert "rules" not in config
    assert config["shadow_rules_stat_prefix"] == "istio_dry_run_allow_"
    assert list(config["shadow_rules"]["policies"]) == ["ns[usvc]-policy[try]-rule[0]"]


# -- selection --------------------------------------------------------------------------


def test_policies_select_by_labels_in_their_namespace_or_the_root_namespace() -> None:
    """istio.io: a policy applies to its namespace's workloads whose labels match its
    selector (none: all of them); in the root namespace istio-system, to the whole mesh.
    targetRef(s) attach a policy to gateways and waypoints, never to a sidecar
    (pilot/pkg/model/policyattachment.go ShouldAttachPolicy)."""
    objects = [
        policy("a-only", {"selector": {"matchLabels": {"app": "a"}}, "rules": [{}]}),
        policy("ns-wide", {"action": "DENY", "rules": [{}]}, namespace="shop"),
        policy("mesh", {"action": "AUDIT", "rules": [{}]}, namespace="istio-system"),
        policy("targeted", {"targetRefs": [{"kind": "Service", "name": "a"}], "rules": [{}]}),
    ]

    def names(target: Workload) -> list[str]:
        filters = authz.rbac_filters(objects, target)
        return [n for f in filters for n in f["typed_config"]["rules"]["policies"]]

    assert names(workload("a")) == [
        "ns[istio-system]-policy[mesh]-rule[0]",
        "ns[usvc]-policy[a-only]-rule[0]",
    ]
    assert names(workload("b")) == ["ns[istio-system]-policy[mesh]-rule[0]"]
    assert names(workload("a", "shop")) == [
        "ns[istio-system]-policy[mesh]-rule[0]",
        "ns[shop]-policy[ns-wide]-rule[0]",
    ]
    assert authz.findings(objects[3]) == [
        "targetRef(s) not applied locally: it targets Gateways and waypoints (Gateway API); a "
        "sidecar ignores such a policy"
    ]


def test_only_policies_that_may_select_the_workload_are_read() -> None:
    """A malformed policy for another workload is reported once by validation, not read
    again for every workload (authorization reads only what may select it)."""
    bad = policy("other", {"selector": {"matchLabels": {"app": "b"}}, "action": "NOPE"})
    assert authz.rbac_filters([bad], workload("a")) == []
    with pytest.raises(ValueError, match="action must be one of"):
        authz.rbac_filters([bad], workload("b"))
    (error,) = validation.translation_errors([bad], NS)
    assert error.where == "AuthorizationPolicy other"


# -- sources ----------------------------------------------------------------------------


@pytest.mark.slow
def test_principals_namespaces_and_their_negations(tmp_path: Path, backends: Backends) -> None:
    """istio.io AuthorizationPolicy Source: principals (istiod adds spiffe://, generator.go
    srcPrincipalGenerator; "*" any, prefix* and *suffix as matcher.StringMatcherWithPrefix),
    notPrincipals, namespaces (".*/ns/<ns>/.*", srcNamespaceGenerator), notNamespaces.
    A caller without a principal matches no principal, and every not-principal."""

    def only(app: str, **fields: list[str]) -> dict[str, Any]:
        return policy(app, {"selector": {"matchLabels": {"app": app}}, "rules": [source(**fields)]})

    objects = [
        only("exact", principals=["cluster.local/ns/usvc/sa/front"]),
        only("any", principals=["*"]),
        only("prefix", principals=["cluster.local/ns/usvc/*"]),
        only("suffix", principals=["*/sa/middle"]),
        only("not", notPrincipals=["cluster.local/ns/usvc/sa/front"]),
        only("ns", namespaces=["istio-*"]),
        only("notns", notNamespaces=["usvc"]),
    ]
    targets = [workload(o["metadata"]["name"]) for o in objects]
    with sidecars(tmp_path, backends, objects, *targets) as envoy:

        def allowed(target: str) -> set[str]:
            return {c for c, status in statuses(envoy, target).items() if status == 200}

        assert allowed("exact") == {"front"}
        assert allowed("any") == set(CALLERS) - {"outside"}
        assert allowed("prefix") == {"front", "middle", "core"}
        assert allowed("suffix") == {"middle"}
        assert allowed("not") == set(CALLERS) - {"front"}
        assert allowed("ns") == {"gateway", "prometheus"}
        assert allowed("notns") == {"gateway", "prometheus", "other-ns", "outside"}


@pytest.mark.slow
def test_service_accounts_and_trust_domains(tmp_path: Path, backends: Backends) -> None:
    """istio.io Source serviceAccounts ("<sa>" in the policy's namespace or "<ns>/<sa>",
    generator.go serviceAccountRegex) and trustDomains ("*", exact, one "*" inside:
    srcTrustDomainGenerator), their negations, and the when keys source.serviceAccount
    and source.trustDomain (Istio 1.25 and 1.31; validation.NEWER_ISTIO_FIELDS)."""

    def only(app: str, rule: dict[str, Any]) -> dict[str, Any]:
        return policy(app, {"selector": {"matchLabels": {"app": app}}, "rules": [rule]})

    objects = [
        only("sa", source(serviceAccounts=["front", "istio-ingress/istio-ingressgateway"])),
        only("notsa", source(notServiceAccounts=["front"])),
        only("td", source(trustDomains=["cluster.local"])),
        only("tdany", source(trustDomains=["*"])),
        only("tdwild", source(notTrustDomains=["cluster.*"])),
        only("when", {"when": [{"key": "source.serviceAccount", "values": ["usvc/middle"]}]}),
    ]
    targets = [workload(o["metadata"]["name"]) for o in objects]
    with sidecars(tmp_path, backends, objects, *targets) as envoy:

        def allowed(target: str) -> set[str]:
            return {c for c, status in statuses(envoy, target).items() if status == 200}

        assert allowed("sa") == {"front", "gateway"}
        assert allowed("notsa") == set(CALLERS) - {"front"}
        assert allowed("td") == set(CALLERS) - {"outside"}
        assert allowed("tdany") == set(CALLERS) - {"outside"}
        assert allowed("tdwild") == {"outside"}
        assert allowed("when") == {"middle"}


def test_service_accounts_cannot_be_set_with_principals() -> None:
    """The CRD's rule: "Cannot set serviceAccounts with namespaces or principals"."""
    bad = policy("x", {"rules": [source(serviceAccounts=["a"], principals=["b"])]})
    with pytest.raises(ValueError, match="cannot set serviceAccounts with namespaces"):
        authz.findings(bad)
    assert validation.validate_objects([bad]) != []
    good = policy("x", {"rules": [source(serviceAccounts=["a"], trustDomains=["td"])]})
    assert validation.schema_errors(good) == []


def test_ip_blocks_are_applied_and_said_to_be_loopback_locally() -> None:
    """istio.io Source ipBlocks (direct_remote_ip) / remoteIpBlocks (remote_ip), as
    generator.go srcIPGenerator / remoteIPGenerator; every local caller is loopback."""
    obj = policy("ips", {"rules": [source(ipBlocks=["10.0.0.0/8"], notRemoteIpBlocks=["1.2.3.4"])]})
    result = authz.authorization([obj], workload("a"))
    (config,) = [f["typed_config"] for f in result.http_filters]
    (ids,) = config["rules"]["policies"]["ns[usvc]-policy[ips]-rule[0]"]["principals"]
    assert {
        "or_ids": {"ids": [{"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}]}
    } in ids["and_ids"]["ids"]
    assert any("127.0.0.1" in line for line in result.warnings)
    assert authz.findings(obj) == []  # applied, not reported as unapplied


@pytest.mark.slow
def test_ip_blocks_match_the_plain_listeners_loopback_caller(
    tmp_path: Path, backends: Backends
) -> None:
    """ipBlocks at the plain TCP listener: the caller's address is 127.0.0.1."""
    objects = [
        policy(
            "lo",
            {
                "selector": {"matchLabels": {"app": "lo"}},
                "rules": [source(ipBlocks=["127.0.0.0/8"])],
            },
        ),
        policy(
            "far",
            {
                "selector": {"matchLabels": {"app": "far"}},
                "rules": [source(ipBlocks=["10.0.0.0/8"])],
            },
        ),
    ]
    with sidecars(tmp_path, backends, objects, workload("lo"), workload("far")) as envoy:
        assert envoy.plain("lo").status == 200
        assert envoy.plain("far").status == 403


@pytest.mark.slow
def test_request_principals_are_reported_and_fail_closed(
    tmp_path: Path, backends: Backends
) -> None:
    """istio.io Source requestPrincipals need a RequestAuthentication on the workload, which
    the local sidecars do not apply (usvc_mesh.authn: the gateway only). As istiod does with
    a condition a proxy cannot check (model.go checkError): an ALLOW rule with it is dropped,
    a DENY rule loses the condition. Reported either way."""
    objects = [
        policy(
            "jwt",
            {
                "selector": {"matchLabels": {"app": "a"}},
                "rules": [
                    source(requestPrincipals=["*"]),
                    source(principals=["cluster.local/ns/usvc/sa/core"]),
                ],
            },
        ),
        policy(
            "need-jwt",
            {
                "selector": {"matchLabels": {"app": "b"}},
                "action": "DENY",
                "rules": [
                    {
                        **source(notRequestPrincipals=["*"]),
                        "to": [{"operation": {"paths": ["/admin"]}}],
                    }
                ],
            },
        ),
    ]
    with sidecars(tmp_path, backends, objects, workload("a"), workload("b")) as envoy:
        # the rule with requestPrincipals is dropped; the other rule still allows core
        assert {c for c, s in statuses(envoy, "a").items() if s == 200} == {"core"}
        assert envoy.call("front", "b", "/admin").status == 403
        assert envoy.call("front", "b", "/other").status == 200
    for obj in objects:
        (line,) = authz.findings(obj)
        assert "equestPrincipals: not applied locally" in line and "validate no JWTs" in line


# -- operations ---------------------------------------------------------------------------


@pytest.mark.slow
def test_paths_methods_hosts_and_ports(tmp_path: Path, backends: Backends) -> None:
    """istio.io Operation: paths (exact, prefix*, *suffix, {*} templates: generator.go
    pathGenerator), notPaths, methods, notMethods, hosts (case-insensitive :authority,
    matcher.HostMatcher), ports (the workload port the listener serves)."""
    rules = [
        {"to": [{"operation": {"paths": ["/api/*", "*.png", "/exact"], "methods": ["GET"]}}]},
        {"to": [{"operation": {"paths": ["/items/{*}/edit"], "notMethods": ["DELETE"]}}]},
        {"to": [{"operation": {"notPaths": ["/private*"], "methods": ["PUT"]}}]},
    ]
    objects = [
        policy("ops", {"selector": {"matchLabels": {"app": "ops"}}, "rules": rules}),
        policy(
            "host",
            {
                "selector": {"matchLabels": {"app": "host"}},
                "rules": [{"to": [{"operation": {"hosts": ["Shop.example.*"]}}]}],
            },
        ),
        policy(
            "port",
            {
                "selector": {"matchLabels": {"app": "port"}},
                "rules": [{"to": [{"operation": {"ports": ["9090"]}}]}],
            },
        ),
        policy(
            "notport",
            {
                "selector": {"matchLabels": {"app": "notport"}},
                "rules": [{"to": [{"operation": {"notPorts": ["9090"]}}]}],
            },
        ),
    ]
    targets = [workload(o["metadata"]["name"]) for o in objects]
    with sidecars(tmp_path, backends, objects, *targets) as envoy:

        def ops(path: str, method: str = "GET") -> int:
            return envoy.call("front", "ops", path, method=method).status

        assert [ops("/api/x"), ops("/img/a.png"), ops("/exact"), ops("/exact/no")] == [
            200,
            200,
            200,
            403,
        ]
        assert ops("/api/x", "POST") == 403
        assert [ops("/items/7/edit", "POST"), ops("/items/7/edit", "DELETE")] == [200, 403]
        assert [ops("/items/7/8/edit", "POST")] == [403]
        assert [ops("/public", "PUT"), ops("/private/x", "PUT")] == [200, 403]
        assert envoy.call("front", "host", host="shop.EXAMPLE.com").status == 200  # any case
        assert envoy.call("front", "host", host="shop.example.com").status == 200
        assert envoy.call("front", "host", host="other").status == 403
        # The listener serves workload port 8080: ports [9090] never, notPorts [9090] always.
        assert envoy.call("front", "port").status == 403
        assert envoy.call("front", "notport").status == 200


def test_ports_are_reported_where_the_listener_port_is_unknown() -> None:
    """The sidecar's inbound listener serves every port of a replica (port=None): ports and
    destination.port are reported and fail closed (model.go checkError), as in findings."""
    allow = policy("p", {"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]})
    result = authz.authorization([allow], workload("a"))
    assert result.http_filters[0]["typed_config"]["rules"]["policies"] == {}
    assert any("ports: not applied locally" in line for line in result.warnings)
    (line,) = authz.findings(allow)
    assert line.startswith("rules[0].to[0].operation.ports: not applied locally")
    deny = policy(
        "d",
        {"action": "DENY", "rules": [{"when": [{"key": "destination.port", "values": ["9090"]}]}]},
    )
    (config,) = [f["typed_config"] for f in authz.rbac_filters([deny], workload("a"))]
    generated = config["rules"]["policies"]["ns[usvc]-policy[d]-rule[0]"]
    assert generated["permissions"] == [{"and_rules": {"rules": [{"any": True}]}}]  # wider


# -- conditions -------------------------------------------------------------------------


@pytest.mark.slow
def test_when_conditions(tmp_path: Path, backends: Backends) -> None:
    """istio.io Condition and the authorization-policy-conditions page: request.headers[...]
    (values, notValues, prefix*/"*" as matcher.HeaderMatcher), source.namespace,
    source.principal, destination.port; values are ORed, conditions ANDed."""
    objects = [
        policy(
            "hdr",
            {
                "selector": {"matchLabels": {"app": "hdr"}},
                "rules": [
                    {
                        "when": [
                            {"key": "request.headers[x-user]", "values": ["admin", "ops-*"]},
                            {"key": "request.headers[x-deny]", "notValues": ["*"]},
                        ]
                    }
                ],
            },
        ),
        policy(
            "who",
            {
                "selector": {"matchLabels": {"app": "who"}},
                "rules": [
                    {
                        "when": [
                            {"key": "source.namespace", "values": ["usvc"]},
                            {
                                "key": "source.principal",
                                "notValues": ["cluster.local/ns/usvc/sa/core"],
                            },
                            {"key": "destination.port", "values": ["8080"]},
                        ]
                    }
                ],
            },
        ),
    ]
    with sidecars(tmp_path, backends, objects, workload("hdr"), workload("who")) as envoy:

        def hdr(**headers: str) -> int:
            return envoy.call("outside", "hdr", headers=headers).status

        assert hdr(**{"x-user": "admin"}) == 200
        assert hdr(**{"x-user": "ops-1"}) == 200
        assert hdr(**{"x-user": "guest"}) == 403
        assert hdr() == 403
        assert hdr(**{"x-user": "admin", "x-deny": "1"}) == 403
        allowed = {c for c, s in statuses(envoy, "who").items() if s == 200}
        assert allowed == {"front", "middle"}


def test_request_auth_and_other_unapplied_keys_are_reported() -> None:
    """model.go New: request.auth.* (no JWT at the local sidecars), connection.sni (no TLS
    between them), experimental.envoy.filters.* are reported; an unknown key is an error
    ("unknown attribute")."""
    for key in ("request.auth.claims[iss]", "connection.sni", "request.auth.audiences"):
        obj = policy("c", {"rules": [{"when": [{"key": key, "values": ["x"]}]}]})
        (line,) = authz.findings(obj)
        assert f"rules[0].when[0].key {key}: not applied locally" in line
        assert (
            authz.rbac_filters([obj], workload("a"))[0]["typed_config"]["rules"]["policies"] == {}
        )
    bad = policy("c", {"rules": [{"when": [{"key": "source.color", "values": ["x"]}]}]})
    with pytest.raises(ValueError, match=r"'source\.color' is not an attribute Istio supports"):
        authz.findings(bad)


def test_what_istio_rejects_is_an_error_naming_the_field() -> None:
    """pkg/config/validation/validation.go ValidateAuthorizationPolicy and
    ValidatePeerAuthentication."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"action": "DENY"}, "rules are required with action DENY"),
        ({"action": "DENY", "rules": []}, "rules are required with action DENY"),
        ({"action": "CUSTOM", "rules": [{}]}, "provider.name must not be empty"),
        ({"provider": {"name": "x"}, "rules": [{}]}, "must not be with non CUSTOM action"),
        ({"rules": [{"from": [{"source": {}}]}]}, "source must not be empty"),
        ({"rules": [{"to": [{"operation": {}}]}]}, "operation must not be empty"),
        ({"rules": [source(ipBlocks=["300.1.1.1"])]}, "is not an IP address or CIDR block"),
        ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}, "is not a port"),
        ({"action": "REJECT"}, "action must be one of"),
    ]
    for spec, error in cases:
        with pytest.raises(ValueError, match=error):
            authz.findings(policy("bad", spec))
    with pytest.raises(ValueError, match="portLevelMtls needs a workload selector"):
        authz.findings(peer("p", {"portLevelMtls": {"8080": {"mode": "STRICT"}}}))


@pytest.mark.slow
def test_the_translated_filters_pass_envoys_static_check(tmp_path: Path) -> None:
    """envoy --mode validate on the sidecar shape with every kind of matcher translated."""
    objects = [
        *chart_objects("k8s/mesh/security.yaml"),
        policy(
            "all",
            {
                "action": "DENY",
                "rules": [
                    {
                        **source(
                            principals=["*"],
                            notNamespaces=["a*"],
                            ipBlocks=["::1"],
                            notRemoteIpBlocks=["10.0.0.0/8"],
                        ),
                        "to": [
                            {
                                "operation": {
                                    "hosts": ["*.x"],
                                    "notPaths": ["/a/{**}"],
                                    "ports": ["8080"],
                                    "methods": ["GET"],
                                }
                            }
                        ],
                        "when": [
                            {"key": "request.headers[x]", "values": ["*"]},
                            {"key": "destination.ip", "values": ["127.0.0.1"]},
                        ],
                    }
                ],
            },
        ),
        policy("audit", {"action": "AUDIT", "rules": [{}]}),
    ]
    backends = Backends()
    try:
        envoy = sidecars(tmp_path, backends, objects, workload("core"))
        validate_static(envoy.document, "the scaffold's configuration")
    finally:
        backends.close()


# -- PeerAuthentication -------------------------------------------------------------------


def test_peer_mode_follows_istios_precedence() -> None:
    """istio.io PeerAuthentication reference and policy_applier.go ComposePeerAuthentication:
    workload (selector) > namespace > mesh (root namespace); UNSET inherits; portLevelMtls
    overrides per port (UNSET there inherits the workload's); none at all is PERMISSIVE; of
    two at one scope the oldest wins."""
    a = workload("a")
    assert authz.peer_mode([], a) == "PERMISSIVE"
    mesh = peer("mesh", {"mtls": {"mode": "STRICT"}}, namespace="istio-system")
    assert authz.peer_mode([mesh], a) == "STRICT"
    namespace = peer("ns", {"mtls": {"mode": "PERMISSIVE"}})
    assert authz.peer_mode([mesh, namespace], a) == "PERMISSIVE"
    unset = peer("ns", {"mtls": {"mode": "UNSET"}})
    assert authz.peer_mode([mesh, unset], a) == "STRICT"
    narrow = peer(
        "a",
        {
            "selector": {"matchLabels": {"app": "a"}},
            "mtls": {"mode": "DISABLE"},
            "portLevelMtls": {"9090": {"mode": "STRICT"}, "9091": {"mode": "UNSET"}},
        },
    )
    objects = [mesh, namespace, narrow]
    assert authz.peer_mode(objects, a, 8080) == "DISABLE"
    assert authz.peer_mode(objects, a, 9090) == "STRICT"
    assert authz.peer_mode(objects, a, 9091) == "DISABLE"
    assert authz.peer_mode(objects, workload("b"), 9090) == "PERMISSIVE"
    assert authz.peer_mode(objects, workload("a", "shop")) == "STRICT"  # mesh-wide only
    older = peer("old", {"mtls": {"mode": "DISABLE"}})
    older["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    newer = peer("new", {"mtls": {"mode": "STRICT"}})
    newer["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    assert authz.peer_mode([newer, older], a) == "DISABLE"
    assert authz.peer_mode([peer("x", {"mtls": {"mode": "STRICT"}}), older], a) == "DISABLE"


@pytest.mark.slow
def test_strict_refuses_plaintext_and_permissive_accepts_it_without_a_principal(
    tmp_path: Path, backends: Backends
) -> None:
    """istio.io PeerAuthentication: STRICT accepts only mTLS (a plaintext client's connection
    is closed: no filter chain matches it); PERMISSIVE accepts plaintext, which has no
    principal, so a principal-based ALLOW rule answers 403."""
    objects = chart_objects("k8s/mesh/security.yaml")  # PeerAuthentication default: STRICT
    core = workload("core")
    assert authz.peer_mode(objects, core, 8080) == "STRICT"
    filters = authz.rbac_filters(objects, core, 8080)
    permissive = [peer("default", {"mtls": {"mode": "PERMISSIVE"}})]

    def target(name: str, policies: list[dict[str, Any]]) -> Target:
        mode = authz.peer_mode(policies, core, 8080)
        match = authz.PLAINTEXT_REFUSED_CHAIN_MATCH if authz.refuses_plaintext(mode) else None
        return Target(name, filters, plain_chain_match=match)

    targets = [target("strict", objects), target("permissive", permissive)]
    with SidecarEnvoy(tmp_path, backends, CALLERS, targets) as envoy:
        assert refused(envoy.targets["strict"].plain_port)
        assert envoy.call("middle", "strict").status == 200  # the mesh path is unaffected
        assert not refused(envoy.targets["permissive"].plain_port)
        reply = envoy.plain("permissive")
        assert (reply.status, reply.body) == (403, DENIED)
        assert envoy.call("middle", "permissive").status == 200


@pytest.mark.slow
def test_disable_means_no_caller_has_a_principal(tmp_path: Path, backends: Backends) -> None:
    """istio.io PeerAuthentication DISABLE: the server accepts plaintext only, so callers'
    sidecars (auto mTLS) send plaintext and no source.principal reaches the policies;
    principal rules match no caller (notPrincipals every one)."""
    rules = {"rules": [source(principals=["cluster.local/ns/usvc/sa/middle"])]}
    objects = [policy("core", rules), peer("off", {"mtls": {"mode": "DISABLE"}})]
    core = workload("core")
    result = authz.authorization(objects, core, 8080)
    assert any("DISABLE on port 8080" in line for line in result.warnings)
    with SidecarEnvoy(tmp_path, backends, CALLERS, [Target("core", result.http_filters)]) as envoy:
        assert set(statuses(envoy, "core").values()) == {403}
    assert authz.rbac_filters(objects[:1], core, 8080) != list(result.http_filters)


# -- reporting ----------------------------------------------------------------------------


def test_the_charts_security_objects_are_applied_and_not_reported() -> None:
    """validation.unapplied: AuthorizationPolicy and PeerAuthentication are applied kinds now;
    only what the local mesh cannot check is reported."""
    objects = chart_objects("k8s/mesh/security.yaml")
    security = [o for o in objects if o["kind"] != "Telemetry"]
    assert validation.unapplied(security) == []
    assert {"AuthorizationPolicy", "PeerAuthentication"} <= validation.APPLIED_KINDS


def test_unapplied_parts_are_findings_and_errors_are_translation_errors() -> None:
    obj = policy("jwt", {"rules": [source(requestPrincipals=["*"])]})
    (finding,) = validation.unapplied([obj])
    assert finding.level == validation.NOT_APPLIED
    assert str(finding).startswith(
        "AuthorizationPolicy jwt: rules[0].from[0].source.requestPrincipals: not applied locally"
    )
    bad = policy("bad", {"rules": [source(ipBlocks=["nope"])]})
    (error,) = validation.translation_errors([bad], "usvc")
    assert error.where == "AuthorizationPolicy bad" and "not an IP address" in error.message
