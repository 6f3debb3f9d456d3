"""DestinationRules -> Envoy clusters, with istiod's defaults.

Every port of every Service and ServiceEntry host gets a cluster named
``outbound|PORT||FQDN``, and every DestinationRule subset one more,
``outbound|PORT|SUBSET|FQDN``, holding only the endpoints whose workload labels
match the subset's (as istiod's EDS does). A subset's traffic policy replaces
the rule's top-level loadBalancer / connectionPool / outlierDetection section
by section, then port-level settings replace them for their port.

Defaults that differ from Envoy's own: LEAST_REQUEST balancing, a 10 s connect
timeout, circuit-breaker limits of 2^32-1, and, when outlierDetection is set,
no success-rate ejection and a healthy-panic threshold of 0.

Where the local mesh differs from a cluster: there the kubelet runs each pod's
readiness probe and an unready pod leaves the Service's endpoints; here Envoy
runs the same probe as an active health check on every workload endpoint
(``health_checks``, the probe's period, timeout and thresholds), and a
healthy-panic threshold of 0 keeps it from ever routing to an unready
endpoint, as a removed endpoint never gets traffic (unless the rule's
outlierDetection.minHealthPercent says otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .registry import H2_PROTOCOLS, Endpoint, MeshHost, Port, Probe, Registry
from .spec import (
    NANOS_PER_SECOND,
    Spec,
    message,
    metadata_name,
    metadata_namespace,
    parse_duration,
)

UNLIMITED = 4_294_967_295
# istiod's default thresholds: every circuit breaker at the maximum (a DestinationRule's
# connectionPool lowers them).
UNLIMITED_THRESHOLDS = {
    "max_connections": UNLIMITED,
    "max_pending_requests": UNLIMITED,
    "max_requests": UNLIMITED,
    "max_retries": UNLIMITED,
}
DEFAULT_CONNECT_TIMEOUT = "10s"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_RULE_FIELDS = {"host", "trafficPolicy", "subsets", "exportTo"}
_RULE_UNSUPPORTED = {"workloadSelector"}
_POLICY_FIELDS = {"loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings"}
_POLICY_UNSUPPORTED = {"tunnel", "proxyProtocol", "retryBudget"}
_SUBSET_FIELDS = {"name", "labels", "trafficPolicy"}
_LB_FIELDS = {"simple", "consistentHash"}
_LB_UNSUPPORTED = {"localityLbSetting", "warmupDurationSecs", "warmup"}
_HASH_FIELDS = {
    "httpHeaderName",
    "httpCookie",
    "useSourceIp",
    "httpQueryParameterName",
    "ringHash",
    "maglev",
    "minimumRingSize",
}
_TCP_FIELDS = {
    "maxConnections",
    "connectTimeout",
    "tcpKeepalive",
    "maxConnectionDuration",
    "idleTimeout",
}
_HTTP_FIELDS = {
    "http1MaxPendingRequests",
    "http2MaxRequests",
    "maxRequestsPerConnection",
    "maxRetries",
    "idleTimeout",
    "h2UpgradePolicy",
    "useClientProtocol",
}
_HTTP_UNSUPPORTED = {"maxConcurrentStreams"}
_OUTLIER_FIELDS = {
    "consecutive5xxErrors",
    "consecutiveGatewayErrors",
    "consecutiveLocalOriginFailures",
    "splitExternalLocalOriginErrors",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
}
_OUTLIER_UNSUPPORTED = {"consecutiveErrors"}
_DR = "DestinationRule"
# Where a trafficPolicy sits, and the places that hold its sections (port-level ones too).
_POLICIES = ("trafficPolicy", "subsets[].trafficPolicy")
_SECTIONS = (*_POLICIES, *(f"{p}.portLevelSettings[]" for p in _POLICIES))
_CONSISTENT_HASH = tuple(f"{s}.loadBalancer.consistentHash" for s in _SECTIONS)
_DESTINATION_RULE = message(_DR, "DestinationRule", [""], _RULE_FIELDS, _RULE_UNSUPPORTED)
_TRAFFIC_POLICY = message(_DR, "TrafficPolicy", _POLICIES, _POLICY_FIELDS, _POLICY_UNSUPPORTED)
_PORT_TRAFFIC_POLICY = message(
    _DR,
    "PortTrafficPolicy",
    [f"{p}.portLevelSettings[]" for p in _POLICIES],
    {"port", *_POLICY_FIELDS} - {"portLevelSettings"},
    _POLICY_UNSUPPORTED,
)
_PORT_SELECTOR = message(
    _DR, "PortSelector", [f"{p}.portLevelSettings[].port" for p in _POLICIES], {"number"}
)
_SUBSET = message(_DR, "Subset", ["subsets[]"], _SUBSET_FIELDS)
# The local mesh is plaintext between processes, which is what ISTIO_MUTUAL looks like to
# the applications; MUTUAL needs client certificates from Kubernetes secrets (_tls).
_NO_CLIENT_CERTIFICATES = "client certificates (MUTUAL) come from Kubernetes secrets"
_CLIENT_TLS = message(
    _DR,
    "ClientTLSSettings",
    [f"{s}.tls" for s in _SECTIONS],
    {"mode", "sni", "caCertificates", "subjectAltNames", "insecureSkipVerify"},
    dict.fromkeys(
        ("clientCertificate", "privateKey", "credentialName", "caCrl"), _NO_CLIENT_CERTIFICATES
    ),
)
_LOAD_BALANCER = message(
    _DR,
    "LoadBalancerSettings",
    [f"{s}.loadBalancer" for s in _SECTIONS],
    _LB_FIELDS,
    _LB_UNSUPPORTED,
)
_CONSISTENT_HASH_LB = message(_DR, "ConsistentHashLB", _CONSISTENT_HASH, _HASH_FIELDS)
_HTTP_COOKIE = message(
    _DR, "HTTPCookie", [f"{c}.httpCookie" for c in _CONSISTENT_HASH], {"name", "path", "ttl"}
)
_MAGLEV = message(_DR, "MagLev", [f"{c}.maglev" for c in _CONSISTENT_HASH], {"tableSize"})
_RING_HASH = message(
    _DR, "RingHash", [f"{c}.ringHash" for c in _CONSISTENT_HASH], {"minimumRingSize"}
)
_CONNECTION_POOL = message(
    _DR, "ConnectionPoolSettings", [f"{s}.connectionPool" for s in _SECTIONS], {"tcp", "http"}
)
_TCP = message(_DR, "TCPSettings", [f"{s}.connectionPool.tcp" for s in _SECTIONS], _TCP_FIELDS)
_KEEPALIVE = message(
    _DR,
    "TcpKeepalive",
    [f"{s}.connectionPool.tcp.tcpKeepalive" for s in _SECTIONS],
    {"probes", "time", "interval"},
)
_HTTP = message(
    _DR,
    "HTTPSettings",
    [f"{s}.connectionPool.http" for s in _SECTIONS],
    _HTTP_FIELDS,
    _HTTP_UNSUPPORTED,
)
_OUTLIER = message(
    _DR,
    "OutlierDetection",
    [f"{s}.outlierDetection" for s in _SECTIONS],
    _OUTLIER_FIELDS,
    _OUTLIER_UNSUPPORTED,
)
_SIMPLE = {
    "UNSPECIFIED": "LEAST_REQUEST",
    "LEAST_REQUEST": "LEAST_REQUEST",
    "LEAST_CONN": "LEAST_REQUEST",
    "ROUND_ROBIN": "ROUND_ROBIN",
    "RANDOM": "RANDOM",
}


@dataclass(frozen=True)
class LoadBalancer:
    lb_policy: str = "LEAST_REQUEST"
    extra: Mapping[str, Any] = field(default_factory=dict)
    hash_policy: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ConnectionPool:
    thresholds: Mapping[str, int] = field(default_factory=dict)
    connect_timeout: str | None = None
    common_http: Mapping[str, Any] = field(default_factory=dict)
    upgrade_h2: bool = False
    use_client_protocol: bool = False
    tcp_keepalive: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Outlier:
    detection: Mapping[str, Any]
    panic_threshold: float


@dataclass(frozen=True)
class OriginatedTls:
    """``tls.mode: SIMPLE``: the proxy speaks TLS to the upstream for a plaintext caller."""

    sni: str | None
    ca_file: str
    subject_alt_names: tuple[str, ...]
    verify: bool

    def transport_socket(self, host: str) -> dict[str, Any]:
        sni = self.sni or host
        context: dict[str, Any] = {}
        if self.verify:
            # With no subjectAltNames istiod checks the SNI name (VERIFY_CERTIFICATE_AT_CLIENT).
            names = self.subject_alt_names or (sni,)
            context["validation_context"] = {
                "trusted_ca": {"filename": self.ca_file},
                "match_typed_subject_alt_names": [
                    {"san_type": "DNS", "matcher": {"exact": name}} for name in names
                ],
            }
        return {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                ".UpstreamTlsContext",
                "sni": sni,
                "common_tls_context": context,
            },
        }


@dataclass(frozen=True)
class Policy:
    """One trafficPolicy, parsed; each section is None when unset."""

    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier: Outlier | None = None
    tls: OriginatedTls | None = None
    ports: Mapping[int, Policy] = field(default_factory=dict)

    def over(self, base: Policy) -> Policy:
        """This policy's sections where set, else ``base``'s (istiod's merge)."""
        return Policy(
            load_balancer=self.load_balancer or base.load_balancer,
            connection_pool=self.connection_pool or base.connection_pool,
            outlier=self.outlier or base.outlier,
            tls=self.tls or base.tls,
            ports=self.ports or base.ports,
        )

    def for_port(self, number: int) -> Policy:
        port = self.ports.get(number)
        return replace(port.over(self), ports={}) if port else replace(self, ports={})


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    policy: Policy


@dataclass(frozen=True)
class DestinationRule:
    name: str
    host: MeshHost
    policy: Policy
    subsets: Mapping[str, Subset]

    def policy_for(self, port: int, subset: str = "") -> Policy:
        if subset:
            subset_policy = self.subsets[subset].policy
            # Port-level settings of the subset win over the rule's.
            merged = subset_policy.over(self.policy)
            if port in subset_policy.ports:
                return merged.for_port(port)
            return replace(merged, ports=self.policy.ports).for_port(port)
        return self.policy.for_port(port)


def read_destination_rules(
    objects: Sequence[Mapping[str, Any]], registry: Registry, namespace: str
) -> dict[str, DestinationRule]:
    """DestinationRules by the FQDN of their host."""
    rules: dict[str, DestinationRule] = {}
    for obj in objects:
        if obj.get("kind") != "DestinationRule":
            continue
        name = metadata_name(obj)
        where = f"DestinationRule {name}"
        spec = Spec.of(where, "", obj.get("spec") or {})
        spec.only(_DESTINATION_RULE)
        host_name = spec.required_text("host")
        host = registry.resolve(host_name, metadata_namespace(obj, namespace))
        if host is None:
            raise spec.error("host", f"{host_name!r} names no Service or ServiceEntry")
        if host.fqdn in rules:
            raise spec.error(
                "host", f"{host_name!r} already has DestinationRule {rules[host.fqdn].name}"
            )
        policy = _policy(spec.child("trafficPolicy"), top=True)
        subsets: dict[str, Subset] = {}
        for subset_spec in spec.children("subsets"):
            subset_spec.only(_SUBSET)
            subset_name = subset_spec.required_text("name")
            if subset_name in subsets:
                raise subset_spec.error("name", f"{subset_name!r} is defined twice")
            subsets[subset_name] = Subset(
                subset_name,
                subset_spec.string_map("labels"),
                _policy(subset_spec.child("trafficPolicy"), top=True),
            )
        rules[host.fqdn] = DestinationRule(name, host, policy, subsets)
    return rules


def cluster_name(port: int, subset: str, fqdn: str) -> str:
    return f"outbound|{port}|{subset}|{fqdn}"


def build_clusters(
    registry: Registry, rules: Mapping[str, DestinationRule], *, health_checks: bool = True
) -> tuple[list[dict[str, Any]], list[str]]:
    """All clusters, and warnings about subsets that select nothing."""
    clusters: list[dict[str, Any]] = []
    warnings: list[str] = []
    for host in registry.hosts:
        rule = rules.get(host.fqdn)
        for port in host.ports:
            endpoints = host.endpoints.get(port.number, ())
            if not health_checks:
                endpoints = tuple(replace(e, probe=None) for e in endpoints)
            probes = sorted({e.probe for e in endpoints if e.probe}, key=repr)
            if len(probes) > 1 and port == host.ports[0]:
                warnings.append(
                    f"{host.source}: its workloads have different readiness probes; "
                    f"the local Envoy health-checks every endpoint with {_describe(probes[0])}"
                )
            policy = rule.policy_for(port.number) if rule else Policy()
            clusters.append(_cluster(host, port, "", endpoints, policy))
            if rule is None:
                continue
            for subset in rule.subsets.values():
                chosen = tuple(
                    e
                    for e in endpoints
                    if all(e.labels.get(k) == v for k, v in subset.labels.items())
                )
                if not chosen and endpoints:
                    warnings.append(
                        f"DestinationRule {rule.name}: subset {subset.name} "
                        f"selects no endpoint of {host.fqdn}"
                    )
                clusters.append(
                    _cluster(
                        host, port, subset.name, chosen, rule.policy_for(port.number, subset.name)
                    )
                )
    return clusters, warnings


def hash_policy(rule: DestinationRule | None, port: int, subset: str) -> Mapping[str, Any] | None:
    if rule is None:
        return None
    load_balancer = rule.policy_for(port, subset).load_balancer
    return load_balancer.hash_policy if load_balancer else None


# The DNS cache that forward-proxy clusters and the outbound listener's
# dynamic_forward_proxy filter share; the two must carry the same config.
DNS_CACHE = {"name": "passthrough_dns", "dns_lookup_family": "V4_PREFERRED"}
# A ServiceEntry with resolution NONE: traffic goes to the request's own host.
FORWARD_PROXY = "FORWARD_PROXY"


def forward_proxy_cluster() -> dict[str, Any]:
    """The cluster type that connects to whatever host a request names (Envoy's
    dynamic forward proxy): how a proxy that sees absolute-form requests reaches
    the "original destination" Istio's PassthroughCluster and NONE resolution mean."""
    return {
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters"
                ".dynamic_forward_proxy.v3.ClusterConfig",
                "dns_cache_config": dict(DNS_CACHE),
            },
        },
    }


