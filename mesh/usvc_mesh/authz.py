"""AuthorizationPolicy and PeerAuthentication -> Envoy RBAC for a workload's inbound listener.

The calls (pure functions of the manifests' objects; ``namespace`` is the one of objects
that name none, as elsewhere in the translator):

- ``rbac_filters(policies, workload, port=None, *, namespace="default") -> list[dict]``:
  the ``envoy.filters.http.rbac`` HTTP filters of the inbound listener of ``workload``
  (anything with ``namespace`` and ``labels``: ``registry.Workload``, ``sidecars.Sidecar``)
  for the workload port ``port`` (the container port the manifests name, e.g. 8080;
  ``to.operation.ports`` and ``destination.port`` are decided for it now; without it
  they are reported and fail closed). Put them before the router, in this order.
  :func:`authorization` returns them with the warnings of what was not applied.
- ``gateway_authorization(policies, gateway_labels, *, namespace)``: the same for the
  local ingress gateway, where RequestAuthentication applies (``requestPrincipals``,
  ``request.auth.*``); the translator puts them after the gateway's ``jwt_authn``.
- ``peer_mode(policies, workload, port=None, *, namespace="default") -> str``:
  ``STRICT``, ``PERMISSIVE`` or ``DISABLE`` for that port (:func:`peer_authentication`).
- ``refuses_plaintext(mode)`` and :data:`PLAINTEXT_REFUSED_CHAIN_MATCH`: what STRICT means
  for the plain TCP (pod address) listener, see below.
- ``findings(obj, namespace="default", gateway_labels=None)``: what of one object the
  local mesh does not apply (:func:`usvc_mesh.validation.unapplied` reports them at start,
  ``--strict`` refuses); raises ValueError for what Istio's webhook rejects.

**Identity.** In a cluster the inbound sidecar learns the caller's identity from its mTLS
certificate (``source.principal``, Envoy's ``authenticated`` principal). Inside the one
local Envoy there are no certificates on the wire: the caller's outbound listener stamps
its workload's SPIFFE identity as the filter state object :data:`PEER_PRINCIPAL`
(``spiffe://cluster.local/ns/NS/sa/SA``, shared with the upstream connection to the
internal inbound listener), and every principal rule here is a ``filter_state`` matcher
on it. The object must be hashable (factory :data:`PRINCIPAL_FACTORY`,
``envoy.hashable_string``): Envoy keys upstream connection pools by the hashes of the
objects shared with them, and a plain ``envoy.string`` has none, so a connection a
first caller opened would carry its identity for the next caller's requests
(tests/mesh/test_authz.py shows both). istiod builds the same shape for its waypoints
(pilot/pkg/security/authz/model/principal.go, principalAuthenticated with
UseFilterState: ``io.istio.peer_principal``).
A plaintext client from outside the mesh has no such object: no principal, as a
plaintext caller has none in a PERMISSIVE cluster.

**Policies** (istio.io/latest/docs/reference/config/security/authorization-policy/, istiod
pilot/pkg/security/authz/builder/builder.go and model/): those of the root namespace
:data:`ROOT_NAMESPACE` and the workload's, whose ``selector.matchLabels`` are a subset of
the workload's labels (none: all); a policy with ``targetRef(s)`` applies to gateways and
waypoints, never to a sidecar (pilot/pkg/model/policyattachment.go ShouldAttachPolicy),
and is reported. Filters, in istiod's order: CUSTOM (no ext_authz provider exists
locally, so, as istiod does for a provider it cannot find, a DENY of the requests the
CUSTOM rules match: getBadCustomDenyRules), AUDIT (action LOG), DENY, ALLOW. An ALLOW
filter exists once any ALLOW policy selects the workload, so a policy without rules
(``spec: {}``, allow-nothing) denies all; a rule ``{}`` matches all; no policy allows
all. ``istio.io/dry-run: "true"`` puts a policy in ``shadow_rules``. A denied request
is Envoy's ``403`` ``RBAC: access denied``.

**What is not applied** at a sidecar (istiod's own rule for conditions a proxy cannot check,
model/model.go checkError): in an ALLOW policy the whole rule is dropped (it allows
less), in DENY and AUDIT only the condition (it matches more). That covers
``requestPrincipals``/``notRequestPrincipals`` and ``request.auth.*`` (the sidecars
validate no JWTs locally: RequestAuthentication applies at the gateway only, see
:mod:`usvc_mesh.authn`), ``connection.sni`` (no TLS between local sidecars),
``experimental.envoy.filters.*``, and ``ports``/``destination.port`` where the listener's
workload port is not given. Each is reported. ``ipBlocks``, ``source.ip``,
``remote.ip`` and ``destination.ip`` are applied as Envoy's ``direct_remote_ip`` /
``remote_ip`` / ``destination_ip``, with a warning: every local caller is 127.0.0.1 or
an internal address.

**PeerAuthentication** (istio.io/latest/docs/reference/config/security/peer_authentication/,
pilot/pkg/security/authn/policy_applier.go ComposePeerAuthentication): the narrowest scope
wins (workload selector in the workload's namespace > namespace-wide > mesh-wide in the
root namespace), the oldest (``metadata.creationTimestamp``, else first in the files) of
one scope; ``UNSET`` inherits; ``portLevelMtls`` (only with a selector, as Istio
validates) overrides per workload port; nothing set is PERMISSIVE. Locally mTLS is the
one Envoy's internal connections (the principal above); under DISABLE callers send
plaintext in a cluster (auto mTLS), so :func:`authorization` makes principal rules match
no caller there. The mode also decides the plain TCP listener: STRICT refuses plaintext, as a
STRICT sidecar does: its inbound listener has filter chains only for TLS, so a plaintext
connection matches none and Envoy closes it before any HTTP (the client sees the
connection closed or reset, no response); locally the plain listener's chain gets
:data:`PLAINTEXT_REFUSED_CHAIN_MATCH` (``transport_protocol: tls``, which a plaintext
connection never has), the same "no matching filter chain". PERMISSIVE and DISABLE accept
it with no principal, so principal-based ALLOW rules deny it (403).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .spec import Message, Spec, message, metadata_name, metadata_namespace

ROOT_NAMESPACE = "istio-system"
GATEWAY_NAMESPACE = "istio-ingress"  # as usvc_mesh.authn
# The filter state the caller's outbound listener sets (envoy.string), shared with the
# upstream (internal) connection; istiod's equivalent is io.istio.peer_principal.
PEER_PRINCIPAL = "usvc.peer_principal"
# envoyproxy.io well-known filter state objects: a string that takes part in the
# upstream connection pool's hash (envoy.string does not: callers would share connections).
PRINCIPAL_FACTORY = "envoy.hashable_string"
SPIFFE = "spiffe://"  # pkg/spiffe URIPrefix: istiod prefixes principals with it
RBAC_FILTER = "envoy.filters.http.rbac"
_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_URI_TEMPLATE_TYPE = (
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
)
DRY_RUN = "istio.io/dry-run"
# builder.go: shadow_rules_stat_prefix of dry-run policies, and the suffix of CUSTOM
# rules turned into DENY.
_DRY_RUN_PREFIX = {"ALLOW": "istio_dry_run_allow_", "DENY": "istio_dry_run_deny_"}
_BAD_CUSTOM = "-bad-custom-action"
# A STRICT listener's filter chain match: plaintext never has this transport protocol.
PLAINTEXT_REFUSED_CHAIN_MATCH: Mapping[str, str] = {"transport_protocol": "tls"}
MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")

_AP = "AuthorizationPolicy"
_PA = "PeerAuthentication"
_TARGETS = "targets Gateways and waypoints (Gateway API); a sidecar ignores such a policy"
_JWT = (
    "request authentication: the local sidecars validate no JWTs (RequestAuthentication "
    "applies at the local gateway only); ALLOW rules with it never match, DENY rules "
    "match without it"
)
_POLICY = message(
    _AP,
    _AP,
    [""],
    {"selector", "action", "rules", "provider"},
    {"targetRef": _TARGETS, "targetRefs": _TARGETS},
)
_SELECTOR = message(_AP, "WorkloadSelector", ["selector"], {"matchLabels"})
_PROVIDER = message(_AP, "ExtensionProvider", ["provider"], {"name"})
_RULE = message(_AP, "Rule", ["rules[]"], {"from", "to", "when"})
_FROM = message(_AP, "Rule.From", ["rules[].from[]"], {"source"})
_SOURCE_FIELDS = {
    # field: its negation, in istiod's order of the generated matchers (model.go New)
    "principals": "notPrincipals",
    "requestPrincipals": "notRequestPrincipals",
    "serviceAccounts": "notServiceAccounts",
    "trustDomains": "notTrustDomains",
    "namespaces": "notNamespaces",
    "remoteIpBlocks": "notRemoteIpBlocks",
    "ipBlocks": "notIpBlocks",
}
# The when key that checks what each Source field checks.
_SOURCE_KEYS = {
    "principals": "source.principal",
    "serviceAccounts": "source.serviceAccount",
    "trustDomains": "source.trustDomain",
    "namespaces": "source.namespace",
    "remoteIpBlocks": "remote.ip",
    "ipBlocks": "source.ip",
}
_SOURCE = message(
    _AP,
    "Source",
    ["rules[].from[].source"],
    {*_SOURCE_FIELDS, *_SOURCE_FIELDS.values()} - {"requestPrincipals", "notRequestPrincipals"},
    {"requestPrincipals": _JWT, "notRequestPrincipals": _JWT},
)
_TO = message(_AP, "Rule.To", ["rules[].to[]"], {"operation"})
_OPERATION_FIELDS = {
    "hosts": "notHosts",
    "methods": "notMethods",
    "paths": "notPaths",
    "ports": "notPorts",
}
_PORTS = (
    "the local listeners do not know the workload port (one inbound listener serves every "
    "port of a replica; the gateway listens on other ports than the cluster's): reported, "
    "and a rule with it fails closed; rbac_filters(port=...) applies it where the port is known"
)
_OPERATION = message(
    _AP,
    "Operation",
    ["rules[].to[].operation"],
    {*_OPERATION_FIELDS, *_OPERATION_FIELDS.values()} - {"ports", "notPorts"},
    {"ports": _PORTS, "notPorts": _PORTS},
)
_CONDITION = message(_AP, "Condition", ["rules[].when[]"], {"key", "values", "notValues"})

_PEER = message(_PA, _PA, [""], {"selector", "mtls", "portLevelMtls"})
_PEER_SELECTOR = message(_PA, "WorkloadSelector", ["selector"], {"matchLabels"})
_MTLS = message(_PA, "MutualTLS", ["mtls", "portLevelMtls.<name>"], {"mode"})

ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
# builder.go build: the filters' order, and the RBAC action each is built with.
_RBAC_ACTIONS = {"CUSTOM": "DENY", "AUDIT": "LOG", "DENY": "DENY", "ALLOW": "ALLOW"}
_NO_PORT = (
    "not applied locally: the workload port is not known here (one inbound listener serves "
    "every port of a replica; the gateway listens on other ports than the cluster's)"
)
JWT_FILTER = "envoy.filters.http.jwt_authn"  # its payload: usvc_mesh.authn.PAYLOAD
# The when keys istiod knows (model/model.go) that are applied here, and those reported.
_PRINCIPAL_KEYS = tuple(_SOURCE_KEYS.values())
_PERMISSION_KEYS = ("destination.port", "destination.ip")
_REPORTED_KEYS = {
    "request.auth.principal": _JWT,
    "request.auth.audiences": _JWT,
    "request.auth.presenter": _JWT,
    "request.auth.claims": _JWT,
    "connection.sni": "no TLS between the local sidecars, so no SNI",
    "experimental.envoy.filters.": "Envoy metadata of filters the local mesh does not run",
}
_LOOPBACK_ONLY = (
    "every local caller is 127.0.0.1 (the plain listener) or an internal address (a mesh "
    "caller): in a cluster it is the pod's IP"
)

Json = dict[str, Any]


class WorkloadLike(Protocol):
    """What the policies select a workload by."""

    @property
    def namespace(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


class _NotApplied(Exception):
    """A condition the local mesh cannot check (istiod's generator error)."""


@dataclass(frozen=True)
class Authorization:
    """The RBAC filters of one workload's inbound listener, and what was not applied."""

    http_filters: tuple[Json, ...] = ()
    warnings: tuple[str, ...] = ()


# -- AuthorizationPolicy ----------------------------------------------------------------


def rbac_filters(
    policies: Iterable[Mapping[str, Any]],
    workload: WorkloadLike,
    port: int | None = None,
    *,
    namespace: str = "default",
) -> list[Json]:
    """The RBAC HTTP filters for ``workload``'s inbound listener on workload port ``port``."""
    return list(authorization(policies, workload, port, namespace=namespace).http_filters)


def authorization(
    objects: Iterable[Mapping[str, Any]],
    workload: WorkloadLike,
    port: int | None = None,
    *,
    namespace: str = "default",
) -> Authorization:
    """:func:`rbac_filters` with the warnings.

    Only the policies that may select the workload are read here (a mesh of 1,000
    workloads and 1,000 policies would read a million otherwise); every object is
    checked once by :func:`findings` (``validation.validate_objects``).

    The PeerAuthentications among ``objects`` matter too: where the port's mode is
    DISABLE, callers' sidecars send plaintext (Istio's auto mTLS), so the workload
    sees no peer principal from any caller, and principal rules match none.
    """
    objects = list(objects)
    by_action: dict[str, list[_Policy]] = {action: [] for action in ACTIONS}
    warnings: list[str] = []
    for obj in objects:
        if not _is(obj, _AP) or not _may_select(obj, workload, namespace):
            continue
        policy = _read_policy(obj, namespace)
        if policy.targeted or not _selects(policy, workload):
            continue
        by_action[policy.action].append(policy)
    result = _filters(by_action, port, warnings, jwt=False)
    if peer_mode(objects, workload, port, namespace=namespace) != "DISABLE":
        return result
    filters = tuple(_without_peer(f) for f in result.http_filters)
    if filters == result.http_filters:
        return result
    where = f"port {port}" if port is not None else "the workload"
    note = (
        f"PeerAuthentication mode DISABLE on {where}: callers come in plaintext, with no "
        "principal (as in a cluster), so principal rules match no caller"
    )
    return Authorization(filters, (*result.warnings, note))


def _without_peer(node: Any) -> Any:
    """``node`` with every peer-principal matcher made one that never matches."""
    if isinstance(node, list):
        return [_without_peer(item) for item in node]
    if not isinstance(node, dict):
        return node
    state = node.get("filter_state")
    if isinstance(state, dict) and state.get("key") == PEER_PRINCIPAL and len(node) == 1:
        return {"not_id": {"any": True}}
    return {key: _without_peer(value) for key, value in node.items()}


def _filters(
    by_action: Mapping[str, Sequence[_Policy]], port: int | None, warnings: list[str], *, jwt: bool
) -> Authorization:
    filters: list[Json] = []
    for action, rbac_action in _RBAC_ACTIONS.items():
        built = _build(by_action[action], rbac_action, port, warnings, jwt=jwt)
        if built is not None:
            filters.append(built)
    return Authorization(tuple(filters), tuple(dict.fromkeys(warnings)))


def gateway_authorization(
    objects: Iterable[Mapping[str, Any]],
    gateway_labels: Mapping[str, str],
    *,
    namespace: str = "default",
) -> Authorization:
    """The RBAC filters of the local ingress gateway (after its ``jwt_authn`` filter).

    The gateway is a workload of namespace :data:`GATEWAY_NAMESPACE` with the Gateways'
    ``selector`` as labels (``istio: ingressgateway``), as in :mod:`usvc_mesh.authn`.
    There, RequestAuthentication applies: ``requestPrincipals`` and ``request.auth.*``
    match the verified token (the ``jwt_authn`` payload in dynamic metadata, as istiod
    matches its ``istio_authn`` metadata: generator.go requestPrincipalGenerator).
    Clients of the gateway come from outside the mesh: no peer principal, as in a
    cluster. ``ports`` and ``destination.port`` are not applied (the local gateway
    listens on other ports than the cluster's), reported and failing closed.
    """
    gateway = _Gateway(GATEWAY_NAMESPACE, dict(gateway_labels))
    by_action: dict[str, list[_Policy]] = {action: [] for action in ACTIONS}
    warnings: list[str] = []
    for obj in objects:
        if not _is(obj, _AP):
            continue
        policy = _read_policy(obj, namespace)
        if policy.targeted or not gateway_labels:
            continue
        if _selects(policy, gateway):
            by_action[policy.action].append(policy)
        elif policy.match_labels and _labels_match(policy.match_labels, gateway.labels):
            warnings.append(
                f"{policy.where}: selects the gateway's labels but is in namespace "
                f"{policy.namespace}: not applied to the local gateway, which runs in "
                f"{GATEWAY_NAMESPACE} (as in a cluster where the gateway runs there)"
            )
    return _filters(by_action, None, warnings, jwt=True)


@dataclass(frozen=True)
class _Gateway:
    namespace: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class _Policy:
    name: str
    namespace: str
    action: str
    match_labels: Mapping[str, str] | None  # None: no selector
    rules: tuple[Spec, ...] | None  # None: no rules field
    dry_run: bool
    targeted: bool
    where: str


def _is(obj: Mapping[str, Any], kind: str) -> bool:
    return obj.get("kind") == kind and str(obj.get("apiVersion", "")).startswith(
        "security.istio.io/"
    )


def _without(spec: Spec, keys: Iterable[str]) -> Spec:
    """``spec`` minus keys reported rather than refused (for :meth:`Spec.only`)."""
    return Spec(spec.where, spec.path, {k: v for k, v in spec.data.items() if k not in keys})


def _read_policy(obj: Mapping[str, Any], namespace: str) -> _Policy:
    name = metadata_name(obj)
    where = f"{_AP} {name}"
    spec = Spec.of(where, "", obj.get("spec") or {})
    _without(spec, _POLICY.unsupported).only(_POLICY)
    labels = _match_labels(spec, _SELECTOR)
    action = spec.text("action") or "ALLOW"
    if action not in ACTIONS:
        raise spec.error("action", f"must be one of {', '.join(ACTIONS)}, not {action!r}")
    # pkg/config/validation/validation.go ValidateAuthorizationPolicy.
    provider = spec.child("provider")
    if provider is not None:
        provider.only(_PROVIDER)
        if action != "CUSTOM":
            raise spec.error("provider", f"must not be with non CUSTOM action, found {action}")
    if action == "CUSTOM" and (provider is None or not provider.text("name")):
        raise spec.error("provider.name", "must not be empty (action CUSTOM)")
    # An empty list is no rules to Istio too (protobuf has no empty repeated field).
    if action in ("CUSTOM", "DENY") and not spec.sequence("rules"):
        raise spec.error(
            "rules", f"are required with action {action} (add a rule {{}} to match every request)"
        )
    rules = tuple(spec.children("rules")) if spec.has("rules") else None
    for index, rule in enumerate(rules or ()):
        _check_rule(rule, index)
    if (spec.has("targetRef") or spec.has("targetRefs")) and spec.has("selector"):
        raise spec.error("selector", "and targetRef(s) cannot both be set")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    dry_run = str(annotations.get(DRY_RUN, "false")).lower() == "true"
    return _Policy(
        name,
        metadata_namespace(obj, namespace),
        action,
        labels,
        rules,
        dry_run,
        spec.has("targetRef") or spec.has("targetRefs"),
        where,
    )


def _match_labels(spec: Spec, declared: Any) -> Mapping[str, str] | None:
    selector = spec.child("selector")
    if selector is None:
        return None
    selector.only(declared)
    return selector.string_map("matchLabels")


def _accounts_alone(item: Spec, source: Spec, index: int) -> None:
    # validation.go / the CRD's CEL rule: serviceAccounts name the identity alone.
    accounts = source.has("serviceAccounts") or source.has("notServiceAccounts")
    others = ("principals", "notPrincipals", "namespaces", "notNamespaces")
    if accounts and any(source.has(key) for key in others):
        raise item.error(
            "source", f"cannot set serviceAccounts with namespaces or principals (rule {index})"
        )


@dataclass(frozen=True)
class _Half:
    """``from`` or ``to`` of a rule: a list of items, each holding one message of matches."""

    field: str  # "from"
    item: Message  # Rule.From
    name: str  # "source"
    body: Message  # Source
    checked: tuple[str, ...]  # the fields whose values are checked one by one...
    check: Callable[[Spec, str, str], object]  # ...with this
    then: Callable[[Spec, Spec, int], None] | None = None  # the message's own rule, if any


def _check_half(rule: Spec, half: _Half, index: int) -> None:
    if rule.has(half.field) and not rule.sequence(half.field):
        raise rule.error(half.field, f"must not be empty, found at rule {index}")
    for item in rule.children(half.field):
        item.only(half.item)
        body = item.child(half.name)
        if body is None:
            raise item.error(half.name, "must not be nil")
        _without(body, half.body.unsupported).only(half.body)
        if not any(body.sequence(key) for key in body.data):
            raise item.error(half.name, f"must not be empty, found at rule {index}")
        for key in half.checked:
            for value in body.strings(key):
                half.check(body, key, value)
        for key in body.data:
            body.strings(key)
        if half.then is not None:
            half.then(item, body, index)


def _check_rule(rule: Spec, index: int) -> None:
    """Istio's webhook checks of one rule (validation.go ValidateAuthorizationPolicy)."""
    rule.only(_RULE)
    for half in _HALVES:
        _check_half(rule, half, index)
    for condition in rule.children("when"):
        condition.only(_CONDITION)
        key = condition.required_text("key")
        if not (condition.strings("values") or condition.strings("notValues")):
            raise condition.error("", "needs values or notValues")
        if _condition_kind(key) is None:
            raise condition.error("key", f"{key!r} is not an attribute Istio supports")
        for field in ("values", "notValues"):
            for value in condition.strings(field):
                if key in ("source.ip", "remote.ip", "destination.ip"):
                    _cidr(condition, field, value)
                elif key == "destination.port":
                    _port(condition, field, value)


def _condition_kind(key: str) -> str | None:
    if key in _PRINCIPAL_KEYS or (key.startswith("request.headers[") and key.endswith("]")):
        return "principal"
    if key in _PERMISSION_KEYS:
        return "permission"
    if any(
        key == k or ((k.endswith(".") or k == "request.auth.claims") and key.startswith(k))
        for k in _REPORTED_KEYS
    ):
        return "reported"
    return None


def _cidr(spec: Spec, key: str, value: str) -> Json:
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise spec.error(key, f"{value!r} is not an IP address or CIDR block") from None
    return {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}


def _port(spec: Spec, key: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= 65535:
        raise spec.error(key, f"{value!r} is not a port (1-65535)")
    return int(value)


# Checked alike (validation.go checks Source and Operation in the same steps).
_HALVES = (
    _Half(
        "from",
        _FROM,
        "source",
        _SOURCE,
        ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"),
        _cidr,
        _accounts_alone,
    ),
    _Half("to", _TO, "operation", _OPERATION, ("ports", "notPorts"), _port),
)


def _selects(policy: _Policy, workload: WorkloadLike) -> bool:
    if policy.namespace not in (ROOT_NAMESPACE, workload.namespace):
        return False
    return _labels_match(policy.match_labels or {}, workload.labels)


def _may_select(obj: Mapping[str, Any], workload: WorkloadLike, namespace: str) -> bool:
    """A cheap look at the raw object: False only if it cannot select ``workload``."""
    if metadata_namespace(obj, namespace) not in (ROOT_NAMESPACE, workload.namespace):
        return False
    spec = obj.get("spec")
    selector = spec.get("selector") if isinstance(spec, Mapping) else None
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    if not isinstance(labels, Mapping):
        return True  # no selector, or a malformed one _read_policy reports
    return all(workload.labels.get(str(k)) == str(v) for k, v in labels.items())


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


_MATCH_NEVER: Json = {
    "permissions": [{"not_rule": {"any": True}}],
    "principals": [{"not_id": {"any": True}}],
}


def _build(
    policies: Sequence[_Policy], action: str, port: int | None, warnings: list[str], *, jwt: bool
) -> Json | None:
    """One RBAC filter of ``policies`` (builder.go build + buildHTTP)."""
    if not policies:
        return None
    enforced: dict[str, Json] = {}
    shadow: dict[str, Json] = {}
    for policy in policies:
        target = shadow if policy.dry_run else enforced
        suffix = _BAD_CUSTOM if policy.action == "CUSTOM" else ""
        if not policy.rules:
            target[_policy_name(policy, 0) + suffix] = _MATCH_NEVER
        for index, rule in enumerate(policy.rules or ()):
            reported: list[str] = []
            generated = _rule(rule, action == "ALLOW", port, policy.namespace, reported, jwt)
            for line in reported:
                warnings.append(f"{policy.where}: {line}")
            if generated is not None:
                target[_policy_name(policy, index) + suffix] = generated
        if policy.action == "CUSTOM":
            warnings.append(
                f"{policy.where}: action CUSTOM is not applied locally (the local mesh has no "
                "ext_authz provider): the requests its rules match are denied, as istiod "
                "does when it cannot find the provider"
            )
    config: Json = {"@type": _RBAC_TYPE}
    has_enforced = any(not p.dry_run for p in policies)
    if has_enforced:
        config["rules"] = {"action": action, "policies": enforced}
    if any(p.dry_run for p in policies):
        config["shadow_rules"] = {"action": action, "policies": shadow}
        if action in _DRY_RUN_PREFIX:
            config["shadow_rules_stat_prefix"] = _DRY_RUN_PREFIX[action]
    return {"name": RBAC_FILTER, "typed_config": config}


def _policy_name(policy: _Policy, index: int) -> str:
    return f"ns[{policy.namespace}]-policy[{policy.name}]-rule[{index}]"


def _rule(
    rule: Spec, allow: bool, port: int | None, namespace: str, reported: list[str], jwt: bool
) -> Json | None:
    """One rule as an Envoy policy (model.New + Generate); None: dropped (ALLOW only).

    ``namespace`` is the policy's (a service account without one is in it); ``jwt``:
    a verified token's payload is in the ``jwt_authn`` metadata (the gateway).
    """

    def part(build: Any, where: str, *args: Any) -> list[Json] | None:
        try:
            return build(*args)  # type: ignore[no-any-return]
        except _NotApplied as why:
            reported.append(f"{where}: {why}")
            if allow:
                raise
            return None

    base_principal: list[Json] = []
    base_permission: list[Json] = []
    try:
        for condition in rule.children("when"):
            key = condition.required_text("key")
            kind = _condition_kind(key)
            values = condition.strings("values")
            negated = condition.strings("notValues")
            where = condition.at("key") + f" {key}"
            built = part(_condition, where, key, values, negated, port, namespace, jwt)
            if built is None:
                continue
            if key in ("source.ip", "remote.ip", "destination.ip"):
                reported.append(f"{condition.at('key')} {key}: applied; {_LOOPBACK_ONLY}")
            (base_permission if kind == "permission" else base_principal).extend(built)
        principals = []
        for item in rule.children("from"):
            source = item.child("source")
            assert source is not None
            ids: list[Json] = []
            for key, negation in _SOURCE_FIELDS.items():
                values, negated = source.strings(key), source.strings(negation)
                if not values and not negated:
                    continue
                where = source.at(key if values else negation)
                built = part(_source, where, key, values, negated, namespace, jwt)
                if built is not None:
                    ids.extend(built)
                    if key in ("ipBlocks", "remoteIpBlocks"):
                        reported.append(
                            f"{source.at(key if values else negation)}: applied; {_LOOPBACK_ONLY}"
                        )
            principals.append(_and_ids([*ids, *base_principal]))
        if not rule.has("from"):
            principals.append(_and_ids(base_principal))
        permissions = []
        for item in rule.children("to"):
            operation = item.child("operation")
            assert operation is not None
            rules: list[Json] = []
            for key, negation in _OPERATION_FIELDS.items():
                values, negated = operation.strings(key), operation.strings(negation)
                if not values and not negated:
                    continue
                where = operation.at(key if values else negation)
                built = part(_operation, where, key, values, negated, port)
                rules.extend(built or [])
            permissions.append(_and_rules([*rules, *base_permission]))
        if not rule.has("to"):
            permissions.append(_and_rules(base_permission))
    except _NotApplied:
        return None
    return {"permissions": permissions, "principals": principals}


def _and_ids(ids: list[Json]) -> Json:
    return {"and_ids": {"ids": ids or [{"any": True}]}}


def _and_rules(rules: list[Json]) -> Json:
    return {"and_rules": {"rules": rules or [{"any": True}]}}


def _either(items: list[Json], key: str) -> Json:
    return {f"or_{key}": {key: items}}


def _with_negation(
    make: Any, values: Sequence[str], negated: Sequence[str], *, principal: bool
) -> list[Json]:
    """istiod's rule.principal/permission: OR of values, NOT of the OR of notValues."""
    key, negate = ("ids", "not_id") if principal else ("rules", "not_rule")
    out: list[Json] = []
    if values:
        out.append({f"or_{key}": {key: [make(v) for v in values]}})
    if negated:
        out.append({negate: {f"or_{key}": {key: [make(v) for v in negated]}}})
    return out


def string_matcher(value: str, prefix: str = "") -> Json:
    """istiod's matcher.StringMatcherWithPrefix.

    ``*`` matches any non-empty value, ``*x`` a suffix, ``x*`` a prefix; ``prefix``
    (``spiffe://`` for principals) goes before the value.
    """
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.startswith("*"):
        if not prefix:
            return {"suffix": value[1:]}
        return {"safe_regex": {"regex": re.escape(prefix) + ".*" + re.escape(value[1:])}}
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1]}
    return {"exact": prefix + value}


