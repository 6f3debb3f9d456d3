"""Meshes of N services for the scaling benchmark (``--suite scale``).

Service ``svc-I`` (I = 0 … N-1) is the Bookinfo shape (istio.io "Bookinfo Application"):

- two Deployments, ``svc-I-v1`` and ``svc-I-v2``, whose pods carry ``app: svc-I`` and
  ``version: v1`` / ``v2``, no readiness probe (so the local mesh's stand-in for the kubelet's
  probe is a TCP health check by Envoy, every 10 s, in each of the service's three clusters);
- a Service ``svc-I`` selecting ``app: svc-I``, one HTTP port 80;
- a DestinationRule with the subsets ``v1`` and ``v2`` by the ``version`` label;
- a VirtualService on the mesh: requests with ``x-canary: "true"`` go to ``v2``, the rest
  are split 80/20 between ``v1`` and ``v2`` (``flipped``: 20/80, the hot switch's change).

Every object passes the project's Istio validator (:func:`usvc_mesh.validation.validate_objects`),
so what the benchmark times is the real translation of a valid mesh.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "scale"
PORT = 80
CANARY_HEADER = "x-canary"
VERSIONS = ("v1", "v2")


def service_name(index: int) -> str:
    return f"svc-{index}"


def host(index: int) -> str:
    """The host a client in the mesh asks for (absolute-form through the outbound proxy)."""
    return f"{service_name(index)}.{NAMESPACE}.svc.cluster.local"


def deployment(index: int, version: str) -> dict[str, Any]:
    name = service_name(index)
    labels = {"app": name, "version": version}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-{version}", "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "localhost:5000/scale/app:0.1.0",
                            "command": ["python", "-m", "bench.server", "bare"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
        },
    }


def service(index: int) -> dict[str, Any]:
    name = service_name(index)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "selector": {"app": name},
            "ports": [
                {
                    "name": "http",
                    "port": PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def destination_rule(index: int) -> dict[str, Any]:
    name = service_name(index)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "host": name,
            "subsets": [{"name": v, "labels": {"version": v}} for v in VERSIONS],
        },
    }


def virtual_service(index: int, *, flipped: bool = False) -> dict[str, Any]:
    name = service_name(index)
    v1, v2 = (20, 80) if flipped else (80, 20)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "name": "canary",
                    "match": [{"headers": {CANARY_HEADER: {"exact": "true"}}}],
                    "route": [{"destination": {"host": name, "subset": "v2"}}],
                },
                {
                    "name": "split",
                    "route": [
                        {"destination": {"host": name, "subset": "v1"}, "weight": v1},
                        {"destination": {"host": name, "subset": "v2"}, "weight": v2},
                    ],
                },
            ],
        },
    }


def generate(count: int, *, flipped: bool = False) -> list[dict[str, Any]]:
    """The objects of a mesh of ``count`` services, as ``yaml.safe_load_all`` would give them."""
    objects: list[dict[str, Any]] = []
    for index in range(count):
        objects += [deployment(index, v) for v in VERSIONS]
        objects += [service(index), destination_rule(index)]
        objects.append(virtual_service(index, flipped=flipped))
    return objects


def endpoints(count: int, address: tuple[str, int]) -> dict[str, tuple[str, int]]:
    """Every Deployment of the mesh served by the one process at ``address``."""
    return {
        f"{service_name(index)}-{version}": address
        for index in range(count)
        for version in VERSIONS
    }