def _cluster(
    host: MeshHost, port: Port, subset: str, endpoints: Sequence[Endpoint], policy: Policy
) -> dict[str, Any]:
    name = cluster_name(port.number, subset, host.fqdn)
    load_balancer = policy.load_balancer or LoadBalancer()
    pool = policy.connection_pool or ConnectionPool()
    discovery = host.discovery.get(port.number, "STATIC")
    cluster: dict[str, Any] = {
        "name": name,
        # Envoy's cluster_name tag stops at the first dot of a stat name: with
        # the host's dots the rest would end up in the metric's name
        # (envoy_cluster_usvc_svc_cluster_local_upstream_rq_total).
        "alt_stat_name": name.replace(".", "_"),
        "type": discovery,
        "connect_timeout": pool.connect_timeout or DEFAULT_CONNECT_TIMEOUT,
        "lb_policy": load_balancer.lb_policy,
        **load_balancer.extra,
        "circuit_breakers": {
            "thresholds": [{**UNLIMITED_THRESHOLDS, "track_remaining": True, **pool.thresholds}]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [_lb_endpoint(e) for e in endpoints]}]
            if endpoints
            else [],
        },
    }
    if discovery == FORWARD_PROXY:
        del cluster["type"], cluster["load_assignment"]
        cluster.update(forward_proxy_cluster())
    elif discovery != "STATIC":
        cluster["dns_lookup_family"] = "V4_ONLY"
    if policy.tls is not None:
        cluster["transport_socket"] = policy.tls.transport_socket(host.fqdn)
    if any(e.inbound is not None for e in endpoints):
        cluster["transport_socket"] = _internal_upstream(cluster.get("transport_socket"))
    if port.is_http:
        options = _http_options(port, pool)
        if discovery == FORWARD_PROXY:
            # Envoy requires these on a forward proxy; they only act on TLS upstreams.
            options["upstream_http_protocol_options"] = {
                "auto_sni": True,
                "auto_san_validation": True,
            }
        cluster["typed_extension_protocol_options"] = {HTTP_OPTIONS: options}
    if pool.tcp_keepalive is not None:
        cluster["upstream_connection_options"] = {"tcp_keepalive": dict(pool.tcp_keepalive)}
    if policy.outlier is not None:
        cluster["outlier_detection"] = dict(policy.outlier.detection)
        cluster["common_lb_config"] = {
            "healthy_panic_threshold": {"value": policy.outlier.panic_threshold}
        }
    probes = sorted({e.probe for e in endpoints if e.probe is not None}, key=repr)
    if probes and discovery == "STATIC":
        cluster["health_checks"] = [_health_check(probes[0], host.fqdn)]
        cluster.setdefault("common_lb_config", {"healthy_panic_threshold": {"value": 0.0}})
    return cluster


