"""The shape Istio gives a pod, inside the one local Envoy: a sidecar per workload.

In a cluster every pod has its own Envoy: an outbound side that its calls are
redirected to, and an inbound side in front of the application. Locally one
Envoy process plays every sidecar, so each workload (Deployment) gets

- its **own outbound listener**, on the port in its ``EGRESS_PROXY``: the
  mesh knows who calls, and Envoy's spans and access lines name the caller;
- per replica, an **inbound listener** in front of the process: mesh clusters'
  endpoints are the inbound listeners, each of which forwards to its replica's
  application port (the cluster ``inbound|PORT||INSTANCE``, Istio's
  ``inbound|PORT||`` made unique per replica, since the replicas share one Envoy).

Both are loopback sockets, as a pod's are: a hop costs one more connection
through Envoy, which is what it costs in a cluster too.

Envoy's active health checks (the readiness probe, :mod:`usvc_mesh.clusters`)
go straight to the application port (the endpoint's ``health_check_config``),
as the kubelet probes the application and not its sidecar.

A workload's identity is its Deployment's service account
(``spec.template.spec.serviceAccountName``, Kubernetes' default ``default``):
the SPIFFE principal ``cluster.local/ns/NS/sa/SA``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TRUST_DOMAIN = "cluster.local"
INBOUND_HOST = "127.0.0.1"  # where every inbound listener listens
# Istio's ingress gateway: the `istio-ingress` namespace of Istio's gateway chart.
GATEWAY_NAMESPACE = "istio-ingress"
GATEWAY_SERVICE_ACCOUNT = "istio-ingressgateway"
GATEWAY_SERVICE = "istio-ingressgateway"


def principal(namespace: str, service_account: str) -> str:
    """The SPIFFE identity of a service account, as AuthorizationPolicy ``principals`` name it."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class Inbound:
    """One replica: its inbound listener's port and its process's address."""

    instance: str  # "front-1", the pod's name
    port: int  # the inbound listener
    app: tuple[str, int]  # where the replica's process listens

    @property
    def cluster(self) -> str:
        return f"inbound|{self.app[1]}||{self.instance}"


@dataclass(frozen=True)
class Sidecar:
    """One workload's sidecar: an outbound listener and one inbound listener per replica."""

    workload: str  # the Deployment's name
    namespace: str
    service_account: str
    labels: dict[str, str] = field(default_factory=dict)
    outbound: int = 0  # the port of its outbound listener (its EGRESS_PROXY)
    inbounds: tuple[Inbound, ...] = ()

    @property
    def principal(self) -> str:
        return principal(self.namespace, self.service_account)

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
        """The tags istiod adds to each span of a sidecar (pilot/pkg/networking/core/tracing.go)."""
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
