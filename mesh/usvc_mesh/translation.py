"""Istio objects -> the Envoy route configurations and clusters of the local mesh.

:func:`translate` is pure: Kubernetes/Istio objects (dicts as loaded by
``yaml.safe_load_all``) and the local addresses of workloads in, a
:class:`Translation` out. Kinds read:

- ``Deployment`` (and ``StatefulSet``/``DaemonSet``): pod template labels.
- ``Service`` (v1): selector and ports; every short and long name of a Service
  reaches it (``middleware-svc``, ``.NS``, ``.NS.svc``, ``.NS.svc.cluster.local``).
- ``Gateway``, ``VirtualService``, ``DestinationRule``, ``ServiceEntry``
  (``networking.istio.io`` v1, v1beta1 or v1alpha3).

Every other kind is not read here. Istio kinds among them (PeerAuthentication,
AuthorizationPolicy, Telemetry, Sidecar, EnvoyFilter, ...) are not applied
locally, and :func:`usvc_mesh.validation.unapplied` reports each such object
(``usvc up`` prints them; ``--strict`` refuses to start). Within the kinds read,
any field the local mesh cannot honour, or that Istio does not define, raises
:class:`~usvc_mesh.spec.UnsupportedField`, whose message tells the two apart.

The result has two route configurations. ``outbound`` stands in for every
sidecar: one virtual host per HTTP port of every Service and ServiceEntry
(routes from the VirtualServices bound to ``mesh``, else istiod's default
route), one CONNECT tunnel per non-HTTP port, and a catch-all for hosts the
registry does not know: passed through to the host itself (Istio's default
``outboundTrafficPolicy`` ALLOW_ANY; Envoy's dynamic forward proxy resolves it)
or answered 502 (REGISTRY_ONLY). The mode is the mesh's default unless a
namespace-wide ``Sidecar`` sets it. A workload some VirtualService match's
``sourceLabels``/``sourceNamespace`` select sees other routes: its view is
another outbound route configuration, ``outbound.WORKLOAD``
(``Translation.outbound_views``, :func:`_outbound_views`). ``gateway`` stands in
for the ingress gateway: the VirtualServices bound to Gateway objects, on the
hosts their servers accept. The gateway has a listener per distinct server port
(``Translation.gateway_listeners``; HTTPS servers: :mod:`usvc_mesh.gateway_tls`),
each of the others' route configurations is in ``extra_routes``, and the
RequestAuthentications that select it add ``jwt_authn`` (:mod:`usvc_mesh.authn`), and
AuthorizationPolicies that select it RBAC filters (:mod:`usvc_mesh.authz`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .authn import gateway_authn
from .authz import gateway_authorization
from .clusters import (
    HTTP_OPTIONS,
    UNLIMITED_THRESHOLDS,
    build_clusters,
    cluster_name,
    forward_proxy_cluster,
    read_destination_rules,
)
from .gateway_tls import FilterChain, GatewayListener, ServerTls, secrets_of, server_tls, sni_names
from .registry import (
    HTTP_PROTOCOLS,
    Addresses,
    MeshHost,
    Port,
    Registry,
    addresses,
    build_registry,
)
from .routes import (
    ANONYMOUS,
    MESH,
    RouteBuilder,
    Source,
    VirtualService,
    read_virtual_service,
    route_timeout,
    source_applies,
    source_conditioned,
)
from .sidecars import GATEWAY_NAMESPACE, Inbound, Sidecar, inbound_http_filters
from .spec import Spec, UnsupportedField, message, metadata_name, metadata_namespace

GATEWAY_ROUTES = "gateway"
# How long an inbound listener keeps an idle connection to its replica's process.
# Shorter than the supervisor's drain (supervisor.ENDPOINT_PROPAGATION, 1 s): by the
# time a replica out of the endpoints is stopped, Envoy has closed its idle
# connections itself and never sends a request down one the process is closing (a
# 503 UC). Far below the app's keep-alive too (aiohttp: 3630 s). Istio's inbound
# cluster keeps the 1 h default (DestinationRule idleTimeout); a pod's drain is longer.
INBOUND_IDLE_TIMEOUT = "0.5s"
OUTBOUND_ROUTES = "outbound"
ISTIO_VERSIONS = frozenset(
    {"networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"}
)
ISTIO_KINDS = frozenset({"Gateway", "VirtualService", "DestinationRule", "ServiceEntry"})
_NO_ROUTE_BODY = "local mesh: no Service or ServiceEntry has this host (REGISTRY_ONLY)\n"
# pkg/config/mesh/mesh.go DefaultMeshConfig: outboundTrafficPolicy.mode ALLOW_ANY.
ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"
PASSTHROUGH_CLUSTER = "PassthroughCluster"

# Of a Sidecar, the local mesh reads a namespace-wide outboundTrafficPolicy (_outbound_mode).
_SIDECAR = message(
    "Sidecar",
    "Sidecar",
    [""],
    {"egress", "outboundTrafficPolicy"},
    dict.fromkeys(
        ("workloadSelector", "ingress", "inboundConnectionPool"),
        "one local Envoy is every workload's sidecar",
    ),
)
_EGRESS_LISTENER = message(
    "Sidecar", "IstioEgressListener", ["egress[]"], {"hosts"}, {"port", "bind", "captureMode"}
)
_OUTBOUND_POLICY = message(
    "Sidecar", "OutboundTrafficPolicy", ["outboundTrafficPolicy"], {"mode"}, {"egressProxy"}
)
_GATEWAY = message(
    "Gateway",
    "Gateway",
    [""],
    {"selector", "servers"},
    ignored={"selector": "picks the gateway pods in a cluster; locally there is one gateway"},
)
_SERVER = message(
    "Gateway",
    "Server",
    ["servers[]"],
    {"port", "hosts", "name", "tls"},
    {"bind", "defaultEndpoint"},
    # istio.io Gateway Server.name: "used for ... prefixing stats generated with this name".
    ignored={"name": "names the server (stats in a cluster); routing does not use it"},
)
_PORT = message(
    "Gateway",
    "Port",
    ["servers[].port"],
    {"number", "protocol", "name", "targetPort"},
    # istio.io Gateway Port.targetPort: "Applicable only when used with ServiceEntries".
    ignored={
        "name": "a label of the port; routing does not use it",
        "targetPort": "Istio applies it only to ServiceEntries",
    },
)
# Of an HTTP server only httpsRedirect; an HTTPS server's settings: usvc_mesh.gateway_tls.
_SERVER_TLS = message(
    "Gateway",
    "ServerTLSSettings",
    ["servers[].tls"],
    {
        "httpsRedirect",
        "mode",
        "serverCertificate",
        "privateKey",
        "caCertificates",
        "caCertCredentialName",
        "credentialName",
        "credentialNames",
        "subjectAltNames",
        "verifyCertificateSpki",
        "verifyCertificateHash",
        "minProtocolVersion",
        "maxProtocolVersion",
        "cipherSuites",
        "caCrl",
    },
    {
        "tlsCertificates": "one certificate per server: credentialName or serverCertificate",
        "insecureSkipVerify": "client certificates are verified whenever a server asks for them",
    },
)


@dataclass(frozen=True)
class Translation:
    """What one set of Istio objects means to the local Envoy.

    ``gateway_routes`` and ``outbound_routes`` are Envoy v3
    RouteConfigurations (named ``gateway`` and ``outbound``), ``clusters`` are
    Envoy v3 Clusters, all as plain JSON-ready dicts. ``warnings`` lists
    things istiod would accept but that probably are mistakes (a subset that
    selects no workload).
    """

    gateway_routes: dict[str, Any]
    outbound_routes: dict[str, Any]
    clusters: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...] = field(default=())
    # The local gateway's listeners, one per Gateway server port (none: one plain
    # listener on ``gateway_routes``), the route configurations of all but the first
    # (``extra_routes``), and the HTTP filters before theirs (RequestAuthentication).
    gateway_listeners: tuple[GatewayListener, ...] = field(default=())
    extra_routes: tuple[dict[str, Any], ...] = field(default=())
    gateway_filters: tuple[dict[str, Any], ...] = field(default=())
    # Each workload's outbound and inbound listeners (usvc_mesh.sidecars); none:
    # one shared outbound listener for every workload (compose, most tests).
    sidecars: tuple[Sidecar, ...] = field(default=())
    # The outbound route configurations besides ``outbound`` (each Sidecar.routes
    # names its own): one per distinct view of sourceLabels/sourceNamespace matches.
    outbound_views: tuple[dict[str, Any], ...] = field(default=())

    def cluster(self, name: str) -> dict[str, Any]:
        for cluster in self.clusters:
            if cluster["name"] == name:
                return cluster
        raise KeyError(name)

    def virtual_host(self, routes: str, domain: str) -> dict[str, Any]:
        """The virtual host of route configuration ``routes`` that serves ``domain``."""
        configs = {
            GATEWAY_ROUTES: self.gateway_routes,
            OUTBOUND_ROUTES: self.outbound_routes,
            **{extra["name"]: extra for extra in self.extra_routes},
            **{view["name"]: view for view in self.outbound_views},
        }
        for virtual_host in configs[routes]["virtual_hosts"]:
            if domain in virtual_host["domains"]:
                return dict(virtual_host)
        raise KeyError(f"{routes}: no virtual host for {domain}")


@dataclass(frozen=True)
class _Server:
    hosts: tuple[str, ...]
    port: int
    https_redirect: bool = False
    tls: ServerTls | None = None
    port_name: str = ""


@dataclass(frozen=True)
class _Gateway:
    key: str
    where: str
    servers: tuple[_Server, ...]


def translate(
    objects: Sequence[Mapping[str, Any]],
    *,
    endpoints: Mapping[str, Addresses],
    externals: Mapping[str, tuple[str, int]] | None = None,
    namespace: str = "default",
    outbound_traffic_policy: str = ALLOW_ANY,
    health_checks: bool = True,
    gateway_ports: Mapping[int, int] | None = None,
    sidecars: Sequence[Sidecar] = (),
) -> Translation:
    """Translate Kubernetes + Istio objects for the local mesh.

    ``endpoints`` maps each Deployment name to the ``(host, port)`` its local
    process listens on, or to a list of them, one per replica; a Deployment
    without an entry has no running endpoint. Each workload endpoint is
    health-checked by Envoy with its Deployment's readiness probe (unless
    ``health_checks`` is False: then every endpoint gets traffic, up or not).
    ``externals`` maps a ServiceEntry host (or ``host:port``) to a local
    stand-in address; other ServiceEntry hosts resolve by DNS.
    ``namespace`` is where objects without ``metadata.namespace`` live; the
    outbound listener accepts a Service's bare short name when only one
    namespace has a Service of that name, else for ``namespace``'s.
    ``outbound_traffic_policy`` is the mesh config's mode (Istio's default
    ALLOW_ANY); a namespace-wide Sidecar in the objects overrides it.
    ``gateway_ports`` maps each Gateway server port to the local port it listens
    on (the supervisor's choice), so that ``httpsRedirect`` sends clients to the
    local HTTPS port; without it the redirect is Istio's, to port 443.
    ``sidecars`` give workloads the shape of a pod (:mod:`usvc_mesh.sidecars`):
    their endpoints become their replicas' inbound listeners, each forwarding
    to the ``endpoints`` address of its replica.
    """
    objects = [obj for obj in objects if obj]
    authorized = [inbound_http_filters(s, objects, namespace) for s in sidecars]
    sidecars = tuple(
        replace(s, http_filters=a.http_filters, plaintext_refused=a.plaintext_refused)
        for s, a in zip(sidecars, authorized, strict=True)
    )
    authz_warnings = list(dict.fromkeys(w for a in authorized for w in a.warnings))
    inbounds = _behind_sidecars(endpoints, sidecars)
    for obj in objects:
        _check_kind(obj)
    export_warnings = _check_export_to(objects, namespace)
    registry = build_registry(
        objects,
        endpoints=endpoints,
        externals=externals or {},
        namespace=namespace,
        inbounds=inbounds,
    )
    gateways = _read_gateways(objects, namespace)
    authn = gateway_authn(objects, _gateway_labels(objects), namespace)
    authz = gateway_authorization(objects, _gateway_labels(objects), namespace=namespace)
    rules = read_destination_rules(objects, registry, namespace)
    services = [
        read_virtual_service(
            obj, metadata_name(obj), metadata_namespace(obj, namespace), set(gateways)
        )
        for obj in objects
        if obj.get("kind") == "VirtualService"
    ]
    builder = RouteBuilder(registry, rules, jwt_issuers=authn.issuers)
    for vs in services:
        builder.routes(vs, port=None, gateway=None)
    gateway_source = Source.of(_gateway_labels(objects), GATEWAY_NAMESPACE)
    listeners, gateway_routes = _gateway_listeners(
        services, gateways, registry, builder, gateway_ports or {}, gateway_source
    )
    clusters, warnings = build_clusters(registry, rules, health_checks=health_checks)
    mode = _outbound_mode(objects, namespace, outbound_traffic_policy)
    if mode == ALLOW_ANY:
        clusters.append(_passthrough_cluster())
    clusters.extend(_inbound_cluster(i) for s in sidecars for i in s.inbounds)
    bound = _mesh_bound(services, registry)
    outbound_hosts, varying = _outbound_hosts(bound, registry, builder, mode)
    outbound_routes = _route_config(OUTBOUND_ROUTES, outbound_hosts)
    sidecars, views = _outbound_views(sidecars, bound, outbound_routes, varying, builder)
    if not sidecars:
        builder.warnings.extend(_unviewed(bound))
    return Translation(
        gateway_routes=gateway_routes[0],
        outbound_routes=outbound_routes,
        clusters=tuple(clusters),
        warnings=tuple(
            [
                *export_warnings,
                *warnings,
                *authn.warnings,
                *authz.warnings,
                *builder.warnings,
                *authz_warnings,
            ]
        ),
        gateway_listeners=tuple(listeners),
        extra_routes=tuple(gateway_routes[1:]),
        # istiod's order: authentication (jwt_authn) before authorization (RBAC).
        gateway_filters=(*authn.http_filters, *authz.http_filters),
        sidecars=sidecars,
        outbound_views=views,
    )


def _behind_sidecars(
    endpoints: Mapping[str, Addresses], sidecars: Sequence[Sidecar]
) -> dict[tuple[str, int], str]:
    """Each serving replica's address -> its inbound listener, Envoy's endpoint for it.

    An inbound whose replica is not among the endpoints is draining (a rolling
    restart): its listener stays for the requests still on their way.
    """
    inbounds: dict[tuple[str, int], str] = {}
    for sidecar in sidecars:
        if sidecar.workload not in endpoints:
            raise ValueError(f"a sidecar for {sidecar.workload}, which has no endpoints")
        serving = set(addresses(endpoints[sidecar.workload]))
        inbounds.update({i.app: i.listener for i in sidecar.inbounds if i.app in serving})
    return inbounds


def _inbound_cluster(inbound: Inbound) -> dict[str, Any]:
    """From an inbound listener to its replica's process (istiod's ``inbound|PORT||``)."""
    host, port = inbound.app
    return {
        "name": inbound.cluster,
        "type": "STATIC",
        # pkg/config/mesh/mesh.go DefaultMeshConfig: connectTimeout 10s; istiod
        # lifts the inbound cluster's circuit breakers to the maximum.
        "connect_timeout": "10s",
        "circuit_breakers": {"thresholds": [dict(UNLIMITED_THRESHOLDS)]},
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                "common_http_protocol_options": {"idle_timeout": INBOUND_IDLE_TIMEOUT},
                # istiod's inbound cluster speaks the protocol the caller spoke.
                "use_downstream_protocol_config": {
                    "http_protocol_options": {},
                    "http2_protocol_options": {},
                },
            }
        },
        "load_assignment": {
            "cluster_name": inbound.cluster,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


_EXPORTED_KINDS = frozenset({"VirtualService", "DestinationRule", "ServiceEntry"})


def _check_export_to(objects: Sequence[Mapping[str, Any]], namespace: str) -> list[str]:
    """Refuse an ``exportTo`` the one local outbound proxy cannot honour.

    Istio (istio.io: VirtualService/DestinationRule/ServiceEntry ``exportTo``)
    makes an object visible only to proxies in the listed namespaces ("." its
    own, "*" all, "~" none). Locally one outbound proxy serves every workload,
    so an object hidden from the namespace of any local workload would apply to
    it anyway: that is an error, not a silent difference. A gateway-bound
    VirtualService is visible to the ingress gateway only if the gateway runs in
    an exported namespace, which the manifests do not say: that is a warning.
    """
    clients = {
        metadata_namespace(obj, namespace)
        for obj in objects
        if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")
    }
    warnings: list[str] = []
    for obj in objects:
        kind = obj.get("kind")
        if kind not in _EXPORTED_KINDS:
            continue
        spec = Spec.of(f"{kind} {metadata_name(obj)}", "", obj.get("spec") or {})
        export_to = spec.strings("exportTo")
        if not export_to or "*" in export_to:
            continue
        own = metadata_namespace(obj, namespace)
        visible = {own if item == "." else item for item in export_to if item != "~"}
        bound = spec.strings("gateways") if kind == "VirtualService" else []
        to_mesh = kind != "VirtualService" or not bound or MESH in bound
        hidden = sorted(clients - visible)
        if to_mesh and hidden:
            raise spec.unsupported(
                "exportTo",
                export_to,
                f"it hides the object from namespace {', '.join(hidden)}, but the one local "
                "outbound proxy serves every namespace's workloads",
            )
        if bound and [g for g in bound if g != MESH]:
            warnings.append(
                f"{spec.where}: exportTo {export_to} — in a cluster the ingress gateway applies "
                f"it only if the gateway runs in {', '.join(sorted(visible)) or 'no namespace'}; "
                "the local gateway applies it"
            )
    return warnings


def _check_kind(obj: Mapping[str, Any]) -> None:
    kind = obj.get("kind")
    api_version = str(obj.get("apiVersion", ""))
    if (
        kind in ISTIO_KINDS
        and api_version.startswith("networking.istio.io/")
        and api_version not in ISTIO_VERSIONS
    ):
        raise ValueError(
            f"{kind} {metadata_name(obj)}: apiVersion {api_version} is not one the local mesh reads"
        )


def _route_config(name: str, virtual_hosts: list[dict[str, Any]]) -> dict[str, Any]:
    seen: dict[str, str] = {}
    for virtual_host in virtual_hosts:
        for domain in virtual_host["domains"]:
            if domain in seen:
                raise ValueError(
                    f"{name} routes: domain {domain} is claimed by both "
                    f"{seen[domain]} and {virtual_host['name']}"
                )
            seen[domain] = virtual_host["name"]
    # RDS must accept routes to clusters CDS is still warming; validate()
    # checks the references statically instead.
    return {"name": name, "virtual_hosts": virtual_hosts, "validate_clusters": False}


# -- outbound (the sidecars) -----------------------------------------------------


def _outbound_mode(objects: Sequence[Mapping[str, Any]], namespace: str, default: str) -> str:
    """The outboundTrafficPolicy mode: the mesh default, or a namespace-wide Sidecar's.

    The one local Envoy is every workload's sidecar, so only a Sidecar without
    ``workloadSelector`` whose egress is Istio's default (``*/*``) can be
    honoured; anything else is refused rather than silently applied to all.
    """
    if default not in (ALLOW_ANY, REGISTRY_ONLY):
        raise ValueError(
            f"outbound traffic policy {default!r}: expected ALLOW_ANY or REGISTRY_ONLY"
        )
    modes: dict[str, str] = {}
    for obj in objects:
        if obj.get("kind") != "Sidecar":
            continue
        where = f"Sidecar {metadata_name(obj)}"
        spec = Spec.of(where, "", obj.get("spec") or {})
        spec.only(_SIDECAR)
        for index, egress in enumerate(spec.children("egress")):
            egress.only(_EGRESS_LISTENER)
            if egress.strings("hosts") != ["*/*"]:
                raise spec.unsupported(
                    f"egress[{index}].hosts", egress.strings("hosts"), "only the default */*"
                )
        policy = spec.child("outboundTrafficPolicy")
        if policy is None:
            continue
        policy.only(_OUTBOUND_POLICY)
        mode = policy.text("mode", ALLOW_ANY) or ALLOW_ANY
        if mode not in (ALLOW_ANY, REGISTRY_ONLY):
            raise policy.error("mode", f"must be ALLOW_ANY or REGISTRY_ONLY, not {mode!r}")
        modes[metadata_namespace(obj, namespace)] = mode
    if len(set(modes.values())) > 1:
        raise UnsupportedField(
            f"Sidecars set different outboundTrafficPolicy modes per namespace ({modes}); "
            "the local mesh has one outbound proxy for all namespaces"
        )
    return next(iter(modes.values()), default)


def _passthrough_cluster() -> dict[str, Any]:
    """Istio's PassthroughCluster, for a proxy that sees absolute-form requests."""
    return {"name": PASSTHROUGH_CLUSTER, "connect_timeout": "10s", **forward_proxy_cluster()}