def _internal_upstream(inner: Mapping[str, Any] | None) -> dict[str, Any]:
    """To sidecars' inbound (internal) listeners: the filter state shared with the
    upstream, the caller's identity, goes along (usvc_mesh.sidecars)."""
    return {
        "name": "envoy.transport_sockets.internal_upstream",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets"
            ".internal_upstream.v3.InternalUpstreamTransport",
            "transport_socket": dict(inner)
            if inner
            else {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                },
            },
        },
    }


def _health_check(probe: Probe, authority: str) -> dict[str, Any]:
    """A readiness probe as an Envoy active health check (see the module docstring)."""
    check: dict[str, Any] = {
        "timeout": f"{probe.timeout}s",
        "interval": f"{probe.period}s",
        # Envoy probes idle clusters every 60 s by default; a probe keeps its period.
        "no_traffic_interval": f"{probe.period}s",
        "unhealthy_threshold": probe.failure_threshold,
        "healthy_threshold": probe.success_threshold,
    }
    if probe.path is None:
        check["tcp_health_check"] = {}
    else:
        check["http_health_check"] = {"path": probe.path, "host": authority}
    return check


def _describe(probe: Probe) -> str:
    what = f"GET {probe.path}" if probe.path else "a TCP connect"
    return f"{what} every {probe.period}s"