def _header(name: str, value: str, *, ignore_case: bool = False) -> Json:
    """istiod's matcher.HeaderMatcher / HostMatcher (hosts ignore case)."""
    if value == "*":
        return {"name": name, "present_match": True}
    matcher = string_matcher(value)
    if ignore_case:
        matcher["ignore_case"] = True
    return {"name": name, "string_match": matcher}


def _peer(matcher: Json) -> Json:
    return {"filter_state": {"key": PEER_PRINCIPAL, "string_match": matcher}}


def _namespace_regex(value: str) -> Json:
    # generator.go srcNamespaceGenerator: ".*/ns/<ns>/.*", "*" in the value as ".*".
    pattern = ".*".join(re.escape(part) for part in value.split("*"))
    return _peer({"safe_regex": {"regex": f".*/ns/{pattern}/.*"}})


def _service_account(namespace: str) -> Callable[[str], Json]:
    # generator.go serviceAccountRegex: "<sa>" (the policy's namespace) or "<ns>/<sa>".
    def make(value: str) -> Json:
        ns, _, account = value.rpartition("/")
        ns = ns or namespace
        regex = f"spiffe://.+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(account)}(/.+)?"
        return _peer({"safe_regex": {"regex": regex}})

    return make


def _trust_domain(value: str) -> Json:
    # generator.go srcTrustDomainGenerator.
    if value == "*":
        return _peer({"prefix": SPIFFE})
    if "*" not in value:
        return _peer({"prefix": f"{SPIFFE}{value}/"})
    head, _, tail = value.partition("*")
    regex = f"spiffe://{re.escape(head)}[^/]*{re.escape(tail)}/.*"
    return _peer({"safe_regex": {"regex": regex}})