def _mesh_bound(
    services: Sequence[VirtualService], registry: Registry
) -> dict[str, VirtualService]:
    """Each host's VirtualService bound to ``mesh`` (the sidecars), by FQDN."""
    bound: dict[str, VirtualService] = {}
    for vs in services:
        if MESH not in vs.gateways:
            continue
        for index, name in enumerate(vs.hosts):
            host = registry.resolve(name, vs.namespace)
            if host is None:
                if "*" in name:
                    raise vs.spec.unsupported(f"hosts[{index}]", repr(name), "wildcard mesh hosts")
                raise vs.spec.error(f"hosts[{index}]", f"{name!r} names no Service or ServiceEntry")
            if host.fqdn in bound:
                raise ValueError(
                    f"{vs.where}: hosts[{index}] {name!r} is already routed by "
                    f"{bound[host.fqdn].where}"
                )
            bound[host.fqdn] = vs
    return bound


# A virtual host whose routes depend on the caller: its index in the outbound
# virtual hosts, its host and port, and the VirtualService with source matches.
_Varying = tuple[int, MeshHost, Port, VirtualService]


def _source_matches(vs: VirtualService) -> list[Spec]:
    """The matches of ``vs`` whose sourceLabels/sourceNamespace decide where they apply."""
    return [m for http in vs.http for m in http.children("match") if source_conditioned(m.data)]