def _lb_endpoint(endpoint: Endpoint) -> dict[str, Any]:
    process = {"socket_address": {"address": endpoint.address, "port_value": endpoint.port}}
    out: dict[str, Any] = {"endpoint": {"address": process}}
    if endpoint.inbound is not None:
        out["endpoint"] = {
            "address": {"envoy_internal_address": {"server_listener_name": endpoint.inbound}},
            # The kubelet probes the application, not its sidecar's inbound listener.
            "health_check_config": {"address": process},
        }
    if endpoint.weight is not None:
        out["load_balancing_weight"] = endpoint.weight
    return out


def _http_options(port: Port, pool: ConnectionPool) -> dict[str, Any]:
    options: dict[str, Any] = {"@type": f"type.googleapis.com/{HTTP_OPTIONS}"}
    if pool.common_http:
        options["common_http_protocol_options"] = dict(pool.common_http)
    if pool.use_client_protocol:
        options["use_downstream_protocol_config"] = {
            "http_protocol_options": {},
            "http2_protocol_options": {},
        }
    elif port.protocol in H2_PROTOCOLS or pool.upgrade_h2:
        options["explicit_http_config"] = {"http2_protocol_options": {}}
    else:
        options["explicit_http_config"] = {"http_protocol_options": {}}
    return options


