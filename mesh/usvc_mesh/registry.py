"""The local service registry: what istiod learns from Kubernetes and ServiceEntries.

A :class:`MeshHost` is one Service or one ServiceEntry host: its fully
qualified name, every name that reaches it (``middleware-svc``,
``middleware-svc.default``, ``middleware-svc.default.svc`` and
``middleware-svc.default.svc.cluster.local`` for a Service), its ports, and the
endpoints behind each port. Service endpoints are the local processes of the
workloads (Deployments) the Service selects; ServiceEntry endpoints are a local
stand-in from ``externals``, the entry's own endpoints, or the host name
itself, resolved by DNS. An endpoint address that is a name rather than an IP
(compose's container names) makes its cluster ``STRICT_DNS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .procs import is_ip_address
from .spec import Spec, message, metadata_name, metadata_namespace

CLUSTER_DOMAIN = "svc.cluster.local"
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
H2_PROTOCOLS = frozenset({"HTTP2", "GRPC", "GRPC-WEB"})
# Istio's protocol selection: the port name's prefix before "-" (or the whole name).
_NAME_PROTOCOLS = {
    "http": "HTTP",
    "http2": "HTTP2",
    "grpc": "GRPC",
    "grpc-web": "GRPC-WEB",
    "https": "HTTPS",
    "tls": "TLS",
    "tcp": "TCP",
    "mongo": "MONGO",
    "mysql": "MYSQL",
    "redis": "REDIS",
    "udp": "UDP",
}
_RESOLUTIONS = {"DNS": "STRICT_DNS", "DNS_ROUND_ROBIN": "LOGICAL_DNS", "STATIC": "STATIC"}


@dataclass(frozen=True)
class Port:
    number: int
    name: str
    protocol: str

    @property
    def is_http(self) -> bool:
        """HTTP ports are routed by VirtualServices; others are only tunnelled (CONNECT)."""
        return self.protocol in HTTP_PROTOCOLS


@dataclass(frozen=True)
class Probe:
    """A workload's readiness probe, which the local Envoy runs as its active health check.

    In a cluster the kubelet probes each pod and an endpoint that fails leaves
    the Service's endpoints; locally Envoy probes each endpoint itself, with
    the probe's own timing (Kubernetes' defaults where the probe sets none).
    ``path`` None is a TCP check: a workload without an HTTP readiness probe
    is ready while it accepts connections.
    """

    path: str | None = "/readyz"
    period: int = 10
    timeout: int = 1
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    weight: int | None = None
    probe: Probe | None = None  # set for workload endpoints, never for external hosts
    # The replica's sidecar inbound listener (an Envoy internal listener, see
    # usvc_mesh.sidecars): the endpoint Envoy routes to; ``address:port`` stays the
    # process, which the health checks probe. None: the process itself.
    inbound: str | None = None


@dataclass(frozen=True)
class MeshHost:
    """A Service or ServiceEntry host, with everything a cluster or virtual host needs."""

    fqdn: str
    names: tuple[str, ...]
    namespace: str
    ports: tuple[Port, ...]
    source: str
    # Endpoints per port number; subsets filter them by labels.
    endpoints: Mapping[int, tuple[Endpoint, ...]]
    # Envoy cluster type per port: STATIC, or STRICT_DNS / LOGICAL_DNS for a
    # ServiceEntry resolved by DNS. Ports not listed are STATIC.
    discovery: Mapping[int, str] = field(default_factory=dict)

    def port(self, number: int) -> Port | None:
        for port in self.ports:
            if port.number == number:
                return port
        return None


@dataclass(frozen=True)
class Workload:
    name: str
    namespace: str
    labels: Mapping[str, str]
    probe: Probe = field(default_factory=lambda: Probe(path=None))


# One workload's local address, or one per replica.
Addresses = tuple[str, int] | Sequence[tuple[str, int]]


def addresses(value: Addresses) -> tuple[tuple[str, int], ...]:
    """``("127.0.0.1", 9001)`` or a list of such pairs, as a tuple of pairs."""
    if not value:
        return ()
    first, second = value[0], value[1] if len(value) > 1 else None
    if isinstance(first, str) and isinstance(second, int):
        return ((first, second),)
    pairs: list[tuple[str, int]] = []
    for pair in value:
        if isinstance(pair, str | int):
            raise ValueError(f"not a (host, port) pair or a list of them: {value!r}")
        pairs.append((str(pair[0]), int(pair[1])))
    return tuple(pairs)


class Registry:
    """Services, ServiceEntries and workloads, and the names that reach them."""

    def __init__(self, hosts: Sequence[MeshHost], workloads: Sequence[Workload]) -> None:
        self.hosts = tuple(hosts)
        self.workloads = tuple(workloads)
        self._by_fqdn = {host.fqdn: host for host in self.hosts}

    def resolve(self, name: str, namespace: str) -> MeshHost | None:
        """The host ``name`` refers to from an object in ``namespace``.

        Short names take the referring object's namespace, as in istiod; the
        longer Service forms are accepted too, as a sidecar's domains do.
        """
        if name in self._by_fqdn:
            return self._by_fqdn[name]
        return self._by_fqdn.get(service_fqdn(name, namespace))


def service_fqdn(name: str, namespace: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return f"{name}.{namespace}.{CLUSTER_DOMAIN}"
    if len(parts) == 2:
        return f"{name}.{CLUSTER_DOMAIN}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{name}.cluster.local"
    return name


def port_protocol(name: str | None, app_protocol: str | None, declared: str | None) -> str:
    """Istio's protocol for a port: explicit protocol, appProtocol, then name prefix."""
    for candidate in (declared, app_protocol):
        if candidate:
            return candidate.upper()
    if name:
        prefix = name.lower().split("-", 1)[0]
        if name.lower().startswith("grpc-web"):
            return "GRPC-WEB"
        if prefix in _NAME_PROTOCOLS:
            return _NAME_PROTOCOLS[prefix]
    # Unnamed ports are sniffed by Istio; the local workloads all speak HTTP.
    return "HTTP"