def _outbound_hosts(
    bound: Mapping[str, VirtualService], registry: Registry, builder: RouteBuilder, mode: str
) -> tuple[list[dict[str, Any]], list[_Varying]]:
    """The ``outbound`` virtual hosts, seen by a caller no source match selects.

    Also returns the virtual hosts whose routes another caller may see otherwise
    (:func:`_outbound_views` rebuilds those alone).
    """
    conditioned = {(vs.namespace, vs.name) for vs in bound.values() if _source_matches(vs)}
    virtual_hosts = []
    varying: list[_Varying] = []
    for host in registry.hosts:
        bare_port = _bare_port(host)
        for port in host.ports:
            if not port.is_http:
                virtual_hosts.append(_tunnel(host, port))
                continue
            routed = bound.get(host.fqdn)
            if routed is not None and (routed.namespace, routed.name) in conditioned:
                varying.append((len(virtual_hosts), host, port, routed))
            virtual_hosts.append(
                _mesh_virtual_host(host, port, routed, builder, ANONYMOUS, bare_port)
            )
    if mode == ALLOW_ANY:
        catch_all: dict[str, Any] = {
            "name": "allow_any",
            "match": {"prefix": "/"},
            "route": {"cluster": PASSTHROUGH_CLUSTER, **route_timeout(None)},
        }
    else:
        catch_all = {
            "name": "block_all",
            "match": {"prefix": "/"},
            "direct_response": {"status": 502, "body": {"inline_string": _NO_ROUTE_BODY}},
        }
    virtual_hosts.append({"name": catch_all["name"], "domains": ["*"], "routes": [catch_all]})
    return virtual_hosts, varying


