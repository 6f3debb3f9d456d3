"""RequestAuthentication -> Envoy's ``jwt_authn`` filter on the local ingress gateway.

istiod turns the JWT rules of every RequestAuthentication that applies to a proxy into
one ``envoy.filters.http.jwt_authn`` filter (pilot/pkg/security/authn/policy_applier.go,
convertToEnvoyJwtConfig): a provider ``origins-N`` per rule, each writing the verified
payload into dynamic metadata under ``payload`` (which ``@request.auth.claims.*`` route
matches read, see :mod:`usvc_mesh.routes`), and one requirement on ``/``: a request
without a token passes, a request with a token that no provider verifies is refused
(401 ``Jwt verification fails``). Requiring a token is an AuthorizationPolicy's job
(``requestPrincipals``), not this filter's.

Scope (istio.io RequestAuthentication reference): a policy in the root namespace
(``istio-system``) without ``selector`` applies to every proxy, one in another namespace
to that namespace's (the gateway's: ``istio-ingress``); with a ``selector``, to the
workloads whose labels match. The local gateway's labels are the Gateways'
``selector`` (``istio: ingressgateway``). Policies (or parts) that select the mesh's own
workloads are reported by :func:`usvc_mesh.validation.unapplied`: their sidecars'
inbound listeners are not built from them locally.

JWKS: ``jwks`` inline; ``jwksUri`` ``file://`` read now, or ``http(s)://`` on a loopback
address fetched now (istiod fetches the keys itself and inlines them, its default
``PILOT_JWT_ENABLE_REMOTE_JWKS=false``). Any other URI is refused: this machine has no
internet.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import Spec, message, metadata_name, metadata_namespace, parse_duration

JWT_FILTER = "envoy.filters.http.jwt_authn"
# istiod's filters.EnvoyJwtFilterPayload: the metadata key of the verified payload.
PAYLOAD = "payload"
ROOT_NAMESPACE = "istio-system"
# Where Istio's gateway chart installs the ingress gateway (and this project's chart says
# it runs: values gateway.namespace); a policy there without selector is the gateway's.
GATEWAY_NAMESPACE = "istio-ingress"
_JWT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_KIND = "RequestAuthentication"
# istiod's buildSpaceDelimitedClaims default: claims whose space-separated strings are lists.
SPACE_DELIMITED = ("permission", "scope")

_REQUEST_AUTHENTICATION = message(
    _KIND,
    _KIND,
    [""],
    {"selector", "jwtRules"},
    dict.fromkeys(
        ("targetRef", "targetRefs"),
        "Gateway API targets; the local gateway is Istio's, chosen by selector",
    ),
)
_SELECTOR = message(_KIND, "WorkloadSelector", ["selector"], {"matchLabels"})
_JWT_RULE = message(
    _KIND,
    "JWTRule",
    ["jwtRules[]"],
    {
        "issuer",
        "audiences",
        "jwksUri",
        "jwks_uri",
        "jwks",
        "fromHeaders",
        "fromParams",
        "fromCookies",
        "outputPayloadToHeader",
        "forwardOriginalToken",
        "outputClaimToHeaders",
        "timeout",
    },
)
_JWT_HEADER = message(_KIND, "JWTHeader", ["jwtRules[].fromHeaders[]"], {"name", "prefix"})
_CLAIM_TO_HEADER = message(
    _KIND, "ClaimToHeader", ["jwtRules[].outputClaimToHeaders[]"], {"header", "claim"}
)


@dataclass(frozen=True)
class GatewayAuthn:
    """What the RequestAuthentications make of the local gateway."""

    http_filters: tuple[dict[str, Any], ...] = ()
    issuers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())


def selects_gateway(obj: Mapping[str, Any], gateway_labels: Mapping[str, str]) -> bool:
    """Whether a RequestAuthentication applies to the ingress gateway."""
    selector = (obj.get("spec") or {}).get("selector") or {}
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    if not labels:
        return metadata_namespace(obj, "") in (ROOT_NAMESPACE, GATEWAY_NAMESPACE)
    return bool(gateway_labels) and all(
        gateway_labels.get(str(k)) == str(v) for k, v in labels.items()
    )


def selects_workloads(obj: Mapping[str, Any], gateway_labels: Mapping[str, str]) -> bool:
    """Whether it applies to mesh workloads (too): no selector, or not the gateway's."""
    selector = (obj.get("spec") or {}).get("selector") or {}
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    if not labels:
        return metadata_namespace(obj, "") != GATEWAY_NAMESPACE
    return not selects_gateway(obj, gateway_labels)


