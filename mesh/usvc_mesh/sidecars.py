"""The shape Istio gives a pod, inside the one local Envoy: a sidecar per workload.

In a cluster every pod has its own Envoy: an outbound side that its calls are
redirected to, and an inbound side in front of the application. Locally one
Envoy process plays every sidecar, so each workload (Deployment) gets

- its **own outbound listener**, on the port in its ``EGRESS_PROXY``: the
  mesh knows who calls, and Envoy's spans and access lines name the caller;
- per replica, an **inbound listener** in front of the process: mesh clusters'
  endpoints are the inbound listeners, each of which forwards to its replica's
  application port (listener and cluster ``inbound|PORT||INSTANCE``, Istio's
  ``inbound|PORT||`` made unique per replica, since the replicas share one Envoy).

An inbound listener is an Envoy internal listener (envoyproxy.io: "Internal
Listener"; bootstrap extension ``envoy.bootstrap.internal_listener``): a mesh
cluster's endpoint is its ``envoy_internal_address``, reached through the
``envoy.transport_sockets.internal_upstream`` transport socket, a user-space
connection inside the one Envoy. In a cluster that hop is a connection
between two pods' Envoys over mTLS; locally it is no socket at all, which is
both cheaper (no loopback connection per hop) and what carries the caller's
identity (below). Each replica also has a **plain listener** on a loopback port,
the pod's address as a client outside the mesh sees it: the same filters and
route, no caller identity, and refusing plaintext when PeerAuthentication says
STRICT (:func:`inbound_http_filters`).

Envoy's active health checks (the readiness probe, :mod:`usvc_mesh.clusters`)
go straight to the application port (the endpoint's ``health_check_config``),
as the kubelet probes the application and not its sidecar.

A workload's identity is its Deployment's service account
(``spec.template.spec.serviceAccountName``, Kubernetes' default ``default``):
the SPIFFE principal ``cluster.local/ns/NS/sa/SA``. In a cluster the callee's
sidecar reads it from the caller's mTLS certificate (istio.io: "Security",
"Peer authentication"). Locally each outbound listener (and the gateway)
stamps it as the filter state object ``usvc.peer_principal``
(``envoy.filters.http.set_filter_state``, ``shared_with_upstream: ONCE``), which
the internal upstream transport hands to the callee's inbound listener as
its downstream connection's filter state. A workload cannot forge it: an
internal listener has no socket, so only Envoy's own outbound side reaches
it, and Envoy keys its upstream connection pools on the shared (hashable)
filter state, so two callers' requests never share one connection. What is not
reproduced: no certificates and no encryption (there is no wire), so between
sidecars PeerAuthentication's ``mode`` has nothing to switch; it decides the
plain listeners (docs/local-mesh.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .authz import (
    PEER_PRINCIPAL,
    PRINCIPAL_FACTORY,
    authorization,
    peer_authentication,
    refuses_plaintext,
)

TRUST_DOMAIN = "cluster.local"
INBOUND_HOST = "127.0.0.1"  # where every outbound listener listens (a pod's loopback)
# The filter state object that carries the caller's identity to the callee's inbound
# (the key usvc_mesh.authz's RBAC rules match).
PEER_PRINCIPAL_KEY = PEER_PRINCIPAL
# Istio's ingress gateway: the `istio-ingress` namespace of Istio's gateway chart.
GATEWAY_NAMESPACE = "istio-ingress"
GATEWAY_SERVICE_ACCOUNT = "istio-ingressgateway"
GATEWAY_SERVICE = "istio-ingressgateway"


def principal(namespace: str, service_account: str) -> str:
    """The SPIFFE identity of a service account, as AuthorizationPolicy ``principals`` name it."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def spiffe_id(namespace: str, service_account: str) -> str:
    """The URI SAN of an Istio workload certificate: ``spiffe://`` + :func:`principal`."""
    return f"spiffe://{principal(namespace, service_account)}"


GATEWAY_PRINCIPAL = spiffe_id(GATEWAY_NAMESPACE, GATEWAY_SERVICE_ACCOUNT)
# What `usvc up` says once: where the local identity differs from Istio's mTLS.
IDENTITY_NOTE = (
    "sidecars: each workload's identity (spiffe://cluster.local/ns/NS/sa/SA) travels "
    "inside the one local Envoy as filter state, not in an mTLS certificate: "
    "AuthorizationPolicy principals are enforced at the inbound listeners as in a cluster, "
    "but nothing is encrypted, and PeerAuthentication's mode applies only to each "
    "replica's plain listener (its pod address); a process reached at its own port "
    "bypasses its sidecar (docs/local-mesh.md)"
)


def identity_filter(spiffe: str) -> dict[str, Any]:
    """The HTTP filter that stamps a caller's identity for the next inbound listener.

    ``shared_with_upstream: ONCE``: the object goes to the upstream connection
    (the callee's internal inbound listener) and no further. Envoy hashes a
    shared object into the upstream connection pool's key only if the object is
    hashable: ``envoy.hashable_string``, not ``envoy.string`` (whose object has
    no hash, so front's and middle's requests to core would share connections
    and arrive with whichever identity opened them). Each identity has its own
    connections (envoyproxy.io: "Well Known Filter State Objects", set_filter_state).
    """
    return {
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": (
                "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config"
            ),
            "on_request_headers": [
                {
                    "object_key": PEER_PRINCIPAL_KEY,
                    "factory_key": PRINCIPAL_FACTORY,  # envoy.hashable_string
                    "format_string": {"text_format_source": {"inline_string": spiffe}},
                    "shared_with_upstream": "ONCE",
                }
            ],
        },
    }