def _identity(key: str, namespace: str) -> Callable[[str], Json]:
    """The principal matcher of one value of a when key that checks the caller."""
    makers: dict[str, Callable[[str], Json]] = {
        "source.principal": lambda v: _peer(string_matcher(v, SPIFFE)),
        "source.serviceAccount": _service_account(namespace),
        "source.trustDomain": _trust_domain,
        "source.namespace": _namespace_regex,
        "source.ip": lambda v: {"direct_remote_ip": _cidr_of(v)},
        "remote.ip": lambda v: {"remote_ip": _cidr_of(v)},
    }
    return makers[key]


def _source(
    key: str, values: Sequence[str], negated: Sequence[str], namespace: str, jwt: bool
) -> list[Json]:
    if key == "requestPrincipals":
        if not jwt:
            raise _NotApplied(f"not applied locally ({_JWT})")
        out = [_request_principals(values)] if values else []
        return out + ([{"not_id": _request_principals(negated)}] if negated else [])
    make = _identity(_SOURCE_KEYS[key], namespace)
    return _with_negation(make, values, negated, principal=True)


def _cidr_of(value: str) -> Json:
    network = ipaddress.ip_network(value, strict=False)
    return {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}


def _path(value: str) -> Json:
    # generator.go pathGenerator: {*} and {**} make a URI template, else a string matcher.
    if "{*}" in value or "{**}" in value:
        template = value.replace("{**}", "**").replace("{*}", "*")
        return {
            "uri_template": {
                "name": "uri-template",
                "typed_config": {"@type": _URI_TEMPLATE_TYPE, "path_template": template},
            }
        }
    return {"url_path": {"path": string_matcher(value)}}