def _mesh_virtual_host(
    host: MeshHost,
    port: Port,
    routed: VirtualService | None,
    builder: RouteBuilder,
    source: Source,
    bare_port: int | None,
) -> dict[str, Any]:
    routes = builder.routes(routed, port=port.number, gateway=MESH, source=source) if routed else []
    domains = [f"{name}:{port.number}" for name in host.names]
    if port.number == bare_port:
        domains = [*host.names, *domains]
    return {
        "name": f"{host.fqdn}:{port.number}",
        "domains": domains,
        # istiod: a VirtualService none of whose routes this proxy sees leaves the
        # host its default route (route.go buildSidecarVirtualHostsForVirtualService).
        "routes": routes or [builder.default_route(host, port.number)],
        "include_request_attempt_count": True,
    }


def _outbound_views(
    sidecars: tuple[Sidecar, ...],
    bound: Mapping[str, VirtualService],
    outbound: Mapping[str, Any],
    varying: Sequence[_Varying],
    builder: RouteBuilder,
) -> tuple[tuple[Sidecar, ...], tuple[dict[str, Any], ...]]:
    """Each sidecar's outbound route configuration: one per distinct view.

    istiod builds every proxy's routes for that proxy, dropping the matches whose
    ``sourceLabels``/``sourceNamespace`` it does not satisfy (route.go
    ``sourceMatchHTTP``). Locally the workloads that see the same matches share one
    RouteConfiguration; those that see what a caller no source match selects share
    ``outbound``. Without such matches there is one, whatever the number of workloads.
    A view differs from ``outbound`` only in the ``varying`` virtual hosts, the others
    are shared, so the work is O(services + views x varying hosts).
    """
    matches = [m for vs in _distinct(v for *_, v in varying) for m in _source_matches(vs)]
    if not matches or not sidecars:
        return sidecars, ()
    anonymous = tuple(source_applies(m, ANONYMOUS) for m in matches)
    names: dict[tuple[bool, ...], str] = {anonymous: OUTBOUND_ROUTES}
    views: list[dict[str, Any]] = []
    placed = []
    for sidecar in sidecars:
        source = Source.of(sidecar.labels, sidecar.namespace)
        key = tuple(source_applies(m, source) for m in matches)
        if key not in names:
            name = f"{OUTBOUND_ROUTES}.{sidecar.workload}"
            if name in names.values():  # the same Deployment name in another namespace
                name = f"{name}.{sidecar.namespace}"
            names[key] = name
            virtual_hosts = list(outbound["virtual_hosts"])
            for index, host, port, vs in varying:
                virtual_hosts[index] = _mesh_virtual_host(
                    host, port, vs, builder, source, _bare_port(host)
                )
            views.append({**outbound, "name": names[key], "virtual_hosts": virtual_hosts})
        placed.append(replace(sidecar, routes=names[key]))
    return tuple(placed), tuple(views)