def _policy(spec: Spec | None, *, top: bool) -> Policy:
    if spec is None:
        return Policy()
    if top:
        # A port-level policy was checked as a PortTrafficPolicy (the same fields and port).
        spec.only(_TRAFFIC_POLICY)
    tls = _tls(spec.child("tls"))
    ports: dict[int, Policy] = {}
    for port_spec in spec.children("portLevelSettings"):
        port_spec.only(_PORT_TRAFFIC_POLICY)
        selector = port_spec.child("port")
        number = selector.integer("number", minimum=1) if selector else None
        if selector is None or number is None:
            raise port_spec.error("port", "needs a number")
        selector.only(_PORT_SELECTOR)
        ports[number] = _policy(
            Spec(
                port_spec.where,
                port_spec.path,
                {k: v for k, v in port_spec.data.items() if k != "port"},
            ),
            top=False,
        )
    return Policy(
        load_balancer=_load_balancer(spec.child("loadBalancer")),
        connection_pool=_connection_pool(spec.child("connectionPool")),
        outlier=_outlier(spec.child("outlierDetection")),
        tls=tls,
        ports=ports,
    )


# Where Debian (and the distroless proxy image's base) keep the system roots.
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"


def _tls(spec: Spec | None) -> OriginatedTls | None:
    if spec is None:
        return None
    # The local mesh is plaintext between processes, which is what ISTIO_MUTUAL
    # looks like to the applications. SIMPLE is real TLS from the proxy to an
    # upstream (istio.io: "Egress TLS Origination"); MUTUAL needs client
    # certificates from Kubernetes secrets, which are not there locally.
    spec.only(_CLIENT_TLS)
    mode = spec.text("mode", "DISABLE")
    if mode in {"DISABLE", "ISTIO_MUTUAL"}:
        return None
    if mode != "SIMPLE":
        raise spec.unsupported("mode", mode, "only DISABLE, ISTIO_MUTUAL and SIMPLE are")
    return OriginatedTls(
        sni=spec.text("sni"),
        # istiod verifies against the proxy's system roots when none are given.
        ca_file=spec.text("caCertificates") or SYSTEM_CA_FILE,
        subject_alt_names=tuple(spec.strings("subjectAltNames")),
        verify=not spec.flag("insecureSkipVerify"),
    )