def build_registry(
    objects: Sequence[Mapping[str, Any]],
    *,
    endpoints: Mapping[str, Addresses],
    externals: Mapping[str, tuple[str, int]],
    namespace: str,
    inbounds: Mapping[tuple[str, int], str] | None = None,
) -> Registry:
    workloads = [_workload(obj, namespace) for obj in objects if obj.get("kind") in WORKLOAD_KINDS]
    known = {workload.name for workload in workloads}
    unknown = sorted(set(endpoints) - known)
    if unknown:
        raise ValueError(f"endpoints name no Deployment: {', '.join(unknown)}")
    by_label = _label_index(workloads)
    services = [
        _service(obj, namespace, by_label, endpoints, inbounds or {})
        for obj in objects
        if obj.get("kind") == "Service" and obj.get("apiVersion", "v1") == "v1"
    ]
    hosts = _with_short_names(services, namespace)
    for obj in objects:
        if obj.get("kind") == "ServiceEntry" and _is_istio(obj):
            hosts.extend(_service_entry(obj, namespace, externals))
    seen: dict[str, str] = {}
    for host in hosts:
        if host.fqdn in seen:
            raise ValueError(
                f"{host.source}: host {host.fqdn} is also defined by {seen[host.fqdn]}"
            )
        seen[host.fqdn] = host.source
    _check_externals(externals, hosts)
    return Registry(hosts, workloads)