def _distinct(services: Iterable[VirtualService]) -> list[VirtualService]:
    seen: dict[tuple[str, str], VirtualService] = {}
    for vs in services:
        seen.setdefault((vs.namespace, vs.name), vs)
    return list(seen.values())


def _unviewed(bound: Mapping[str, VirtualService]) -> list[str]:
    """Without sidecars one outbound listener serves every caller: say what it drops."""
    return [
        f"{match.where}: {match.path} has sourceLabels/sourceNamespace, but the local mesh has "
        "one outbound proxy for every workload here (no per-workload sidecars): the match "
        "applies to no caller"
        for vs in _distinct(bound.values())
        for match in _source_matches(vs)
    ]


def _bare_port(host: MeshHost) -> int | None:
    """The port a request without one (``Host: middleware-svc``) goes to."""
    http_ports = [port.number for port in host.ports if port.is_http]
    if 80 in http_ports:
        return 80
    # A lone port is unambiguous; Kubernetes would need :PORT, locally it is a convenience.
    return http_ports[0] if len(http_ports) == 1 else None


def _tunnel(host: MeshHost, port: Port) -> dict[str, Any]:
    """A non-HTTP port: the client's proxy CONNECTs, Envoy tunnels the bytes."""
    return {
        "name": f"{host.fqdn}:{port.number}",
        "domains": [f"{name}:{port.number}" for name in host.names],
        "routes": [
            {
                "name": "tunnel",
                "match": {"connect_matcher": {}},
                "route": {
                    "cluster": cluster_name(port.number, "", host.fqdn),
                    "timeout": "0s",
                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                },
            }
        ],
    }


