"""The one place that decides whether Istio objects are valid, and what the local mesh applies.

Three layers, each reported as :class:`Finding` lines naming the object and the field:

1. **Istio's schema**: cloudcoil's pydantic models, generated from Istio's CRDs, with
   unknown fields forbidden (a private copy of the models, see :func:`strict_models`).
   The models on Python 3.11 are Istio 1.24's; :data:`NEWER_ISTIO_FIELDS` lists the
   fields Istio added since, so they are not taken for typos.
2. **What Istio's CEL rules and admission webhook reject** although the schema allows
   it (:func:`rule_errors`): durations, negative or all-zero weights, retryOn
   conditions, percentages, ports, redirect codes. Each rule cites its source in Istio.
3. **What the local mesh applies** (:func:`unapplied`, :func:`translation_errors`):
   kinds it does not apply are reported by name; within the kinds it applies, the
   translator's own support checks run on the whole object set.

docs/istio-validation.md says which check lives where, with its source.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import re
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from .spec import parse_duration

ERROR = "error"
NOT_APPLIED = "not applied"

# apiVersion -> the cloudcoil module holding its models.
MODEL_MODULES = {
    "networking.istio.io/v1": "cloudcoil.models.istio.networking.v1",
    "networking.istio.io/v1beta1": "cloudcoil.models.istio.networking.v1beta1",
    "networking.istio.io/v1alpha3": "cloudcoil.models.istio.networking.v1alpha3",
    "security.istio.io/v1": "cloudcoil.models.istio.security.v1",
    "security.istio.io/v1beta1": "cloudcoil.models.istio.security.v1beta1",
    "telemetry.istio.io/v1": "cloudcoil.models.istio.telemetry.v1",
    "telemetry.istio.io/v1alpha1": "cloudcoil.models.istio.telemetry.v1alpha1",
    "extensions.istio.io/v1alpha1": "cloudcoil.models.istio.extensions.v1alpha1",
}

# The kinds the local mesh turns into Envoy configuration (usvc_mesh.translation; of a
# Sidecar only a namespace-wide outboundTrafficPolicy, anything else it refuses).
APPLIED_KINDS = frozenset(
    {
        "Gateway",
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "Sidecar",
        # at the gateway (usvc_mesh.authn); one that selects workloads is reported below
        "RequestAuthentication",
        # at each workload's inbound listener (usvc_mesh.authz); parts it cannot check
        # are reported below
        "AuthorizationPolicy",
        "PeerAuthentication",
    }
)
# Istio kinds istiod applies and the local mesh does not, and what each changes in a
# cluster (istio.io/latest/docs/reference/config/).
UNAPPLIED_KINDS = {
    "EnvoyFilter": "patches to the generated Envoy configuration",
    "WorkloadEntry": "endpoints outside Kubernetes",
    "WorkloadGroup": "VM workloads",
    "ProxyConfig": "proxy settings",
    "Telemetry": "tracing, metrics and access logs",
    "WasmPlugin": "Wasm filters",
    "TrafficExtension": "Wasm and Lua filters",
}

# Fields Istio's API has and cloudcoil's 1.24 models do not: (kind, where, field).
# "where" is the end of the parent's path with list indices and map keys dropped.
# Source: istio/api networking/v1alpha3/virtual_service.proto, destination_rule.proto,
# gateway.proto (the fields the CRDs in istio/api kubernetes/customresourcedefinitions.gen.yaml
# list beyond the 1.24 ones).
NEWER_ISTIO_FIELDS = frozenset(
    {
        ("VirtualService", "http.redirect", "prefixRewrite"),
        ("VirtualService", "http.retries", "backoff"),
        ("VirtualService", "http.retries", "retryIgnorePreviousHosts"),
        ("DestinationRule", "trafficPolicy", "retryBudget"),
        ("DestinationRule", "loadBalancer", "zoneAwareLbSetting"),
        ("DestinationRule", "outlierDetection", "outlierDetectionHttpErrorCodes"),
        ("DestinationRule", "connectionPool.http", "http2KeepAlive"),
        ("DestinationRule", "consistentHash.httpCookie", "attributes"),
        ("Gateway", "servers.tls", "caCertCredentialName"),
        ("Gateway", "servers.tls", "credentialNames"),
        ("Gateway", "servers.tls", "insecureSkipVerify"),
        ("Gateway", "servers.tls", "tlsCertificates"),
        # istio/api security/v1beta1/authorization.proto (Istio 1.25, 1.31)
        ("AuthorizationPolicy", "rules.from.source", "serviceAccounts"),
        ("AuthorizationPolicy", "rules.from.source", "notServiceAccounts"),
        ("AuthorizationPolicy", "rules.from.source", "trustDomains"),
        ("AuthorizationPolicy", "rules.from.source", "notTrustDomains"),
    }
)
METADATA_KEYS = frozenset({"name", "namespace", "labels", "annotations"})


@dataclass(frozen=True)
class Finding:
    """One line about one object: an error, or something the local mesh does not apply."""

    where: str  # "VirtualService middleware-svc"
    message: str  # "http[0].timeout: '5' is not a duration ..."
    level: str = ERROR

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def describe(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f"{obj.get('kind')} {name}"


def is_istio(obj: Mapping[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).split("/")[0].endswith(".istio.io")


# -- 1. the schema ------------------------------------------------------------------


@functools.cache
def strict_models(api_version: str) -> types.ModuleType:
    """A private copy of cloudcoil's models for ``api_version`` that rejects unknown fields.

    cloudcoil's models accept unknown fields, so a misspelt ``retries.atempts`` would
    pass. The copy is loaded under its own module name and every model class gets
    ``extra="forbid"``, then rebuilt until the schemas stop changing (parents embed
    their children's schemas). A copy, so that nobody else in the process who imports
    cloudcoil gets stricter models behind their back.
    """
    module_name = MODEL_MODULES[api_version]
    name = "usvc_mesh_strict_" + module_name.replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, _model_file(module_name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    models = [
        cls
        for cls in vars(module).values()
        if inspect.isclass(cls) and issubclass(cls, pydantic.BaseModel) and cls.__module__ == name
    ]
    for cls in models:
        cls.model_config["extra"] = "forbid"
    previous: list[str] = []
    for _ in range(20):
        for cls in models:
            cls.model_rebuild(force=True)
        current = [repr(cls.__pydantic_core_schema__) for cls in models]
        if current == previous:
            return module
        previous = current
    raise RuntimeError(f"the strict {api_version} models did not settle")


def _model_file(module_name: str) -> Path:
    """The source file of a cloudcoil model module, found without importing it.

    Importing ``cloudcoil.models.istio.networking.v1`` imports the package
    ``cloudcoil.models.istio``, which imports every version of every group (over a
    second); the private copy needs only the one file.
    """
    top = importlib.util.find_spec("cloudcoil")
    locations = top.submodule_search_locations if top is not None else None
    for location in locations or []:
        path = Path(location, *module_name.split(".")[1:]).with_suffix(".py")
        if path.is_file():
            return path
    raise RuntimeError(f"cloudcoil-models-istio is not installed (no {module_name})")


def model_classes(annotation: Any) -> Iterator[tuple[str, type[pydantic.BaseModel]]]:
    """(container suffix, model) of every model class in an annotation.

    The suffix spells the containers around the model: ``[]`` a list, ``.<name>`` a map's
    values (``list[dict[str, X]]`` -> ``[].<name>``); Optional, unions and Annotated add none.
    """
    origin = typing.get_origin(annotation)
    if origin is None:
        if inspect.isclass(annotation) and issubclass(annotation, pydantic.BaseModel):
            if issubclass(annotation, pydantic.RootModel):
                yield from model_classes(annotation.model_fields["root"].annotation)
            else:
                yield "", annotation
        return
    args = typing.get_args(annotation)
    if origin is list:
        yield from ((f"[]{suffix}", m) for suffix, m in model_classes(args[0]))
    elif origin is dict:
        yield from ((f"{MAP_VALUES}{suffix}", m) for suffix, m in model_classes(args[1]))
    else:
        for arg in args:
            yield from model_classes(arg)


MAP_VALUES = ".<name>"


def _models_in(annotation: Any) -> Iterator[tuple[type[pydantic.BaseModel], bool]]:
    """The model classes an annotation holds, each with whether it sits in a map's values."""
    for suffix, model in model_classes(annotation):
        yield model, MAP_VALUES in suffix


def _segments(path: str) -> list[str]:
    """``http[0].match[1].headers.x-user`` -> ``["http", "match", "headers", "x-user"]``."""
    return [part for part in re.sub(r"\[\d+\]", "", path).split(".") if part]


def _newer_field(kind: str, parents: Sequence[str], key: str) -> bool:
    joined = ".".join(parents)
    return any(
        k == kind and f == key and (joined == where or joined.endswith("." + where))
        for k, where, f in NEWER_ISTIO_FIELDS
    )


def is_istio_field(kind: str, path: str, key: str, api_version: str = "") -> bool:
    """Whether Istio's schema for ``kind`` has a field ``key`` in the message at ``path``.

    ``path`` is below ``spec``, as the translator writes it (``http[0].retries``); map
    keys (a header name) count as one segment. Uses cloudcoil's models plus
    :data:`NEWER_ISTIO_FIELDS`.
    """
    parents = _segments(path)
    if _newer_field(kind, parents, key):
        return True
    api_version = api_version or _default_version(kind)
    if api_version not in MODEL_MODULES:
        return False
    top = getattr(strict_models(api_version), kind, None)
    if top is None or "spec" not in top.model_fields:
        return False
    level: list[tuple[type[pydantic.BaseModel], bool]] = list(
        _models_in(top.model_fields["spec"].annotation)
    )
    for segment in parents:
        below: list[tuple[type[pydantic.BaseModel], bool]] = []
        for model, in_map in level:
            if in_map:
                below.append((model, False))  # the segment was a map key
                continue
            field = _field(model, segment)
            if field is not None:
                below.extend(_models_in(field.annotation))
        level = below
    return any(not in_map and _field(model, key) is not None for model, in_map in level)


def _field(model: type[pydantic.BaseModel], name: str) -> pydantic.fields.FieldInfo | None:
    for attribute, info in model.model_fields.items():
        if (info.alias or attribute) == name:
            return info
    return None


def _default_version(kind: str) -> str:
    for api_version in (
        "networking.istio.io/v1",
        "security.istio.io/v1",
        "telemetry.istio.io/v1",
        "extensions.istio.io/v1alpha1",
    ):
        if inspect.isclass(getattr(strict_models(api_version), kind, None)):
            return api_version
    return ""


def _without_newer_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` without the :data:`NEWER_ISTIO_FIELDS`, which the models lack."""
    kind = str(obj.get("kind"))

    def strip(node: Any, parents: list[str]) -> Any:
        if isinstance(node, list):
            return [strip(item, parents) for item in node]
        if not isinstance(node, Mapping):
            return node
        return {
            key: strip(value, [*parents, str(key)])
            for key, value in node.items()
            if not _newer_field(kind, parents, str(key))
        }

    out = dict(obj)
    if isinstance(obj.get("spec"), Mapping):
        out["spec"] = strip(obj["spec"], [])
    return out


def schema_errors(obj: Mapping[str, Any]) -> list[Finding]:
    """What Istio's schema rejects in ``obj``, unknown fields included."""
    where = describe(obj)
    api_version = str(obj.get("apiVersion"))
    if api_version not in MODEL_MODULES:
        return [Finding(where, f"apiVersion {api_version} is not one Istio defines")]
    module = strict_models(api_version)
    model = getattr(module, str(obj.get("kind")), None)
    if not (inspect.isclass(model) and issubclass(model, pydantic.BaseModel)):
        return [Finding(where, f"kind {obj.get('kind')} is not one of {api_version}")]
    metadata = obj.get("metadata")
    errors = [
        Finding(where, f"metadata.{key}: not an Istio field (misspelt?)")
        for key in (metadata if isinstance(metadata, Mapping) else {})
        if key not in METADATA_KEYS
    ]
    try:
        model.model_validate(_without_newer_fields(obj))
    except pydantic.ValidationError as error:
        found: list[tuple[str, str, str]] = []
        for e in error.errors():
            # Drop the class names of union members that pydantic puts in the path.
            parts = [p for p in e["loc"] if not inspect.isclass(getattr(module, str(p), None))]
            if parts and parts[0] == "spec":
                parts = parts[1:]  # paths below spec, as the translator writes them
            message = (
                "not an Istio field (misspelt?)" if e["type"] == "extra_forbidden" else e["msg"]
            )
            found.append((_user_path(parts) or "spec", str(e["type"]), str(message)))
        lines: list[str] = []
        for path, kind, message in found:
            # A oneOf is a union of models: "Field required" of the members the user did
            # not mean is noise beside a real error under the same parent.
            parent = path.rpartition(".")[0]
            if kind == "missing" and any(
                k != "missing" and p.startswith(parent) for p, k, _ in found
            ):
                continue
            line = f"{path}: {message}"
            if line not in lines:
                lines.append(line)
        errors += [Finding(where, line) for line in lines]
    return errors


def _user_path(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# -- 2. what Istio's CEL rules and webhook check beyond the schema ------------------

# Every field the networking CRDs validate with `duration(self) >= duration('1ms')`
# (istio/api kubernetes/customresourcedefinitions.gen.yaml).
DURATION_FIELDS = frozenset(
    {
        "backoff",
        "baseEjectionTime",
        "connectTimeout",
        "duration",
        "exponentialDelay",
        "fixedDelay",
        "idleTimeout",
        "interval",
        "maxAge",
        "maxConnectionDuration",
        "perTryTimeout",
        "time",
        "timeout",
    }
)
# istio/istio pkg/config/validation/agent/validation.go: supportedRetryOnPolicies.
RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "envoy-ratelimited",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
# RFC 7230 token characters: validHeaderNameRegex in pkg/config/validation/validation.go.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~A-Za-z0-9]+$")
_NANOS_PER_MS = 1_000_000


def rule_errors(obj: Mapping[str, Any]) -> list[Finding]:
    """What Istio rejects in ``obj`` beyond its schema (CEL rules, webhook)."""
    if not str(obj.get("apiVersion", "")).startswith("networking.istio.io/"):
        return []
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return []
    where = describe(obj)
    messages = list(_duration_errors(spec))
    if obj.get("kind") == "VirtualService":
        for i, http in enumerate(spec.get("http") or []):
            if isinstance(http, Mapping):
                messages += _http_route_errors(f"http[{i}]", http)
    if obj.get("kind") == "DestinationRule":
        messages += _destination_rule_errors(spec)
    return [Finding(where, message) for message in messages]


# labels.IsDNS1123Label (istio/istio pkg/config/labels), as validateSubsetName uses it.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _destination_rule_errors(spec: Mapping[str, Any]) -> Iterator[str]:
    # pkg/config/validation/validation.go validateSubsetName, validateTrafficPolicy.
    policies = [("trafficPolicy", spec.get("trafficPolicy"))]
    for i, subset in enumerate(spec.get("subsets") or []):
        if not isinstance(subset, Mapping):
            continue
        name = subset.get("name")
        if isinstance(name, str) and not _DNS_LABEL.match(name):
            yield f"subsets[{i}].name: {name!r} is not a DNS-1123 label (lower case, digits, -)"
        policies.append((f"subsets[{i}].trafficPolicy", subset.get("trafficPolicy")))
    for where, policy in policies:
        if isinstance(policy, Mapping) and not any(v is not None for v in policy.values()):
            yield f"{where}: a traffic policy needs at least one field"


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every mapping entry below ``node``."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            yield child, str(key), value
            yield from _walk(value, child)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _duration_errors(spec: Mapping[str, Any]) -> Iterator[str]:
    # CEL: duration(self) >= duration('1ms') (istio/api CRDs); webhook: "only
    # durations to ms precision are supported" (pkg/config/validation/agent/validation.go
    # ValidateDuration). connectionPool.tcp.idleTimeout 0s disables it (validateConnectionPool).
    for path, key, value in _walk(spec):
        if key not in DURATION_FIELDS or isinstance(value, Mapping | list) or value is None:
            continue
        nanos = parse_duration(value)
        if nanos is None:
            yield f"{path}: {value!r} is not a duration (like 2s, 500ms, 1m30s)"
        elif nanos == 0 and path.endswith("tcp.idleTimeout"):
            continue
        elif nanos < _NANOS_PER_MS:
            yield f"{path}: {value!r} is below Istio's minimum of 1ms"
        elif nanos % _NANOS_PER_MS:
            yield f"{path}: {value!r} is finer than Istio's millisecond precision"


def _http_route_errors(where: str, http: Mapping[str, Any]) -> Iterator[str]:
    # pkg/config/validation/validation.go validateHTTPRouteDestinations: weights may
    # not be negative and, with several destinations, not all 0. They need NOT add up
    # to 100: istiod passes them on as Envoy weights (no total_weight).
    routes = [r for r in http.get("route") or [] if isinstance(r, Mapping)]
    weights = [r.get("weight") for r in routes]
    for j, weight in enumerate(weights):
        if isinstance(weight, int) and not isinstance(weight, bool) and weight < 0:
            yield f"{where}.route[{j}].weight: {weight} is negative"
    if len(routes) > 1 and all(not w for w in weights):
        yield f"{where}.route: the weights add up to 0 (total destination weight = 0)"
    yield from _retry_errors(f"{where}.retries", http.get("retries"))
    # virtualservice.go validateHTTPRoute / validateHTTPRouteConflict.
    if http.get("mirror") is not None and http.get("mirrors"):
        yield f"{where}: mirror and mirrors cannot both be set"
    for key in ("mirrorPercentage",):
        yield from _percentage_errors(f"{where}.{key}", http.get(key), minimum=0.0)
    for j, mirror in enumerate(http.get("mirrors") or []):
        if isinstance(mirror, Mapping):
            yield from _percentage_errors(
                f"{where}.mirrors[{j}].percentage", mirror.get("percentage"), minimum=0.0
            )
    fault = http.get("fault")
    if isinstance(fault, Mapping):
        # validateHTTPFaultInjection{Abort,Delay}: percentage 0 or within [0.0001, 100].
        for kind in ("abort", "delay"):
            part = fault.get(kind)
            if isinstance(part, Mapping):
                yield from _percentage_errors(
                    f"{where}.fault.{kind}.percentage", part.get("percentage"), minimum=0.0001
                )
        abort = fault.get("abort")
        status = abort.get("httpStatus") if isinstance(abort, Mapping) else None
        if isinstance(status, int) and not 200 <= status <= 599:
            yield f"{where}.fault.abort.httpStatus: {status} is not within 200-599"
    yield from _redirect_errors(f"{where}.redirect", http.get("redirect"), http.get("match"))
    for j, match in enumerate(http.get("match") or []):
        if not isinstance(match, Mapping):
            continue
        for block in ("headers", "withoutHeaders"):
            for name in match.get(block) or {}:
                yield from _header_name_errors(f"{where}.match[{j}].{block}", str(name))
        port = match.get("port")
        if isinstance(port, int) and not 0 < port <= 65535:
            yield f"{where}.match[{j}].port: {port} is not within 1-65535"


def _retry_errors(where: str, retries: Any) -> Iterator[str]:
    # pkg/config/validation/agent/validation.go ValidateHTTPRetry.
    if not isinstance(retries, Mapping):
        return
    attempts = retries.get("attempts") or 0
    if isinstance(attempts, int) and attempts < 0:
        yield f"{where}.attempts: {attempts} is negative"
    if attempts == 0 and any(
        retries.get(k) is not None for k in ("perTryTimeout", "retryOn", "retryRemoteLocalities")
    ):
        yield f"{where}: a retry policy with attempts 0 (retries disabled)"
    retry_on = retries.get("retryOn")
    if isinstance(retry_on, str) and retry_on:
        unknown = [
            part
            for part in retry_on.split(",")
            if part not in RETRY_ON and not (part.isdigit() and 100 <= int(part) <= 599)
        ]
        if unknown:
            yield (
                f"{where}.retryOn: {', '.join(map(repr, unknown))} is not a retry condition "
                "or HTTP status code"
            )


def _percentage_errors(where: str, percent: Any, *, minimum: float) -> Iterator[str]:
    value = percent.get("value") if isinstance(percent, Mapping) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if minimum == 0.0 and not 0 <= value <= 100:
        yield f"{where}.value: {value} is not within 0-100"
    elif minimum > 0.0 and value != 0 and not minimum <= value <= 100:
        yield f"{where}.value: {value} is neither 0 nor within {minimum}-100"


def _redirect_errors(where: str, redirect: Any, matches: Any) -> Iterator[str]:
    # pkg/config/validation/validation.go validateHTTPRedirect.
    if not isinstance(redirect, Mapping):
        return
    if redirect.get("uri") and redirect.get("prefixRewrite"):
        yield f"{where}: uri and prefixRewrite cannot both be set"
    if redirect.get("prefixRewrite"):
        for match in matches or []:
            uri = match.get("uri") if isinstance(match, Mapping) else None
            if isinstance(uri, Mapping) and "prefix" not in uri:
                yield f"{where}.prefixRewrite: needs every match's uri to be a prefix match"
                break
    targets = ("uri", "prefixRewrite", "authority", "port", "derivePort", "scheme")
    if not any(redirect.get(k) for k in targets):
        yield f"{where}: needs uri, prefixRewrite, authority, scheme or port"
    code = redirect.get("redirectCode")
    if isinstance(code, int) and code and not 300 <= code <= 399:
        yield f"{where}.redirectCode: {code} is not a 3xx code"
    scheme = redirect.get("scheme")
    if scheme and scheme not in {"http", "https"}:
        yield f"{where}.scheme: {scheme!r} is neither http nor https"


def _header_name_errors(where: str, name: str) -> Iterator[str]:
    # validation.go ValidateHTTPHeaderNameOrJwtClaimRoute: an RFC 7230 token, a pseudo
    # header or @request.auth.claims.*. Lower case is required by the API's own words:
    # "The header keys must be lowercase" (istio/api networking/v1alpha3/virtual_service.proto).
    if name.startswith("@request.auth.claims") or name.startswith(":"):
        return
    if not _HEADER_NAME.match(name):
        yield f"{where}: {name!r} is not a valid header name"
    elif name != name.lower():
        yield f"{where}: {name!r} must be lower case"


# -- 3. what the local mesh applies ---------------------------------------------------


def unapplied(objects: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """One finding per Istio object of a kind the local mesh does not apply.

    A RequestAuthentication is applied at the local gateway only; one that selects
    the mesh's workloads (too) is reported, since their sidecars do not validate JWTs
    locally.
    """
    from .authn import selects_gateway, selects_workloads
    from .authz import findings as authz_findings

    objects = list(objects)
    gateway_labels: dict[str, str] = {}
    for obj in objects:
        selector = (obj.get("spec") or {}).get("selector") if obj.get("kind") == "Gateway" else None
        if isinstance(selector, Mapping):
            gateway_labels.update({str(k): str(v) for k, v in selector.items()})
    found = []
    for obj in objects:
        kind = str(obj.get("kind"))
        if is_istio(obj) and kind == "RequestAuthentication":
            if selects_workloads(obj, gateway_labels):
                where = "at the local gateway; " if selects_gateway(obj, gateway_labels) else ""
                message = (
                    f"applied {where}not applied to the mesh's workloads locally (their "
                    "sidecars validate no JWTs here); in a cluster it sets their JWT validation"
                    if where
                    else "not applied locally: it selects mesh workloads, whose sidecars "
                    "validate no JWTs here; in a cluster it sets their JWT validation"
                )
                found.append(Finding(describe(obj), message, NOT_APPLIED))
            continue
        if is_istio(obj) and kind in ("AuthorizationPolicy", "PeerAuthentication"):
            try:
                lines = authz_findings(obj, gateway_labels=gateway_labels)
            except ValueError:
                lines = []  # an error: translation_errors reports it
            found += [Finding(describe(obj), line, NOT_APPLIED) for line in lines]
            continue
        if not is_istio(obj) or kind in APPLIED_KINDS:
            continue
        effect = UNAPPLIED_KINDS.get(kind, "what istiod makes of it")
        message = f"not applied locally; in a cluster it sets {effect}"
        found.append(Finding(describe(obj), message, NOT_APPLIED))
    return found


def translation_errors(objects: Sequence[Mapping[str, Any]], namespace: str) -> list[Finding]:
    """The translator's support checks over the whole object set (the first failure)."""
    from .authz import findings as authz_findings
    from .translation import translate  # the translator imports spec.py, which imports us lazily

    try:
        translate(objects, endpoints={}, namespace=namespace)
        for obj in objects:  # read by each workload's inbound listener (usvc_mesh.authz)
            authz_findings(obj, namespace)
    except ValueError as error:
        where, _, message = str(error).partition(": ")
        return [Finding(where, message) if message else Finding("objects", where)]
    return []


def validate_object(obj: Mapping[str, Any]) -> list[Finding]:
    """Schema and rule errors of one Istio object."""
    errors = schema_errors(obj)
    return errors + rule_errors(obj)


def validate_objects(
    objects: Sequence[Mapping[str, Any]], *, namespace: str = "default", translate: bool = True
) -> list[Finding]:
    """Everything wrong with a set of objects, and every Istio object the mesh ignores.

    Errors of each Istio object (schema, rules), then, when those pass and
    ``translate`` is true, the translator's checks on the set; last, the objects of
    kinds the local mesh does not apply (level :data:`NOT_APPLIED`).
    """
    istio = [obj for obj in objects if is_istio(obj)]
    errors = [finding for obj in istio for finding in validate_object(obj)]
    if not errors and translate:
        errors = translation_errors(objects, namespace)
    return errors + unapplied(istio)