_ANY: Json = {"any": True}
_NEVER: Json = {"not_rule": {"any": True}}


def _port_rule(port: int | None) -> Any:
    def make(value: str) -> Json:
        if port is None:
            raise _NotApplied(_NO_PORT)
        # One inbound listener per workload port: decided now (Envoy would see the
        # local listener's random port, not the container port the policy names).
        return _ANY if int(value) == port else _NEVER

    return make


def _operation(
    key: str, values: Sequence[str], negated: Sequence[str], port: int | None
) -> list[Json]:
    make = {
        "hosts": lambda v: {"header": _header(":authority", v, ignore_case=True)},
        "methods": lambda v: {"header": _header(":method", v)},
        "paths": _path,
        "ports": _port_rule(port),
    }[key]
    return _with_negation(make, values, negated, principal=False)


def _condition(
    key: str,
    values: Sequence[str],
    negated: Sequence[str],
    port: int | None,
    namespace: str,
    jwt: bool,
) -> list[Json]:
    """One ``when`` condition (model.go New, generator.go)."""
    if jwt and key.startswith("request.auth."):
        return _jwt_condition(key, values, negated)
    for reported, why in _REPORTED_KEYS.items():
        if key == reported or key.startswith(reported):
            raise _NotApplied(f"not applied locally ({why})")
    if key.startswith("request.headers["):
        name = key[len("request.headers[") : -1]
        return _with_negation(
            lambda v: {"header": _header(name, v)}, values, negated, principal=True
        )
    if key in _PRINCIPAL_KEYS:
        return _with_negation(_identity(key, namespace), values, negated, principal=True)
    if key == "destination.port":
        return _with_negation(_port_rule(port), values, negated, principal=False)
    assert key == "destination.ip", key
    return _with_negation(
        lambda v: {"destination_ip": _cidr_of(v)}, values, negated, principal=False
    )