def gateway_authn(
    objects: Sequence[Mapping[str, Any]], gateway_labels: Mapping[str, str], namespace: str
) -> GatewayAuthn:
    """The gateway's ``jwt_authn`` filter from every RequestAuthentication that applies to it.

    Every RequestAuthentication is read (a field the local mesh cannot apply is an
    error wherever the policy applies); only those that select the gateway make the
    filter. None: no filter, as istiod adds none.
    """
    rules: list[Spec] = []
    warnings: list[str] = []
    for obj in objects:
        if obj.get("kind") != _KIND or not str(obj.get("apiVersion", "")).startswith(
            "security.istio.io/"
        ):
            continue
        where = f"{_KIND} {metadata_name(obj)}"
        spec = Spec.of(where, "", obj.get("spec") or {})
        spec.only(_REQUEST_AUTHENTICATION)
        selector = spec.child("selector")
        if selector is not None:
            selector.only(_SELECTOR)
            selector.string_map("matchLabels")
        own = [rule for rule in spec.children("jwtRules")]
        for rule in own:
            rule.only(_JWT_RULE)
        if not selects_gateway(obj, gateway_labels):
            continue
        ns = metadata_namespace(obj, namespace)
        if selector is not None and ns not in (ROOT_NAMESPACE, GATEWAY_NAMESPACE):
            warnings.append(
                f"{where}: applied to the local gateway; in a cluster it applies only if the "
                f"ingress gateway runs in namespace {ns}"
            )
        rules.extend(own)
    if not rules:
        return GatewayAuthn(warnings=tuple(warnings))
    providers: dict[str, Any] = {}
    for index, rule in enumerate(rules):
        providers[f"origins-{index}"] = _provider(rule)
    issuers = tuple(dict.fromkeys(p["issuer"] for p in providers.values()))
    config = {
        "@type": _JWT_TYPE,
        "providers": providers,
        "rules": [{"match": {"prefix": "/"}, "requires": _requirement(list(providers))}],
        "bypass_cors_preflight": True,
    }
    return GatewayAuthn(
        http_filters=({"name": JWT_FILTER, "typed_config": config},),
        issuers=issuers,
        warnings=tuple(warnings),
    )


def _requirement(names: Sequence[str]) -> dict[str, Any]:
    """istiod's: each provider or allow_missing; with several, also any one provider alone."""

    def either(name: str) -> dict[str, Any]:
        return {"requires_any": {"requirements": [{"provider_name": name}, {"allow_missing": {}}]}}

    if len(names) == 1:
        return either(names[0])
    return {
        "requires_any": {
            "requirements": [
                *({"provider_name": name} for name in names),
                {"requires_all": {"requirements": [either(name) for name in names]}},
            ]
        }
    }


def _provider(rule: Spec) -> dict[str, Any]:
    issuer = rule.required_text("issuer")
    timeout_nanos = parse_duration(rule.data["timeout"]) if rule.has("timeout") else None
    if rule.has("timeout") and not timeout_nanos:
        raise rule.error("timeout", f"is not a duration: {rule.data['timeout']!r}")
    provider: dict[str, Any] = {
        "issuer": issuer,
        "payload_in_metadata": PAYLOAD,
        "normalize_payload_in_metadata": {"space_delimited_claims": list(SPACE_DELIMITED)},
        # Claims may pick the route (@request.auth.claims.*): choose it after verification.
        "clear_route_cache": True,
        "local_jwks": {
            "inline_string": _checked(rule, _jwks(rule, (timeout_nanos or 5_000_000_000) / 1e9))
        },
    }
    audiences = rule.strings("audiences")
    if audiences:
        provider["audiences"] = audiences
    if rule.flag("forwardOriginalToken"):
        provider["forward"] = True
    if rule.text("outputPayloadToHeader"):
        provider["forward_payload_header"] = rule.text("outputPayloadToHeader")
    headers = []
    for header in rule.children("fromHeaders"):
        header.only(_JWT_HEADER)
        entry = {"name": header.required_text("name")}
        if header.text("prefix"):
            entry["value_prefix"] = header.text("prefix") or ""
        headers.append(entry)
    if headers:
        provider["from_headers"] = headers
    if rule.has("fromParams"):
        provider["from_params"] = rule.strings("fromParams")
    if rule.has("fromCookies"):
        provider["from_cookies"] = rule.strings("fromCookies")
    claims = []
    for item in rule.children("outputClaimToHeaders"):
        item.only(_CLAIM_TO_HEADER)
        claims.append(
            {"header_name": item.required_text("header"), "claim_name": item.required_text("claim")}
        )
    if claims:
        provider["claim_to_headers"] = claims
    return provider


def _checked(rule: Spec, jwks: str) -> str:
    """Envoy refuses a listener whose JWKS holds no key: say it of the rule instead."""
    try:
        keys = json.loads(jwks).get("keys")
    except (ValueError, AttributeError):
        keys = None if "-----BEGIN" not in jwks else ["PEM"]
    if not keys:
        raise rule.error("jwks", 'holds no public key (a JWKS {"keys": [...]} or a PEM key)')
    return jwks


def _jwks(rule: Spec, timeout: float) -> str:
    inline = rule.text("jwks")
    uri_key = "jwksUri" if rule.has("jwksUri") else "jwks_uri"
    uri = rule.text(uri_key)
    if inline and uri:
        raise rule.error("jwks", f"and {uri_key} are mutually exclusive")
    if inline:
        return inline
    if not uri:
        raise rule.error("jwks", "or jwksUri is required (the local mesh has no OIDC discovery)")
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        try:
            return Path(urllib.request.url2pathname(parsed.path)).read_text()
        except OSError as exc:
            raise rule.error(uri_key, f"{uri!r} cannot be read: {exc.strerror}") from None
    if parsed.scheme not in ("http", "https") or not _loopback(parsed.hostname or ""):
        raise rule.unsupported(
            uri_key,
            repr(uri),
            "only file:// or an http URL on 127.0.0.1/localhost/::1: this machine has no "
            "internet; put the keys in jwks, or serve them locally",
        )
    try:
        with urllib.request.urlopen(uri, timeout=timeout) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise rule.error(uri_key, f"{uri!r} could not be fetched: {exc}") from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