# -- the ingress gateway ----------------------------------------------------------


def _read_gateways(objects: Sequence[Mapping[str, Any]], namespace: str) -> dict[str, _Gateway]:
    gateways: dict[str, _Gateway] = {}
    protocols: dict[int, tuple[bool, str]] = {}  # port -> (TLS?, which Gateway said so)
    secrets = secrets_of(objects, namespace)
    for obj in objects:
        if obj.get("kind") != "Gateway":
            continue
        name = metadata_name(obj)
        where = f"Gateway {name}"
        own = metadata_namespace(obj, namespace)
        spec = Spec.of(where, "", obj.get("spec") or {})
        spec.only(_GATEWAY)
        servers = []
        for server in spec.children("servers"):
            server.only(_SERVER)
            port = server.child("port")
            if port is None:
                raise server.error("port", "is required")
            port.only(_PORT)
            number = port.integer("number", minimum=1)
            if number is None:
                raise port.error("number", "is required")
            hosts = tuple(host.split("/", 1)[-1] for host in server.strings("hosts"))
            if not hosts:
                raise server.error("hosts", "is required")
            protocol = (port.text("protocol") or "").upper()
            https_redirect, tls = _server_tls(server, protocol, hosts, secrets, own)
            if protocol not in HTTP_PROTOCOLS and protocol != "HTTPS":
                raise port.unsupported(
                    "protocol", protocol or "(none)", "HTTP and HTTPS only: TCP routes are not"
                )
            secure = tls is not None
            seen = protocols.setdefault(number, (secure, where))
            if seen[0] != secure:
                # istiod cannot serve both on one port either (gateway.go: a conflict).
                raise port.error(
                    "number",
                    f"{number}: {seen[1]} already serves {'HTTPS' if seen[0] else 'HTTP'} "
                    "on this port; one port serves one protocol",
                )
            servers.append(_Server(hosts, number, https_redirect, tls, port.text("name") or ""))
        key = f"{own}/{name}"
        gateways[key] = _Gateway(key, where, tuple(servers))
    return gateways