def _claim(path: Sequence[str], matcher: Json) -> Json:
    """A verified token's claim (a string, or a list holding one) matching ``matcher``."""
    keys = [{"key": "payload"}, *({"key": part} for part in path)]

    def metadata(value: Json) -> Json:
        return {"metadata": {"filter": JWT_FILTER, "path": keys, "value": value}}

    as_string = metadata({"string_match": matcher})
    in_list = metadata({"list_match": {"one_of": {"string_match": matcher}}})
    return {"or_ids": {"ids": [as_string, in_list]}}


def _request_principals(values: Sequence[str]) -> Json:
    """generator.go requestPrincipalGenerator: "iss/sub" split at the last "/", "*" parts."""
    any_value: Json = {"safe_regex": {"regex": ".+"}}
    ids: list[Json] = []
    for value in values:
        issuer, slash, subject = value.rpartition("/")
        if not slash:
            issuer, subject = value, ""
        iss: Json
        sub: Json
        if value == "*":
            iss, sub = any_value, any_value
        elif value.startswith("*"):
            if slash:
                iss = any_value if issuer == "*" else {"suffix": issuer[1:]}
                sub = {"exact": subject}
            else:
                iss, sub = any_value, {"suffix": value[1:]}
        elif value.endswith("*"):
            if slash:
                iss = {"exact": issuer}
                sub = any_value if subject == "*" else {"prefix": subject[:-1]}
            else:
                iss, sub = {"prefix": value[:-1]}, any_value
        else:
            iss, sub = {"exact": issuer}, {"exact": subject}
        ids.append({"and_ids": {"ids": [_claim(["iss"], iss), _claim(["sub"], sub)]}})
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def _jwt_condition(key: str, values: Sequence[str], negated: Sequence[str]) -> list[Json]:
    """request.auth.principal / audiences / presenter / claims[...] on the verified token."""
    if key == "request.auth.principal":
        out = [_request_principals(values)] if values else []
        return out + ([{"not_id": _request_principals(negated)}] if negated else [])
    if key in ("request.auth.audiences", "request.auth.presenter"):
        path = ["aud" if key.endswith("audiences") else "azp"]
    else:
        # istiod's extractNameInNestedBrackets: claims[a][b] is the nested claim a.b.
        path = key[len("request.auth.claims[") : -1].split("][")

    def make(value: str) -> Json:
        return _claim(path, string_matcher(value))

    return _with_negation(make, values, negated, principal=True)


