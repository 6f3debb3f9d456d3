"""VirtualService http[] rules -> Envoy routes, the way istiod builds them.

One Envoy route per ``match`` entry (or one catch-all route when a rule has
no match), in order; rules after a catch-all are dropped. Istio's defaults
replace Envoy's: no route timeout (``0s``) unless ``timeout`` is set, and a
retry policy of 2 attempts on connect-failure, refused-stream, unavailable,
cancelled and retriable-status-codes unless ``retries`` says otherwise
(``attempts: 0`` removes it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .authn import JWT_FILTER, PAYLOAD
from .clusters import DestinationRule, cluster_name, hash_policy
from .registry import MeshHost, Registry
from .spec import Spec, message, parse_duration
from .validation import RETRY_ON

MESH = "mesh"
FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
_CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
_FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_EXTENSIONS = "type.googleapis.com/envoy.extensions"
_PREVIOUS_HOSTS = {
    "name": "envoy.retry_host_predicates.previous_hosts",
    "typed_config": {"@type": f"{_EXTENSIONS}.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
}
_PREVIOUS_PRIORITIES = {
    "name": "envoy.retry_priorities.previous_priorities",
    "typed_config": {
        "@type": f"{_EXTENSIONS}.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
        "update_frequency": 2,
    },
}
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
_GRPC_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
_REDIRECT_CODES = {
    301: "MOVED_PERMANENTLY",
    302: "FOUND",
    303: "SEE_OTHER",
    307: "TEMPORARY_REDIRECT",
    308: "PERMANENT_REDIRECT",
}

_VS_FIELDS = {"hosts", "gateways", "http", "exportTo"}
_VS_UNSUPPORTED = {"tls", "tcp"}
_HTTP_FIELDS = {
    "name",
    "match",
    "route",
    "redirect",
    "directResponse",
    "rewrite",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirrors",
    "mirrorPercentage",
    "mirrorPercent",
    "headers",
    "corsPolicy",
}
_CORS_FIELDS = {
    "allowOrigins",
    "allowOrigin",
    "allowMethods",
    "allowHeaders",
    "exposeHeaders",
    "maxAge",
    "allowCredentials",
    "unmatchedPreflights",
}
_MATCH_FIELDS = {
    "name",
    "uri",
    "scheme",
    "method",
    "authority",
    "headers",
    "port",
    "gateways",
    "queryParams",
    "ignoreUriCase",
    "withoutHeaders",
    "statPrefix",
    "sourceLabels",
    "sourceNamespace",
}
_STRING_MATCH = ("exact", "prefix", "regex")

_VS = "VirtualService"
# Where a Destination (and its PortSelector) and HeaderOperations sit in a VirtualService.
_DESTINATIONS = ("http[].route[].destination", "http[].mirror", "http[].mirrors[].destination")
_HEADERS = ("http[].headers", "http[].route[].headers")
_VIRTUAL_SERVICE = message(
    _VS,
    "VirtualService",
    [""],
    _VS_FIELDS,
    dict.fromkeys(_VS_UNSUPPORTED, "the local mesh routes HTTP; other ports are tunnelled as is"),
)
_HTTP_ROUTE = message(
    _VS,
    "HTTPRoute",
    ["http[]"],
    _HTTP_FIELDS,
    {"delegate": "delegate VirtualServices are not applied locally", "mirror_percent": ""},
)
_MATCH = message(
    _VS,
    "HTTPMatchRequest",
    ["http[].match[]"],
    _MATCH_FIELDS,
)
_STRING_MATCH_MESSAGE = message(
    _VS,
    "StringMatch",
    [
        *(f"http[].match[].{key}" for key in ("uri", "scheme", "method", "authority")),
        *(f"http[].match[].{key}.<name>" for key in ("headers", "withoutHeaders", "queryParams")),
        "http[].corsPolicy.allowOrigins[]",
    ],
    _STRING_MATCH,
)
_ROUTE_DESTINATION = message(
    _VS, "HTTPRouteDestination", ["http[].route[]"], {"destination", "weight", "headers"}
)
_DESTINATION = message(_VS, "Destination", _DESTINATIONS, {"host", "subset", "port"})
_PORT_SELECTOR = message(_VS, "PortSelector", [f"{d}.port" for d in _DESTINATIONS], {"number"})
_HEADERS_MESSAGE = message(_VS, "Headers", _HEADERS, {"request", "response"})
_HEADER_OPERATIONS = message(
    _VS,
    "HeaderOperations",
    [f"{h}.{part}" for h in _HEADERS for part in ("request", "response")],
    {"set", "add", "remove"},
)
_REWRITE = message(_VS, "HTTPRewrite", ["http[].rewrite"], {"uri", "authority", "uriRegexRewrite"})
_REGEX_REWRITE = message(
    _VS, "RegexRewrite", ["http[].rewrite.uriRegexRewrite"], {"match", "rewrite"}
)
_MIRROR_POLICY = message(
    _VS, "HTTPMirrorPolicy", ["http[].mirrors[]"], {"destination", "percentage"}
)
_PERCENT = message(
    _VS,
    "Percent",
    [
        "http[].mirrorPercentage",
        "http[].mirrors[].percentage",
        "http[].fault.delay.percentage",
        "http[].fault.abort.percentage",
    ],
    {"value"},
)
_CORS = message(_VS, "CorsPolicy", ["http[].corsPolicy"], _CORS_FIELDS)
_RETRY = message(
    _VS,
    "HTTPRetry",
    ["http[].retries"],
    {
        "attempts",
        "perTryTimeout",
        "retryOn",
        "retryRemoteLocalities",
        "retryIgnorePreviousHosts",
        "backoff",
    },
)
_FAULT = message(_VS, "HTTPFaultInjection", ["http[].fault"], {"delay", "abort"})
_DELAY = message(
    _VS,
    "Delay",
    ["http[].fault.delay"],
    {"fixedDelay", "percentage", "percent"},
    {"exponentialDelay"},
)
_ABORT = message(
    _VS, "Abort", ["http[].fault.abort"], {"httpStatus", "grpcStatus", "percentage"}, {"http2Error"}
)
_REDIRECT = message(
    _VS,
    "HTTPRedirect",
    ["http[].redirect"],
    {"uri", "authority", "port", "derivePort", "scheme", "redirectCode"},
)
_DIRECT_RESPONSE = message(_VS, "HTTPDirectResponse", ["http[].directResponse"], {"status", "body"})
_BODY = message(_VS, "HTTPBody", ["http[].directResponse.body"], {"string"}, {"bytes"})


@dataclass(frozen=True)
class Source:
    """The proxy routes are built for: its pod labels and namespace.

    istiod builds each proxy's routes for that proxy and drops the match
    conditions whose ``sourceLabels``/``sourceNamespace`` it does not satisfy
    (pilot/pkg/networking/core/route/route.go ``sourceMatchHTTP``); locally the
    proxy is a workload's outbound listener (:mod:`usvc_mesh.sidecars`) or the
    gateway. ``None`` stands for no proxy in particular: validation.
    """

    labels: frozenset[tuple[str, str]]
    namespace: str | None  # None: a caller of no namespace (compose's shared listener)

    @classmethod
    def of(cls, labels: Mapping[str, str], namespace: str | None) -> Source:
        return cls(frozenset(labels.items()), namespace)


ANONYMOUS = Source(frozenset(), None)


def source_conditioned(match: Mapping[str, Any]) -> bool:
    """Whether a match's ``sourceLabels``/``sourceNamespace`` decide where it applies.

    istiod checks them only when the match names no ``gateways``: with
    ``gateways`` set, those alone decide (route.go ``sourceMatchHTTP``).
    """
    if match.get("gateways"):
        return False
    return bool(match.get("sourceLabels")) or bool(match.get("sourceNamespace"))


def source_applies(match: Spec, source: Source) -> bool:
    """istiod's ``sourceMatchHTTP`` for a match without ``gateways``.

    istio.io VirtualService, HTTPMatchRequest: ``sourceLabels`` "one or more
    labels that constrain the applicability of a rule to source (client)
    workloads with the given labels"; ``sourceNamespace`` "the source namespace
    constraining the applicability of a rule to workloads in that namespace".
    """
    wanted = frozenset(match.string_map("sourceLabels").items())
    namespace = match.text("sourceNamespace") or ""
    return wanted <= source.labels and (not namespace or namespace == source.namespace)


@dataclass(frozen=True)
class VirtualService:
    name: str
    namespace: str
    spec: Spec
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"VirtualService {self.name}"

    @property
    def http(self) -> list[Spec]:
        return self.spec.children("http")


def read_virtual_service(
    obj: Mapping[str, Any], name: str, namespace: str, gateways: set[str]
) -> VirtualService:
    where = f"VirtualService {name}"
    spec = Spec.of(where, "", obj.get("spec") or {})
    spec.only(_VIRTUAL_SERVICE)
    hosts = spec.strings("hosts")
    if not hosts:
        # Istio allows it only for a delegate: a VirtualService another one's
        # http[].delegate points to, which the local mesh does not apply.
        raise spec.unsupported(
            "hosts", "(none)", "a VirtualService without hosts is a delegate; delegates are not"
        )
    bound = tuple(
        gateway_key(gateway, namespace, gateways, spec, f"gateways[{index}]")
        for index, gateway in enumerate(spec.strings("gateways") or [MESH])
    )
    return VirtualService(name, namespace, spec, tuple(hosts), bound)


def gateway_key(name: str, namespace: str, known: set[str], spec: Spec, path: str) -> str:
    """``mesh``, or ``namespace/name`` of a Gateway in the object set."""
    if name == MESH:
        return MESH
    key = name if "/" in name else f"{namespace}/{name}"
    if key not in known:
        raise ValueError(f"{spec.where}: {spec.at(path)} {name!r} names no Gateway")
    return key


class RouteBuilder:
    """Translates VirtualService rules for one proxy listener context."""

    def __init__(
        self,
        registry: Registry,
        rules: Mapping[str, DestinationRule],
        *,
        jwt_issuers: Sequence[str] = (),
    ) -> None:
        self.registry = registry
        self.rules = rules
        # The issuers the gateway's jwt_authn verifies: @request.auth.claims matches need one.
        self.jwt_issuers = tuple(jwt_issuers)
        self.warnings: list[str] = []

    def routes(
        self,
        vs: VirtualService,
        *,
        port: int | None,
        gateway: str | None,
        source: Source | None = None,
    ) -> list[dict[str, Any]]:
        """Routes of ``vs`` for a listener on ``port`` serving ``gateway``, seen by ``source``.

        ``None`` for all three checks every rule without filtering any out, which is
        how a VirtualService is validated even where nothing binds it.
        """
        out: list[dict[str, Any]] = []
        for http in vs.http:
            routes, catch_all = self._http(vs, http, port, gateway, source)
            out.extend(routes)
            if catch_all and port is not None:
                break
        return out

    def default_route(self, host: MeshHost, port: int) -> dict[str, Any]:
        """istiod's route for a host no VirtualService covers."""
        action: dict[str, Any] = {
            "cluster": cluster_name(port, "", host.fqdn),
            **route_timeout(None),
        }
        policy = hash_policy(self.rules.get(host.fqdn), port, "")
        if policy is not None:
            action["hash_policy"] = [dict(policy)]
        action["retry_policy"] = _default_retry(consistent_hash=policy is not None)
        return {
            "name": "default",
            "match": {"prefix": "/"},
            "route": action,
            "decorator": {"operation": f"{host.fqdn}:{port}/*"},
        }

    # -- one http[] rule ------------------------------------------------------

    def _http(
        self,
        vs: VirtualService,
        http: Spec,
        port: int | None,
        gateway: str | None,
        source: Source | None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """The routes of one rule, and whether it catches all requests (istiod stops there)."""
        http.only(_HTTP_ROUTE)
        kinds = [key for key in ("route", "redirect", "directResponse") if http.has(key)]
        if len(kinds) != 1:
            raise ValueError(
                f"{vs.where}: {http.path} needs exactly one of route, redirect, directResponse"
            )
        matches: list[Spec | None] = list(http.children("match")) or [None]
        routes: list[dict[str, Any]] = []
        name = http.text("name") or ""
        listen_port = port if port is not None else self._any_port(vs)
        operations = _headers(http.child("headers"))
        catch_all = not http.children("match")
        for match in matches:
            if match is not None and not self._applies(vs, match, port, gateway, source):
                continue
            route_name = name
            if match is not None and match.text("name"):
                route_name = f"{name}.{match.text('name')}"
            route: dict[str, Any] = {
                "name": route_name or f"{vs.name}.{http.path}",
                "match": self._claims_checked(_match(match), match, gateway),
            }
            if match is not None and match.has("statPrefix"):
                route["stat_prefix"] = match.text("statPrefix")
            operations.apply(route)
            cluster = None
            if kinds[0] == "route":
                cluster = self._action(vs, http, route, listen_port, operations.authority)
            elif kinds[0] == "redirect":
                route["redirect"] = _redirect(http.child("redirect"), listen_port)
            else:
                route["direct_response"] = _direct_response(http.child("directResponse"))
            route["decorator"] = {
                "operation": _operation(route["match"], cluster, vs.name, listen_port)
            }
            per_filter: dict[str, Any] = {}
            fault = _fault(http.child("fault"))
            if fault is not None:
                per_filter[FAULT_FILTER] = fault
            cors = _cors(http.child("corsPolicy"))
            if cors is not None:
                per_filter[CORS_FILTER] = cors
            if per_filter:
                route["typed_per_filter_config"] = per_filter
            routes.append(route)
            if _is_catch_all(route["match"]):
                catch_all = True
                if port is not None:
                    break
        return routes, catch_all

    def _claims_checked(
        self, route_match: dict[str, Any], match: Spec | None, gateway: str | None
    ) -> dict[str, Any]:
        """JWT claim matches: at a gateway only, as istio.io documents them."""
        if match is None or "dynamic_metadata" not in route_match:
            return route_match
        if gateway == MESH:
            # istio.io VirtualService HTTPMatchRequest.headers: "@request.auth.claims"
            # matches are "supported only for gateway"; the sidecars' are not routed so.
            name = next(
                f"{key}.{n}"
                for key in ("headers", "withoutHeaders")
                for n in (match.data.get(key) or {})
                if str(n).startswith(CLAIMS)
            )
            raise match.unsupported(
                name,
                hint="JWT claim routing is supported only for gateways (istio.io VirtualService "
                "reference); this rule is bound to the mesh's sidecars",
            )
        if gateway is not None and not self.jwt_issuers:
            warning = (
                f"{match.where}: {match.path} matches JWT claims, but no RequestAuthentication "
                "applies to the gateway: the route never matches (as in Istio)"
            )
            if warning not in self.warnings:
                self.warnings.append(warning)
        return route_match

    def _any_port(self, vs: VirtualService) -> int:
        for host_name in vs.hosts:
            host = self.registry.resolve(host_name, vs.namespace)
            if host is not None and host.ports:
                return host.ports[0].number
        return 80

    def _applies(
        self,
        vs: VirtualService,
        match: Spec,
        port: int | None,
        gateway: str | None,
        source: Source | None,
    ) -> bool:
        """istiod's TranslateRoute filters: the match's port, then ``sourceMatchHTTP``."""
        match.only(_MATCH)
        match.string_map("sourceLabels")
        match.text("sourceNamespace")
        wanted_port = match.integer("port", minimum=1)
        gateways = set()
        for index, name in enumerate(match.strings("gateways")):
            key = name if name == MESH or "/" in name else f"{vs.namespace}/{name}"
            if key not in vs.gateways:
                raise match.error(
                    f"gateways[{index}]", f"{name!r} is not one of the VirtualService's gateways"
                )
            gateways.add(key)
        if port is not None and wanted_port is not None and wanted_port != port:
            return False
        if gateways:
            if match.has("sourceLabels") or match.has("sourceNamespace"):
                warning = (
                    f"{match.where}: {match.path} sets gateways, so istiod ignores its "
                    "sourceLabels/sourceNamespace (route.go sourceMatchHTTP);"
                    " so does the local mesh"
                )
                if warning not in self.warnings:
                    self.warnings.append(warning)
            return gateway is None or gateway in gateways
        return source is None or source_applies(match, source)

    def _action(
        self,
        vs: VirtualService,
        http: Spec,
        route: dict[str, Any],
        port: int,
        authority: str | None,
    ) -> str | None:
        action: dict[str, Any] = {}
        destinations = http.children("route")
        if not destinations:
            raise http.error("route", "needs at least one destination")
        hashes: list[Mapping[str, Any]] = []
        single: str | None = None
        if len(destinations) == 1:
            destination = destinations[0]
            destination.only(_ROUTE_DESTINATION)
            destination.integer("weight")
            single, host_port, subset, host = self._destination(
                vs, destination, "destination", port
            )
            action["cluster"] = single
            operations = _headers(destination.child("headers"))
            operations.apply(route)
            authority = authority or operations.authority
            policy = hash_policy(self.rules.get(host.fqdn), host_port, subset)
            if policy is not None:
                hashes.append(policy)
        else:
            weighted = []
            total = 0
            for destination in destinations:
                destination.only(_ROUTE_DESTINATION)
                weight = destination.integer("weight", 0) or 0
                name, host_port, subset, host = self._destination(
                    vs, destination, "destination", port
                )
                total += weight
                if weight == 0:
                    continue
                entry: dict[str, Any] = {"name": name, "weight": weight}
                operations = _headers(destination.child("headers"))
                operations.apply(entry)
                if operations.authority:
                    entry["host_rewrite_literal"] = operations.authority
                weighted.append(entry)
                policy = hash_policy(self.rules.get(host.fqdn), host_port, subset)
                if policy is not None and policy not in hashes:
                    hashes.append(policy)
            if total == 0:
                raise http.error(
                    "route", "weights add up to 0: at least one destination needs a weight"
                )
            action["weighted_clusters"] = {"clusters": weighted}
        action.update(route_timeout(http.duration("timeout")))
        if hashes:
            action["hash_policy"] = [dict(h) for h in hashes]
        rewrite = http.child("rewrite")
        if rewrite is not None:
            rewrite.only(_REWRITE)
            regex = rewrite.child("uriRegexRewrite")
            if regex is not None:
                if rewrite.has("uri"):
                    raise rewrite.error("uri", "and uriRegexRewrite are mutually exclusive")
                regex.only(_REGEX_REWRITE)
                action["regex_rewrite"] = {
                    "pattern": {"regex": regex.required_text("match")},
                    "substitution": regex.text("rewrite", "") or "",
                }
            elif rewrite.text("uri"):
                action["prefix_rewrite"] = rewrite.text("uri")
            authority = rewrite.text("authority") or authority
        if authority:
            action["host_rewrite_literal"] = authority
        mirrors = self._mirrors(vs, http, port)
        if mirrors:
            action["request_mirror_policies"] = mirrors
        retry = _retry(http.child("retries"), consistent_hash=bool(hashes) and single is not None)
        if retry is not None:
            action["retry_policy"] = retry
        route["route"] = action
        return single

    def _destination(
        self, vs: VirtualService, parent: Spec, key: str, listen_port: int
    ) -> tuple[str, int, str, MeshHost]:
        spec = parent.child(key)
        if spec is None:
            raise parent.error(key, "is required")
        spec.only(_DESTINATION)
        host_name = spec.required_text("host")
        host = self.registry.resolve(host_name, vs.namespace)
        if host is None:
            raise spec.error("host", f"{host_name!r} names no Service or ServiceEntry")
        subset = spec.text("subset", "") or ""
        if subset:
            rule = self.rules.get(host.fqdn)
            if rule is None or subset not in rule.subsets:
                defined = f"DestinationRule {rule.name}" if rule else "no DestinationRule"
                raise spec.error("subset", f"{subset!r} is not defined for {host.fqdn} ({defined})")
        port_spec = spec.child("port")
        number: int | None = None
        if port_spec is not None:
            port_spec.only(_PORT_SELECTOR)
            number = port_spec.integer("number", minimum=1)
            if number is None or host.port(number) is None:
                raise port_spec.error("number", f"{number} is not a port of {host.fqdn}")
        elif len(host.ports) == 1:
            number = host.ports[0].number
        else:
            number = listen_port
            if host.port(number) is None:
                raise spec.error("port", f"is required: {host.fqdn} has several ports")
        return cluster_name(number, subset, host.fqdn), number, subset, host

    def _mirrors(self, vs: VirtualService, http: Spec, port: int) -> list[dict[str, Any]]:
        out = []
        if http.has("mirror"):
            percent = http.percent("mirrorPercentage", _PERCENT)
            if percent is None and http.has("mirrorPercent"):
                legacy = http.integer("mirrorPercent")
                percent = float(legacy or 0)
                if percent > 100:
                    raise http.error("mirrorPercent", f"must be at most 100, not {legacy}")
            cluster, _, _, _ = self._destination(vs, http, "mirror", port)
            if percent is None or percent > 0:
                out.append(_mirror(cluster, 100.0 if percent is None else percent))
        elif http.has("mirrorPercentage") or http.has("mirrorPercent"):
            raise http.error("mirrorPercentage", "needs mirror")
        for policy in http.children("mirrors"):
            policy.only(_MIRROR_POLICY)
            percent = policy.percent("percentage", _PERCENT)
            cluster, _, _, _ = self._destination(vs, policy, "destination", port)
            if percent is None or percent > 0:
                out.append(_mirror(cluster, 100.0 if percent is None else percent))
        return out


# -- pieces of a route ---------------------------------------------------------


@dataclass
class _HeaderOperations:
    request_add: list[dict[str, Any]]
    request_remove: list[str]
    response_add: list[dict[str, Any]]
    response_remove: list[str]
    authority: str | None

    def apply(self, target: dict[str, Any]) -> None:
        for key, values in (
            ("request_headers_to_add", self.request_add),
            ("request_headers_to_remove", self.request_remove),
            ("response_headers_to_add", self.response_add),
            ("response_headers_to_remove", self.response_remove),
        ):
            if values:
                target.setdefault(key, []).extend(values)


def _headers(spec: Spec | None) -> _HeaderOperations:
    if spec is None:
        return _HeaderOperations([], [], [], [], None)
    spec.only(_HEADERS_MESSAGE)
    request = spec.child("request")
    response = spec.child("response")
    request_add, request_remove, set_authority, add_authority = _header_operations(request)
    response_add, response_remove, _, _ = _header_operations(response)
    return _HeaderOperations(
        request_add, request_remove, response_add, response_remove, set_authority or add_authority
    )


def _header_operations(
    spec: Spec | None,
) -> tuple[list[dict[str, Any]], list[str], str | None, str | None]:
    if spec is None:
        return [], [], None, None
    spec.only(_HEADER_OPERATIONS)
    added: list[dict[str, Any]] = []
    authorities: list[str | None] = []
    for key, action in (("set", "OVERWRITE_IF_EXISTS_OR_ADD"), ("add", "APPEND_IF_EXISTS_OR_ADD")):
        authority = None
        for name, value in sorted(spec.string_map(key).items()):
            # Host and pseudo-headers cannot be edited as headers; the
            # authority becomes a host rewrite, as istiod does.
            if name.lower() in {"host", ":authority"}:
                authority = value
            if name.startswith(":") or name.lower() == "host":
                continue
            added.append({"header": {"key": name, "value": value}, "append_action": action})
        authorities.append(authority)
    removed = [
        name
        for name in spec.strings("remove")
        if not name.startswith(":") and name.lower() != "host"
    ]
    return added, removed, authorities[0], authorities[1]


def _string_match(spec: Spec, key: str) -> dict[str, Any] | None:
    """An Istio StringMatch as an Envoy StringMatcher; None means "present"."""
    return _string_matcher(spec.child(key))


def _string_matcher(match: Spec | None) -> dict[str, Any] | None:
    if match is None:
        return None
    match.only(_STRING_MATCH_MESSAGE)
    kinds = [kind for kind in _STRING_MATCH if kind in match.data]
    if len(kinds) > 1:
        raise match.error("", f"sets {' and '.join(sorted(kinds))}; a StringMatch takes one")
    if not kinds:
        return None
    kind = kinds[0]
    value = match.text(kind, "") or ""
    if kind == "regex":
        # "*" is not RE2; istiod reads it as "header present".
        return None if value in {"*", ""} else {"safe_regex": {"regex": value}}
    if kind == "prefix" and not value:
        return {"safe_regex": {"regex": ".*"}}
    return {kind: value}


def _cors(spec: Spec | None) -> dict[str, Any] | None:
    """istiod's TranslateCORSPolicy (pilot/pkg/networking/core/route/route.go)."""
    if spec is None:
        return None
    spec.only(_CORS)
    out: dict[str, Any] = {
        "@type": _CORS_TYPE,
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        # FORWARD (and unset) forward preflights that match no origin; IGNORE answers them.
        "forward_not_matching_preflights": spec.text("unmatchedPreflights") != "IGNORE",
    }
    if spec.text("unmatchedPreflights") not in (None, "UNSPECIFIED", "FORWARD", "IGNORE"):
        raise spec.error("unmatchedPreflights", "must be FORWARD or IGNORE")
    if spec.has("allowOrigins"):
        origins = []
        for item in spec.children("allowOrigins"):
            matcher = _string_matcher(item)
            if matcher is None:
                raise item.error("", "needs exact, prefix or regex")
            origins.append(matcher)
        out["allow_origin_string_match"] = origins
    elif spec.has("allowOrigin"):  # deprecated: exact strings
        out["allow_origin_string_match"] = [{"exact": o} for o in spec.strings("allowOrigin")]
    for key, field in (
        ("allowMethods", "allow_methods"),
        ("allowHeaders", "allow_headers"),
        ("exposeHeaders", "expose_headers"),
    ):
        if spec.has(key):
            out[field] = ",".join(spec.strings(key))
    if spec.has("maxAge"):
        nanos = parse_duration(spec.data["maxAge"])
        if nanos is None:
            raise spec.error("maxAge", f"is not a duration: {spec.data['maxAge']!r}")
        out["max_age"] = str(nanos // 1_000_000_000)
    credentials = spec.flag("allowCredentials")
    if credentials is not None:
        out["allow_credentials"] = credentials
    return out


def _header_matcher(name: str, string_match: dict[str, Any] | None) -> dict[str, Any]:
    if string_match is None:
        return {"name": name, "present_match": True}
    return {"name": name, "string_match": string_match}


def _match(spec: Spec | None) -> dict[str, Any]:
    if spec is None:
        return {"prefix": "/"}
    out: dict[str, Any] = {"prefix": "/"}
    headers: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []
    for key, invert in (("headers", False), ("withoutHeaders", True)):
        block = spec.child(key)
        if block is None:
            continue
        for name in block.data:
            if not isinstance(name, str) or name != name.lower():
                raise block.error(str(name), "header names must be lower-case")
            if name.startswith(CLAIMS):
                # Istio matches the claim of a JWT a RequestAuthentication validated
                # (istio.io: "JWT claim based routing"), not a request header.
                claims.append(_claim_matcher(block, name, _string_match(block, name), invert))
                continue
            matcher = _header_matcher(name, _string_match(block, name))
            if invert:
                matcher["invert_match"] = True
                if "string_match" in matcher:
                    # Without it a missing header fails the match before inversion.
                    matcher["treat_missing_header_as_empty"] = True
            headers.append(matcher)
    headers.sort(key=lambda matcher: str(matcher["name"]))
    uri = _string_match(spec, "uri")
    if uri is not None:
        del out["prefix"]
        if "exact" in uri:
            out["path"] = uri["exact"]
        elif "prefix" in uri:
            out["prefix"] = uri["prefix"]
        else:
            out["safe_regex"] = uri["safe_regex"]
    elif spec.has("uri"):
        raise spec.error("uri", "needs exact, prefix or regex")
    out["case_sensitive"] = not bool(spec.flag("ignoreUriCase"))
    for key, pseudo in (("method", ":method"), ("authority", ":authority"), ("scheme", ":scheme")):
        if spec.has(key):
            headers.append(_header_matcher(pseudo, _string_match(spec, key)))
    if headers:
        out["headers"] = headers
    if claims:
        out["dynamic_metadata"] = claims
    params = spec.child("queryParams")
    if params is not None:
        out["query_parameters"] = [
            {"name": name, "present_match": True}
            if (string_match := _string_match(params, name)) is None
            else {"name": name, "string_match": string_match}
            for name in params.data
        ]
    return out


def _is_catch_all(match: Mapping[str, Any]) -> bool:
    path = match.get("prefix") == "/" or match.get("safe_regex", {}).get("regex") == ".*"
    return (
        path
        and not match.get("headers")
        and not match.get("query_parameters")
        and not match.get("dynamic_metadata")
    )


CLAIMS = "@request.auth.claims"
_BRACKETED = re.compile(r"\[([^\[\]]+)\]")


def claim_path(name: str) -> list[str]:
    """``@request.auth.claims.a.b`` or ``@request.auth.claims[a][b]`` -> ``["a", "b"]``."""
    rest = name[len(CLAIMS) :]
    if rest.startswith("."):
        parts = rest[1:].split(".")
    elif rest.startswith("[") and _BRACKETED.sub("", rest) == "":
        parts = _BRACKETED.findall(rest)
    else:
        parts = []
    return [part for part in parts if part] if all(parts) else []


def _claim_matcher(
    block: Spec, name: str, string_match: dict[str, Any] | None, invert: bool
) -> dict[str, Any]:
    """istiod's MetadataMatcherForJWTClaims: the claim in jwt_authn's ``payload`` metadata.

    A claim is a string or a list of strings (``groups: [admin, dev]``); the match takes
    either, as istiod's list matcher does. Nested claims are a path.
    """
    claims = claim_path(name)
    if not claims:
        raise block.error(name, "names no claim (@request.auth.claims.NAME or [NAME][SUB])")
    value: dict[str, Any]
    if string_match is None:
        value = {"present_match": True}
    else:
        value = {
            "or_match": {
                "value_matchers": [
                    {"string_match": string_match},
                    {"list_match": {"one_of": {"string_match": string_match}}},
                ]
            }
        }
    matcher: dict[str, Any] = {
        "filter": JWT_FILTER,
        "path": [{"key": PAYLOAD}, *({"key": claim} for claim in claims)],
        "value": value,
    }
    if invert:
        matcher["invert"] = True
    return matcher


def _operation(match: Mapping[str, Any], cluster: str | None, vs_name: str, port: int) -> str:
    """The span name istiod gives a route: host:port/path, else vs:port/path."""
    if "prefix" in match:
        path = f"{match['prefix']}*"
    elif "path" in match:
        path = str(match["path"])
    else:
        path = str(match["safe_regex"]["regex"])
    if cluster is not None:
        _, cluster_port, _, fqdn = cluster.split("|")
        return f"{fqdn}:{cluster_port}{path}"
    return f"{vs_name}:{port}{path}"


def _fraction(percent: float) -> dict[str, Any]:
    return {"numerator": round(percent * 10_000), "denominator": "MILLION"}


def route_timeout(timeout: str | None) -> dict[str, str]:
    """istiod's setTimeout (pilot/pkg/networking/core/route/route.go): no timeout
    is ``0s``, and ``max_grpc_timeout`` is the same value, so a gRPC client's
    ``grpc-timeout`` header bounds the call (unbounded by the route when 0s)."""
    value = timeout or "0s"
    return {"timeout": value, "max_grpc_timeout": value}


def _mirror(cluster: str, percent: float) -> dict[str, Any]:
    return {
        "cluster": cluster,
        "runtime_fraction": {"default_value": _fraction(percent)},
        "trace_sampled": False,
        # Istio >= 1.28 (features.DisableShadowHostSuffix, default true): the
        # copy keeps the original Host instead of "<host>-shadow".
        "disable_shadow_host_suffix_append": True,
    }


def _default_retry(*, consistent_hash: bool = False) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "retry_on": DEFAULT_RETRY_ON,
        "num_retries": 2,
        "host_selection_retry_max_attempts": 5,
    }
    if not consistent_hash:
        # With consistent hashing a retry must stay on the same host.
        policy["retry_host_predicate"] = [_PREVIOUS_HOSTS]
    return policy


def _retry(spec: Spec | None, *, consistent_hash: bool) -> dict[str, Any] | None:
    if spec is None:
        return _default_retry(consistent_hash=consistent_hash)
    spec.only(_RETRY)
    attempts = spec.integer("attempts", 0) or 0
    per_try = spec.duration("perTryTimeout", minimum_nanos=1_000_000)
    backoff = spec.duration("backoff", minimum_nanos=1_000_000)
    retry_on = spec.text("retryOn")
    if attempts == 0:
        # istiod: attempts 0 (or unset) switches retries off altogether.
        return None
    policy = _default_retry(consistent_hash=consistent_hash)
    policy["num_retries"] = attempts
    if retry_on:
        conditions: list[str] = []
        codes: list[int] = []
        for part in (p.strip() for p in retry_on.split(",")):
            if not part:
                continue
            if part.isdigit():
                code = int(part)
                if not 100 <= code <= 599:
                    raise spec.error("retryOn", f"{part} is not an HTTP status code")
                codes.append(code)
            elif part in RETRY_ON:
                conditions.append(part)
            else:
                raise spec.error(
                    "retryOn",
                    f"{part!r} is not a retry condition "
                    f"(one of {', '.join(sorted(RETRY_ON))} or a status code)",
                )
        if codes and "retriable-status-codes" not in conditions:
            conditions.append("retriable-status-codes")
        policy["retry_on"] = ",".join(conditions)
        if codes:
            policy["retriable_status_codes"] = codes
    if per_try is not None:
        policy["per_try_timeout"] = per_try
    ignore_previous = spec.flag("retryIgnorePreviousHosts")
    if ignore_previous is True:
        policy["retry_host_predicate"] = [_PREVIOUS_HOSTS]
    elif ignore_previous is False:
        policy.pop("retry_host_predicate", None)
    if spec.flag("retryRemoteLocalities"):
        policy["retry_priority"] = _PREVIOUS_PRIORITIES
    if backoff is not None:
        policy["retry_back_off"] = {"base_interval": backoff}
    return policy


def _fault(spec: Spec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    spec.only(_FAULT)
    out: dict[str, Any] = {"@type": _FAULT_TYPE}
    delay = spec.child("delay")
    if delay is not None:
        delay.only(_DELAY)
        fixed = delay.duration("fixedDelay", minimum_nanos=1_000_000)
        if fixed is None:
            raise delay.error("fixedDelay", "is required")
        out["delay"] = {"fixed_delay": fixed, "percentage": _fault_percentage(delay)}
    abort = spec.child("abort")
    if abort is not None:
        abort.only(_ABORT)
        entry: dict[str, Any] = {}
        if abort.has("httpStatus") == abort.has("grpcStatus"):
            raise abort.error("", "needs exactly one of httpStatus, grpcStatus")
        if abort.has("httpStatus"):
            status = abort.integer("httpStatus")
            if status is None or not 200 <= status <= 599:
                raise abort.error("httpStatus", f"must be between 200 and 599, not {status}")
            entry["http_status"] = status
        else:
            grpc = abort.text("grpcStatus") or ""
            if grpc not in _GRPC_CODES:
                raise abort.error("grpcStatus", f"{grpc!r} is not a gRPC status name")
            entry["grpc_status"] = _GRPC_CODES[grpc]
        entry["percentage"] = _fault_percentage(abort)
        out["abort"] = entry
    if "delay" not in out and "abort" not in out:
        raise spec.error("", "needs delay or abort")
    return out


def _fault_percentage(spec: Spec) -> dict[str, Any]:
    # Istio: "If left unspecified, no request will be delayed/aborted."
    percent = spec.percent("percentage", _PERCENT)
    if percent is not None:
        return _fraction(percent)
    legacy = spec.integer("percent", 0) or 0
    if legacy > 100:
        raise spec.error("percent", f"must be at most 100, not {legacy}")
    return {"numerator": legacy, "denominator": "HUNDRED"}


def _redirect(spec: Spec | None, port: int) -> dict[str, Any]:
    assert spec is not None
    spec.only(_REDIRECT)
    out: dict[str, Any] = {}
    if spec.text("uri"):
        out["path_redirect"] = spec.text("uri")
    if spec.text("authority"):
        out["host_redirect"] = spec.text("authority")
    scheme = spec.text("scheme")
    if scheme:
        out["scheme_redirect"] = scheme
    redirect_port = spec.integer("port", minimum=1)
    derive = spec.text("derivePort")
    if redirect_port is not None and derive is not None:
        raise spec.error("port", "and derivePort are mutually exclusive")
    if derive == "FROM_REQUEST_PORT":
        redirect_port = port
    elif derive not in {None, "FROM_PROTOCOL_DEFAULT"}:
        raise spec.error(
            "derivePort", f"must be FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT, not {derive!r}"
        )
    if redirect_port is not None and (redirect_port, scheme or "http") not in {
        (80, "http"),
        (443, "https"),
    }:
        out["port_redirect"] = redirect_port
    code = spec.integer("redirectCode", 301) or 301
    if code not in _REDIRECT_CODES:
        raise spec.error(
            "redirectCode", f"must be one of {', '.join(map(str, _REDIRECT_CODES))}, not {code}"
        )
    out["response_code"] = _REDIRECT_CODES[code]
    return out


def _direct_response(spec: Spec | None) -> dict[str, Any]:
    assert spec is not None
    spec.only(_DIRECT_RESPONSE)
    status = spec.integer("status")
    if status is None or not 200 <= status <= 599:
        raise spec.error("status", f"must be between 200 and 599, not {status}")
    out: dict[str, Any] = {"status": status}
    body = spec.child("body")
    if body is not None:
        body.only(_BODY)
        out["body"] = {"inline_string": body.text("string", "") or ""}
    return out