def _load_balancer(spec: Spec | None) -> LoadBalancer | None:
    if spec is None:
        return None
    spec.only(_LOAD_BALANCER)
    simple = spec.text("simple")
    consistent = spec.child("consistentHash")
    if simple is not None and consistent is not None:
        raise spec.error("simple", "and consistentHash are mutually exclusive")
    if consistent is not None:
        return _consistent_hash(consistent)
    simple = simple or "UNSPECIFIED"
    if simple == "PASSTHROUGH":
        raise spec.unsupported("simple", "PASSTHROUGH")
    if simple not in _SIMPLE:
        raise spec.error("simple", f"must be one of {', '.join(sorted(_SIMPLE))}, not {simple!r}")
    return LoadBalancer(_SIMPLE[simple])


def _consistent_hash(spec: Spec) -> LoadBalancer:
    spec.only(_CONSISTENT_HASH_LB)
    keys = [
        key
        for key in ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
        if spec.has(key)
    ]
    if len(keys) != 1:
        raise spec.error(
            "",
            "needs exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
        )
    key = keys[0]
    policy: dict[str, Any]
    if key == "httpHeaderName":
        policy = {"header": {"header_name": spec.required_text(key)}}
    elif key == "httpQueryParameterName":
        policy = {"query_parameter": {"name": spec.required_text(key)}}
    elif key == "useSourceIp":
        policy = {"connection_properties": {"source_ip": bool(spec.flag(key))}}
    else:
        cookie = spec.child(key)
        assert cookie is not None
        cookie.only(_HTTP_COOKIE)
        policy = {"cookie": {"name": cookie.required_text("name")}}
        if cookie.has("path"):
            policy["cookie"]["path"] = cookie.text("path")
        if cookie.has("ttl"):
            policy["cookie"]["ttl"] = cookie.duration("ttl")
    maglev = spec.child("maglev")
    if maglev is not None:
        if spec.has("ringHash") or spec.has("minimumRingSize"):
            raise spec.error("maglev", "and ringHash are mutually exclusive")
        maglev.only(_MAGLEV)
        extra: dict[str, Any] = {}
        table = maglev.integer("tableSize", minimum=1)
        if table is not None:
            extra["maglev_lb_config"] = {"table_size": table}
        return LoadBalancer("MAGLEV", extra, policy)
    ring = spec.child("ringHash")
    minimum = spec.integer("minimumRingSize", minimum=1)
    if ring is not None:
        ring.only(_RING_HASH)
        minimum = ring.integer("minimumRingSize", minimum=1) or minimum
    # istiod's ring size when none is given.
    return LoadBalancer(
        "RING_HASH", {"ring_hash_lb_config": {"minimum_ring_size": minimum or 1024}}, policy
    )