def findings(
    obj: Mapping[str, Any],
    namespace: str = "default",
    gateway_labels: Mapping[str, str] | None = None,
) -> list[str]:
    """What of one AuthorizationPolicy or PeerAuthentication the local mesh does not apply.

    A policy may apply to the mesh's workloads (any namespace but the gateway's) and to
    the local gateway (``gateway_labels``: the Gateways' selector), where more applies
    (:func:`gateway_authorization`). Raises ValueError (naming the field) for what
    Istio would reject.
    """
    if _is(obj, _PA):
        _read_peer(obj, namespace)
        return []
    if not _is(obj, _AP):
        return []
    policy = _read_policy(obj, namespace)
    if policy.targeted:
        return [f"targetRef(s) not applied locally: it {_TARGETS}"]
    lines: list[str] = []
    rbac_action = _RBAC_ACTIONS[policy.action]
    if policy.namespace != GATEWAY_NAMESPACE:
        # As sidecars.inbound_http_filters builds them: for no port in particular.
        _build([policy], rbac_action, None, lines, jwt=False)
    if gateway_labels and _selects(policy, _Gateway(GATEWAY_NAMESPACE, gateway_labels)):
        _build([policy], rbac_action, None, lines, jwt=True)
    where = policy.where + ": "
    return [line.removeprefix(where) for line in lines if "applied; " not in line]