def _server_tls(
    server: Spec,
    protocol: str,
    hosts: Sequence[str],
    secrets: Mapping[str, Mapping[str, Any]],
    namespace: str,
) -> tuple[bool, ServerTls | None]:
    """Whether an HTTP server redirects to HTTPS, and an HTTPS server's TLS settings.

    istio.io Gateway ServerTLSSettings.httpsRedirect: "the load balancer will
    send a 301 redirect for all http connections, asking the clients to use
    HTTPS" (istiod sets the virtual host's require_tls: ALL). An HTTPS server
    terminates TLS with the certificate its settings name
    (:func:`usvc_mesh.gateway_tls.server_tls`).
    """
    tls = server.child("tls")
    if tls is not None:
        tls.only(_SERVER_TLS)
    if protocol != "HTTPS":
        if tls is not None and any(key != "httpsRedirect" for key in tls.data):
            raise tls.error("", f"on a {protocol or 'plain'} port takes httpsRedirect only")
        return (bool(tls.flag("httpsRedirect")) if tls is not None else False), None
    if tls is None or not tls.text("mode"):
        raise server.error("tls.mode", "is required on an HTTPS server")
    if tls.flag("httpsRedirect"):
        raise tls.error("httpsRedirect", "applies to HTTP servers, not HTTPS ones")
    return False, server_tls(tls, tls.text("mode") or "", hosts, secrets, namespace)


