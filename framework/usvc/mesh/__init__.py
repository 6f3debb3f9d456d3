"""The local mesh: the Istio objects of a cluster, applied by one local Envoy.

In the local run mode every workload is a local process and one Envoy stands
in for Istio's ingress gateway and for every sidecar:

- the gateway listener (``127.0.0.1:8080`` by default) carries the
  VirtualServices bound to Gateway objects;
- the outbound listener is every workload's HTTP proxy (aiohttp ``proxy=``):
  it routes absolute-form requests by host as a sidecar would, with the
  VirtualServices bound to ``mesh`` and istiod's defaults elsewhere;
- clusters are named ``outbound|PORT|SUBSET|FQDN`` as in istiod.

:mod:`usvc.mesh.translate` is the translator's API (the objects-to-config
translation and the Envoy files); :mod:`usvc.mesh.local` runs the chain.
``usvc.mesh.translate`` names that module, so the function is
``usvc.mesh.translate.translate``.
"""

from .translate import (
    EnvoyConfigError,
    MeshPorts,
    Translation,
    UnsupportedField,
    bootstrap,
    envoy_binary,
    envoy_command,
    validate,
    wait_applied,
    write,
    write_bootstrap,
)

__all__ = [
    "EnvoyConfigError",
    "MeshPorts",
    "Translation",
    "UnsupportedField",
    "bootstrap",
    "envoy_binary",
    "envoy_command",
    "validate",
    "wait_applied",
    "write",
    "write_bootstrap",
]