def _is_istio(obj: Mapping[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).startswith("networking.istio.io/")


def _workload(obj: Mapping[str, Any], namespace: str) -> Workload:
    name = metadata_name(obj)
    template = (obj.get("spec") or {}).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ValueError(f"{obj['kind']} {name}: spec.template.metadata.labels must be a mapping")
    return Workload(
        name,
        metadata_namespace(obj, namespace),
        {str(k): str(v) for k, v in labels.items()},
        _readiness(template),
    )


def _readiness(template: Mapping[str, Any]) -> Probe:
    containers = (template.get("spec") or {}).get("containers") or [{}]
    probe = (containers[0] or {}).get("readinessProbe") or {}
    http = probe.get("httpGet") or {}
    return Probe(
        path=str(http.get("path", "/")) if http else None,
        period=int(probe.get("periodSeconds", 10)),
        timeout=int(probe.get("timeoutSeconds", 1)),
        failure_threshold=int(probe.get("failureThreshold", 3)),
        success_threshold=int(probe.get("successThreshold", 1)),
    )


def _service(
    obj: Mapping[str, Any],
    default_namespace: str,
    by_label: Mapping[tuple[str, str, str], Sequence[Workload]],
    endpoints: Mapping[str, Addresses],
    inbounds: Mapping[tuple[str, int], str],
) -> MeshHost:
    # Kubernetes fields are Kubernetes' business (schema validation happens
    # elsewhere); only the ones that shape routing are read here.
    name = metadata_name(obj)
    namespace = metadata_namespace(obj, default_namespace)
    where = f"Service {name}"
    spec = Spec.of(where, "spec", obj.get("spec") or {})
    selector = spec.string_map("selector")
    ports = []
    for port_spec in spec.children("ports"):
        number = port_spec.integer("port", minimum=1)
        if number is None:
            raise port_spec.error("port", "is required")
        port_name = port_spec.text("name", "") or ""
        protocol = port_protocol(port_name, port_spec.text("appProtocol"), None)
        ports.append(Port(number, port_name, protocol))
    # A Service without a selector gets its endpoints from elsewhere in
    # Kubernetes; locally it simply has none.
    selected = _selected(by_label, namespace, selector)
    # Each replica of a workload runs as one local process on one port, so
    # every Service port reaches that port (targetPort only matters inside a pod).
    backends = tuple(
        Endpoint(host, port, w.labels, probe=w.probe, inbound=inbounds.get((host, port)))
        for w in selected
        if w.name in endpoints
        for host, port in addresses(endpoints[w.name])
    )
    fqdn = f"{name}.{namespace}.{CLUSTER_DOMAIN}"
    # Endpoints given as names (compose: container names) are resolved by Envoy.
    by_name = any(not is_ip_address(e.address) for e in backends)
    return MeshHost(
        fqdn=fqdn,
        names=(f"{name}.{namespace}", f"{name}.{namespace}.svc", fqdn),
        namespace=namespace,
        ports=tuple(ports),
        source=where,
        endpoints={
            port.number: backends if port.is_http else _around_sidecar(backends) for port in ports
        },
        discovery={port.number: "STRICT_DNS" for port in ports} if by_name else {},
    )


def _label_index(workloads: Sequence[Workload]) -> dict[tuple[str, str, str], list[Workload]]:
    """The workloads by (namespace, label, value), each list in the workloads' order."""
    index: dict[tuple[str, str, str], list[Workload]] = {}
    for workload in workloads:
        for key, value in workload.labels.items():
            index.setdefault((workload.namespace, key, value), []).append(workload)
    return index


def _selected(
    by_label: Mapping[tuple[str, str, str], Sequence[Workload]],
    namespace: str,
    selector: Mapping[str, str],
) -> list[Workload]:
    """The workloads of ``namespace`` whose labels include all of ``selector``, in order.

    Read from the shortest list of one selector label's workloads: n Services over n
    workloads cost O(n) label comparisons, not O(n²).
    """
    if not selector:
        return []
    candidates = min((by_label.get((namespace, k, v), ()) for k, v in selector.items()), key=len)
    return [w for w in candidates if all(w.labels.get(k) == v for k, v in selector.items())]


def _around_sidecar(backends: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """A non-HTTP port reaches the process itself: an inbound listener speaks HTTP only.

    Istio's inbound passes TCP through a TCP proxy; the local inbound listener is
    an HTTP connection manager, so a tunnelled port skips it (no inbound span,
    no AuthorizationPolicy on it).
    """
    return tuple(replace(e, inbound=None) if e.inbound is not None else e for e in backends)


def _with_short_names(services: Sequence[MeshHost], namespace: str) -> list[MeshHost]:
    """Give each Service its bare name (``middleware-svc``) where that is unambiguous.

    A sidecar resolves short names in its own namespace. The one local proxy
    serves workloads of every namespace, so a short name goes to the only
    Service of that name, or, if several namespaces have one, to ``namespace``'s.
    """
    counts: dict[str, int] = {}
    for host in services:
        short = host.fqdn.split(".", 1)[0]
        counts[short] = counts.get(short, 0) + 1
    out = []
    for host in services:
        short = host.fqdn.split(".", 1)[0]
        if counts[short] == 1 or host.namespace == namespace:
            host = replace(host, names=(short, *host.names))
        out.append(host)
    return out


_SERVICE_ENTRY_FIELDS = {
    "hosts",
    "ports",
    "location",
    "resolution",
    "endpoints",
    "exportTo",
    "addresses",
}
_SERVICE_ENTRY_UNSUPPORTED = {"workloadSelector", "subjectAltNames"}
_SERVICE_PORT_FIELDS = {"number", "protocol", "name", "targetPort"}
_WORKLOAD_ENTRY_FIELDS = {"address", "ports", "labels", "weight"}
_WORKLOAD_ENTRY_UNSUPPORTED = {"network", "locality", "serviceAccount"}
_SE = "ServiceEntry"
_SERVICE_ENTRY = message(
    _SE,
    "ServiceEntry",
    [""],
    _SERVICE_ENTRY_FIELDS,
    _SERVICE_ENTRY_UNSUPPORTED,
    # addresses are VIPs for TCP capture, location only feeds telemetry: neither changes
    # local routing (exportTo is checked by translation._check_export_to).
    ignored={
        "addresses": "virtual IPs for TCP capture; the local proxies route by host name",
        "location": "checked (MESH_EXTERNAL or MESH_INTERNAL); it only feeds telemetry",
    },
)
_SERVICE_PORT = message(_SE, "ServicePort", ["ports[]"], _SERVICE_PORT_FIELDS)
_WORKLOAD_ENTRY = message(
    _SE, "WorkloadEntry", ["endpoints[]"], _WORKLOAD_ENTRY_FIELDS, _WORKLOAD_ENTRY_UNSUPPORTED
)


def _service_entry(
    obj: Mapping[str, Any], default_namespace: str, externals: Mapping[str, tuple[str, int]]
) -> list[MeshHost]:
    name = metadata_name(obj)
    namespace = metadata_namespace(obj, default_namespace)
    where = f"ServiceEntry {name}"
    spec = Spec.of(where, "", obj.get("spec") or {})
    spec.only(_SERVICE_ENTRY)
    location = spec.text("location", "MESH_EXTERNAL")
    if location not in {"MESH_EXTERNAL", "MESH_INTERNAL"}:
        raise spec.error("location", f"must be MESH_EXTERNAL or MESH_INTERNAL, not {location!r}")
    resolution = spec.text("resolution", "NONE") or "NONE"
    if resolution not in {*_RESOLUTIONS, "NONE"}:
        raise spec.error(
            "resolution", f"must be NONE, STATIC, DNS or DNS_ROUND_ROBIN, not {resolution!r}"
        )
    ports: list[tuple[Port, int]] = []
    for port_spec in spec.children("ports"):
        port_spec.only(_SERVICE_PORT)
        number = port_spec.integer("number", minimum=1)
        if number is None:
            raise port_spec.error("number", "is required")
        port_name = port_spec.text("name", "") or ""
        protocol = port_protocol(port_name, None, port_spec.text("protocol"))
        target = port_spec.integer("targetPort", minimum=1) or number
        ports.append((Port(number, port_name, protocol), target))
    if not ports:
        raise spec.error("ports", "is required")
    entries = [_workload_entry(entry) for entry in spec.children("endpoints")]
    hosts = spec.strings("hosts")
    if not hosts:
        raise spec.error("hosts", "is required")
    out = []
    for index, host in enumerate(hosts):
        if "*" in host:
            raise spec.unsupported(f"hosts[{index}]", repr(host), "wildcard hosts")
        by_port: dict[int, tuple[Endpoint, ...]] = {}
        discovery: dict[int, str] = {}
        for port, target in ports:
            override = externals.get(f"{host}:{port.number}") or externals.get(host)
            if override is not None:
                by_port[port.number] = (Endpoint(override[0], override[1]),)
            elif resolution == "NONE":
                # Istio passes the call to its original destination; the local
                # outbound proxy sees the host in the request and resolves it.
                if not port.is_http:
                    raise spec.unsupported(
                        "resolution", "NONE", f"only on HTTP ports; port {port.number} is not"
                    )
                by_port[port.number] = ()
                discovery[port.number] = "FORWARD_PROXY"
                continue
            elif entries:
                by_port[port.number] = tuple(
                    Endpoint(e.address, e.ports.get(port.name, target), e.labels, e.weight)
                    for e in entries
                )
            elif resolution == "STATIC":
                raise spec.error("endpoints", "is required when resolution is STATIC")
            else:
                by_port[port.number] = (Endpoint(host, target),)
            if override is None:
                discovery[port.number] = _RESOLUTIONS[resolution]
            elif not is_ip_address(override[0]):
                discovery[port.number] = "STRICT_DNS"
        out.append(
            MeshHost(
                fqdn=host,
                names=(host,),
                namespace=namespace,
                ports=tuple(port for port, _ in ports),
                source=where,
                endpoints=by_port,
                discovery=discovery,
            )
        )
    return out


@dataclass(frozen=True)
class _Entry:
    address: str
    ports: Mapping[str, int]
    labels: Mapping[str, str]
    weight: int | None


def _workload_entry(spec: Spec) -> _Entry:
    spec.only(_WORKLOAD_ENTRY)
    ports_value = spec.data.get("ports") or {}
    if not isinstance(ports_value, Mapping) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in ports_value.values()
    ):
        raise spec.error("ports", "must map port names to numbers")
    return _Entry(
        address=spec.required_text("address"),
        ports={str(k): int(v) for k, v in ports_value.items()},
        labels=spec.string_map("labels"),
        weight=spec.integer("weight", minimum=1),
    )


def _check_externals(externals: Mapping[str, tuple[str, int]], hosts: Sequence[MeshHost]) -> None:
    entries = [host for host in hosts if host.source.startswith("ServiceEntry")]
    names = {host.fqdn for host in entries}
    names |= {f"{host.fqdn}:{port.number}" for host in entries for port in host.ports}
    unknown = sorted(set(externals) - names)
    if unknown:
        raise ValueError(f"externals name no ServiceEntry host: {', '.join(unknown)}")