@dataclass(frozen=True)
class Inbound:
    """One replica: its process's address; its inbound listener is named after it."""

    instance: str  # "front-1", the pod's name
    app: tuple[str, int]  # where the replica's process listens
    # The port of its plain listener (the pod's address for clients outside the
    # mesh, where PeerAuthentication's mode applies); 0: none.
    pod: int = 0

    @property
    def cluster(self) -> str:
        """The inbound listener's and its cluster's name (by port: during a rolling
        restart old and new replica share an instance name)."""
        return f"inbound|{self.app[1]}||{self.instance}"

    listener = cluster

    @property
    def plain_listener(self) -> str:
        """Its plain TCP listener: what a client outside the mesh reaches at the pod's
        address (Istio's ``virtualInbound``, port 15006, which the pod's iptables
        redirect to)."""
        return f"virtualInbound|{self.app[1]}||{self.instance}"


@dataclass(frozen=True)
class Sidecar:
    """One workload's sidecar: an outbound listener and one inbound listener per replica."""

    workload: str  # the Deployment's name
    namespace: str
    service_account: str
    labels: dict[str, str] = field(default_factory=dict)
    outbound: int = 0  # the port of its outbound listener (its EGRESS_PROXY)
    inbounds: tuple[Inbound, ...] = ()
    # Its inbound listeners' filters before the router (inbound_http_filters).
    http_filters: tuple[dict[str, Any], ...] = ()
    # PeerAuthentication STRICT: its plain listeners refuse plaintext clients.
    plaintext_refused: bool = False
    # Its outbound listener's route configuration (RDS): ``outbound``, or the view of
    # the routes its sourceLabels/sourceNamespace matches give it (usvc_mesh.translation).
    routes: str = "outbound"

    @property
    def principal(self) -> str:
        return principal(self.namespace, self.service_account)

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.namespace, self.service_account)

    @property
    def service(self) -> str:
        """Istio's canonical service: the ``app`` label (else the Deployment's name)."""
        return self.labels.get("service.istio.io/canonical-name") or self.labels.get(
            "app", self.workload
        )

    @property
    def revision(self) -> str:
        return self.labels.get("service.istio.io/canonical-revision") or self.labels.get(
            "version", "latest"
        )

    @property
    def cluster_name(self) -> str:
        """``<app>.<namespace>``: what istiod puts in a sidecar's ``node.cluster``.

        Envoy's Zipkin tracer names its spans' service after it.
        """
        return f"{self.service}.{self.namespace}"

    def span_tags(self) -> dict[str, str]:
        """The tags istiod adds to each span of a sidecar (pilot/pkg/networking/core/tracing.go
        ``buildServiceTags``), but ``istio.cluster_id``: locally there is no cluster
        (docs/istio-envoy.md). Each costs Envoy's OpenTelemetry tracer about 6,000
        instructions a span (bench/README.md, "The chain's Envoy, function by function")."""
        return {
            "istio.canonical_service": self.service,
            "istio.canonical_revision": self.revision,
            "istio.namespace": self.namespace,
            "istio.mesh_id": TRUST_DOMAIN,
        }


GATEWAY_TAGS = {
    "istio.canonical_service": GATEWAY_SERVICE,
    "istio.canonical_revision": "latest",
    "istio.namespace": GATEWAY_NAMESPACE,
    "istio.mesh_id": TRUST_DOMAIN,
}


def service_account(deployment: Mapping[str, Any]) -> str:
    """A Deployment's pod service account (Kubernetes' default: ``default``)."""
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    return str(pod.get("serviceAccountName") or pod.get("serviceAccount") or "default")


@dataclass(frozen=True)
class InboundPolicy:
    """What the security objects make of one workload's inbound side."""

    http_filters: tuple[dict[str, Any], ...] = ()  # the RBAC filters, before the router
    plaintext_refused: bool = False  # its plain listeners refuse plaintext (STRICT)
    warnings: tuple[str, ...] = ()


def inbound_http_filters(
    sidecar: Sidecar, objects: Iterable[Mapping[str, Any]], namespace: str
) -> InboundPolicy:
    """The HTTP filters of ``sidecar``'s inbound listeners before the router, its plain
    listeners' PeerAuthentication mode, and warnings.

    The one place they are chosen: the AuthorizationPolicy RBAC filters
    (:func:`usvc_mesh.authz.authorization`, matching the filter state
    ``usvc.peer_principal`` the caller's outbound listener stamped), in istiod's
    order; nothing else, so an inbound listener costs as little as a traversal can.
    Every port of a replica shares its inbound listener, so a rule on
    ``to.operation.ports`` is decided for no port in particular (``port=None``).

    PeerAuthentication (:func:`usvc_mesh.authz.peer_authentication`): the mode
    decides the plain listener only (between sidecars there is no TLS to require).
    A replica's process serves one port, so the plain listener takes the
    workload's mode; a ``portLevelMtls`` that differs from it is reported.
    """
    objects = list(objects)
    authorized = authorization(objects, sidecar, None, namespace=namespace)
    mode, ports = peer_authentication(objects, sidecar, namespace=namespace)
    warnings = list(authorized.warnings)
    differing = sorted(port for port, port_mode in ports.items() if port_mode != mode)
    if differing:
        warnings.append(
            f"PeerAuthentication portLevelMtls for {sidecar.workload} (ports "
            f"{', '.join(map(str, differing))}) is not applied locally: each replica has one "
            f"plain listener, which takes the workload's mode {mode}"
        )
    return InboundPolicy(
        authorized.http_filters, refuses_plaintext(mode), tuple(dict.fromkeys(warnings))
    )