# -- PeerAuthentication -----------------------------------------------------------------


@dataclass(frozen=True)
class _Peer:
    name: str
    namespace: str
    match_labels: Mapping[str, str] | None
    mode: str
    ports: Mapping[int, str]
    created: str
    order: int


def _read_peer(obj: Mapping[str, Any], namespace: str, order: int = 0) -> _Peer:
    name = metadata_name(obj)
    where = f"{_PA} {name}"
    spec = Spec.of(where, "", obj.get("spec") or {})
    spec.only(_PEER)
    labels = _match_labels(spec, _PEER_SELECTOR)
    mode = _mode(spec.child("mtls"))
    ports: dict[int, str] = {}
    per_port = spec.child("portLevelMtls")
    if per_port is not None:
        # validation.go ValidatePeerAuthentication.
        if not labels:
            raise spec.error(
                "portLevelMtls", "needs a workload selector (mesh/namespace policies cannot)"
            )
        if not per_port.data:
            raise spec.error("portLevelMtls", "if defined, must have at least one element")
        for key, value in per_port.data.items():
            text = str(key)
            if not text.isdigit() or not 0 < int(text) <= 65535:
                raise spec.error(f"portLevelMtls.{text}", "port must be in range 1..65535")
            ports[int(text)] = _mode(Spec.of(where, f"portLevelMtls.{text}", value or {}))
    created = str((obj.get("metadata") or {}).get("creationTimestamp") or "")
    return _Peer(name, metadata_namespace(obj, namespace), labels, mode, ports, created, order)