def _connection_pool(spec: Spec | None) -> ConnectionPool | None:
    if spec is None:
        return None
    spec.only(_CONNECTION_POOL)
    thresholds: dict[str, int] = {}
    common: dict[str, Any] = {}
    connect_timeout = None
    keepalive = None
    upgrade_h2 = False
    use_client = False
    tcp = spec.child("tcp")
    if tcp is not None:
        tcp.only(_TCP)
        if value := tcp.integer("maxConnections"):
            thresholds["max_connections"] = value
        connect_timeout = tcp.duration("connectTimeout", minimum_nanos=1_000_000)
        if duration := tcp.duration("maxConnectionDuration", minimum_nanos=1_000_000):
            common["max_connection_duration"] = duration
        if duration := tcp.duration("idleTimeout"):
            common["idle_timeout"] = duration
        keepalive = _keepalive(tcp.child("tcpKeepalive"))
    http = spec.child("http")
    if http is not None:
        http.only(_HTTP)
        for field_name, threshold in (
            ("http1MaxPendingRequests", "max_pending_requests"),
            ("http2MaxRequests", "max_requests"),
            ("maxRetries", "max_retries"),
        ):
            if value := http.integer(field_name):
                thresholds[threshold] = value
        if value := http.integer("maxRequestsPerConnection"):
            common["max_requests_per_connection"] = value
        if duration := http.duration("idleTimeout"):
            common["idle_timeout"] = duration
        upgrade = http.text("h2UpgradePolicy", "DEFAULT")
        if upgrade not in {"DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"}:
            raise http.error(
                "h2UpgradePolicy", f"must be DEFAULT, DO_NOT_UPGRADE or UPGRADE, not {upgrade!r}"
            )
        upgrade_h2 = upgrade == "UPGRADE"
        use_client = bool(http.flag("useClientProtocol"))
    return ConnectionPool(thresholds, connect_timeout, common, upgrade_h2, use_client, keepalive)


def _keepalive(spec: Spec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    spec.only(_KEEPALIVE)
    out: dict[str, Any] = {}
    if (probes := spec.integer("probes")) is not None:
        out["keepalive_probes"] = probes
    for key, envoy_key in (("time", "keepalive_time"), ("interval", "keepalive_interval")):
        if spec.duration(key) is not None:
            nanos = parse_duration(spec.data[key]) or 0
            # Envoy counts keepalive time in whole seconds.
            out[envoy_key] = max(1, nanos // NANOS_PER_SECOND)
    return out


def _outlier(spec: Spec | None) -> Outlier | None:
    if spec is None:
        return None
    spec.only(_OUTLIER)
    out: dict[str, Any] = {"enforcing_success_rate": 0}
    for key, count, enforcing in (
        ("consecutive5xxErrors", "consecutive_5xx", "enforcing_consecutive_5xx"),
        (
            "consecutiveGatewayErrors",
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
        ),
    ):
        value = spec.integer(key)
        if value is not None:
            out[count] = value
            out[enforcing] = 100 if value > 0 else 0
    for key, envoy_key in (("interval", "interval"), ("baseEjectionTime", "base_ejection_time")):
        duration = spec.duration(key, minimum_nanos=1_000_000)
        if duration is not None:
            out[envoy_key] = duration
    max_ejection = spec.integer("maxEjectionPercent")
    if max_ejection is not None:
        if max_ejection > 100:
            raise spec.error("maxEjectionPercent", f"must be at most 100, not {max_ejection}")
        if max_ejection > 0:
            out["max_ejection_percent"] = max_ejection
    if spec.flag("splitExternalLocalOriginErrors"):
        out["split_external_local_origin_errors"] = True
        local = spec.integer("consecutiveLocalOriginFailures")
        if local:
            out["consecutive_local_origin_failure"] = local
            out["enforcing_consecutive_local_origin_failure"] = 100
        out["enforcing_local_origin_success_rate"] = 0
    elif spec.has("consecutiveLocalOriginFailures"):
        raise spec.error(
            "consecutiveLocalOriginFailures", "needs splitExternalLocalOriginErrors: true"
        )
    min_health = spec.integer("minHealthPercent") or 0
    if min_health > 100:
        raise spec.error("minHealthPercent", f"must be at most 100, not {min_health}")
    return Outlier(out, float(min_health))