def _gateway_labels(objects: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The labels of the one local gateway: every Gateway's selector (istio: ingressgateway)."""
    labels: dict[str, str] = {}
    for obj in objects:
        if obj.get("kind") == "Gateway":
            selector = (obj.get("spec") or {}).get("selector") or {}
            if isinstance(selector, Mapping):
                labels.update({str(k): str(v) for k, v in selector.items()})
    return labels


def _gateway_listeners(
    services: Sequence[VirtualService],
    gateways: Mapping[str, _Gateway],
    registry: Registry,
    builder: RouteBuilder,
    local_ports: Mapping[int, int],
    source: Source,
) -> tuple[list[GatewayListener], list[dict[str, Any]]]:
    """One listener per distinct server port, the first named ``gateway``.

    Route configurations as istiod names them (gateway.go gatewayRDSRouteName):
    ``http.PORT`` for all HTTP servers of a port, ``https.PORT.PORTNAME.GATEWAY.NS`` per
    HTTPS server; the first listener's first one is called ``gateway``
    (``Translation.gateway_routes``). The first port is the first HTTP one in the objects,
    else the first HTTPS one: it is the one ``--gateway`` names.
    """
    servers = [(key, server) for key, gw in gateways.items() for server in gw.servers]
    _check_bound_hosts(services, gateways)
    ports = list(dict.fromkeys(s.port for _, s in servers if s.tls is None))
    ports += [p for p in dict.fromkeys(s.port for _, s in servers) if p not in ports]
    names: dict[tuple[str, int], str] = {}  # (gateway, server index) -> route configuration
    listeners: list[GatewayListener] = []
    for number in ports:
        chains: list[FilterChain] = []
        listener = "gateway" if not listeners else f"gateway.{number}"
        for key, gateway in gateways.items():
            for index, server in enumerate(gateway.servers):
                if server.port != number:
                    continue
                if server.tls is None:
                    route = GATEWAY_ROUTES if not listeners else f"http.{number}"
                    if not chains:
                        chains.append(FilterChain((), route))
                else:
                    gw_namespace, _, gw_name = key.partition("/")
                    port_name = server.port_name or "https"
                    route = f"https.{number}.{port_name}.{gw_name}.{gw_namespace}"
                    if not listeners and not chains:
                        route = GATEWAY_ROUTES
                    while route in {c.routes for c in chains}:
                        route += f".{index}"
                    sni = sni_names(server.hosts)
                    clash = [
                        c for c in chains if set(c.server_names) & set(sni) or c.server_names == sni
                    ]
                    if clash:
                        raise UnsupportedField(
                            f"{gateway.where}: servers[{index}] on port {number} has the hosts "
                            f"(SNI) of another HTTPS server on that port: {list(sni) or ['*']}"
                        )
                    chains.append(FilterChain(sni, route, server.tls))
                names[(key, index)] = route
        listeners.append(GatewayListener(number, listener, tuple(chains)))
    configs: list[dict[str, Any]] = []
    https_ports = _https_ports(gateways, local_ports)
    routes = [c.routes for listener in listeners for c in listener.chains]
    for route in routes or [GATEWAY_ROUTES]:
        selected = {k for k, name in names.items() if name == route}
        hosts = _gateway_hosts(services, gateways, registry, builder, selected, https_ports, source)
        configs.append(_route_config(route, hosts))
    return listeners, configs


def _https_ports(
    gateways: Mapping[str, _Gateway], local_ports: Mapping[int, int]
) -> dict[str, int]:
    """Per Gateway, the local port its httpsRedirect sends clients to (443 first)."""
    out: dict[str, int] = {}
    every = sorted(
        {s.port for g in gateways.values() for s in g.servers if s.tls is not None},
        key=lambda port: (port != 443, port),
    )
    for key, gateway in gateways.items():
        own = sorted(
            {s.port for s in gateway.servers if s.tls is not None},
            key=lambda port: (port != 443, port),
        )
        for port in [*own, *every]:
            if port in local_ports:
                out[key] = local_ports[port]
                break
    return out


def _check_bound_hosts(
    services: Sequence[VirtualService], gateways: Mapping[str, _Gateway]
) -> None:
    for vs in services:
        for key in vs.gateways:
            if key == MESH:
                continue
            gateway = gateways[key]
            for index, vs_host in enumerate(vs.hosts):
                if not any(
                    _intersect(server_host, vs_host) is not None
                    for server in gateway.servers
                    for server_host in server.hosts
                ):
                    raise ValueError(
                        f"{vs.where}: hosts[{index}] {vs_host!r} matches no host of {gateway.where}"
                    )


def _host_covers(pattern: str, host: str) -> bool:
    if pattern == "*" or pattern == host:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and (not host.startswith("*.") or len(host) > len(pattern))
    return False


def _intersect(server_host: str, vs_host: str) -> str | None:
    if _host_covers(server_host, vs_host):
        return vs_host
    if _host_covers(vs_host, server_host):
        return server_host
    return None


def _gateway_hosts(
    services: Sequence[VirtualService],
    gateways: Mapping[str, _Gateway],
    registry: Registry,
    builder: RouteBuilder,
    selected: set[tuple[str, int]],
    https_ports: Mapping[str, int],
    source: Source,
) -> list[dict[str, Any]]:
    """The virtual hosts of one gateway route configuration: the ``selected`` servers'.

    ``source`` is the gateway as a caller: a ``sourceLabels`` match of a gateway-bound
    VirtualService applies if the gateway's pod labels (every Gateway's ``selector``)
    include them, as istiod checks them against the gateway proxy's labels
    (route.go ``sourceMatchHTTP``).
    """
    by_host: dict[str, dict[str, Any]] = {}
    contributors: dict[str, int] = {}
    redirects: dict[str, int | None] = {}
    for vs in services:
        for key in vs.gateways:
            if key == MESH:
                continue
            gateway = gateways[key]
            for vs_host in vs.hosts:
                for index, server in enumerate(gateway.servers):
                    if (key, index) not in selected:
                        continue
                    for server_host in server.hosts:
                        effective = _intersect(server_host, vs_host)
                        if effective is None:
                            continue
                        domains, name = _gateway_domains(effective, registry, vs.namespace)
                        entry = by_host.setdefault(
                            name, {"name": name, "domains": domains, "routes": []}
                        )
                        entry["routes"].extend(
                            builder.routes(vs, port=server.port, gateway=key, source=source)
                        )
                        if server.https_redirect:
                            redirects[name] = https_ports.get(key)
                        contributors[name] = contributors.get(name, 0) + 1
    for name, entry in by_host.items():
        if contributors[name] > 1:
            # istiod moves catch-all routes of merged VirtualServices last.
            entry["routes"].sort(key=lambda route: _catch_all(route))
        if name in redirects:
            local = redirects[name]
            if local is None:
                entry["require_tls"] = "ALL"
            else:
                # require_tls would send the client to port 443 of this host; locally
                # the HTTPS server listens on another port.
                entry["routes"] = [
                    {
                        "name": "https_redirect",
                        "match": {"prefix": "/"},
                        "redirect": {"https_redirect": True, "port_redirect": local},
                    }
                ]
        entry["include_request_attempt_count"] = True
    return list(by_host.values())


def _catch_all(route: Mapping[str, Any]) -> bool:
    match = route["match"]
    return (
        match.get("prefix") == "/"
        and not match.get("headers")
        and not match.get("query_parameters")
        and not match.get("dynamic_metadata")
    )


def _gateway_domains(host: str, registry: Registry, namespace: str) -> tuple[list[str], str]:
    if "*" in host:
        return [host], host
    resolved = registry.resolve(host, namespace)
    names = resolved.names if resolved else (host,)
    # "host:*" lets clients put any port in Host (curl localhost:8080).
    return [*names, *(f"{name}:*" for name in names)], resolved.fqdn if resolved else host