def _mode(spec: Spec | None) -> str:
    if spec is None:
        return "UNSET"
    spec.only(_MTLS)
    mode = spec.text("mode") or "UNSET"
    if mode not in MODES:
        raise spec.error("mode", f"must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def peer_authentication(
    objects: Iterable[Mapping[str, Any]],
    workload: WorkloadLike,
    *,
    namespace: str = "default",
) -> tuple[str, dict[int, str]]:
    """The workload's effective mode and per-port modes (ComposePeerAuthentication)."""
    mesh: _Peer | None = None
    scoped: _Peer | None = None
    narrow: _Peer | None = None

    def older(a: _Peer | None, b: _Peer) -> _Peer:
        if a is None:
            return b
        return b if (b.created or "~", b.order) < (a.created or "~", a.order) else a

    peers = [_read_peer(obj, namespace, i) for i, obj in enumerate(objects) if _is(obj, _PA)]
    for peer in peers:
        if peer.namespace not in (workload.namespace, ROOT_NAMESPACE):
            continue
        if not peer.match_labels:
            if peer.namespace == ROOT_NAMESPACE:
                mesh = older(mesh, peer)
            else:
                scoped = older(scoped, peer)
        elif peer.namespace != ROOT_NAMESPACE and all(
            workload.labels.get(k) == v for k, v in peer.match_labels.items()
        ):
            narrow = older(narrow, peer)
    mode = "PERMISSIVE"
    for chosen in (mesh, scoped, narrow):
        if chosen is not None and chosen.mode != "UNSET":
            mode = chosen.mode
    ports = {}
    if narrow is not None:
        ports = {p: mode if m == "UNSET" else m for p, m in narrow.ports.items()}
    return mode, ports


def peer_mode(
    objects: Iterable[Mapping[str, Any]],
    workload: WorkloadLike,
    port: int | None = None,
    *,
    namespace: str = "default",
) -> str:
    """STRICT, PERMISSIVE or DISABLE: the workload's mTLS mode on workload port ``port``."""
    mode, ports = peer_authentication(objects, workload, namespace=namespace)
    return ports.get(port, mode) if port is not None else mode


def refuses_plaintext(mode: str) -> bool:
    """Whether the plain TCP listener must refuse plaintext (give its chain
    :data:`PLAINTEXT_REFUSED_CHAIN_MATCH`)."""
    return mode == "STRICT"
