"""usvc-mesh: Kubernetes Deployments and Istio objects, run off-cluster behind one real Envoy.

In the local run mode every workload is a local process and one Envoy stands
in for Istio's ingress gateway and for every sidecar:

- the gateway listener (``127.0.0.1:8080`` by default) carries the
  VirtualServices bound to Gateway objects;
- the outbound listener is every workload's HTTP proxy (aiohttp ``proxy=``):
  it routes absolute-form requests by host as a sidecar would, with the
  VirtualServices bound to ``mesh`` and istiod's defaults elsewhere;
- clusters are named ``outbound|PORT|SUBSET|FQDN`` as in istiod.

This module is the translator's API::

    import usvc_mesh as mesh

    translation = mesh.translate(objects, endpoints={"middle-prod": ("127.0.0.1", 9102)},
                                 externals={"worldtimeapi.org": ("127.0.0.1", 9200)})
    ports = mesh.MeshPorts(gateway=8080, outbound=15001, admin=15000)
    mesh.write(config_dir, translation)                   # xDS files, atomically
    path = mesh.write_bootstrap(config_dir, ports,        # bootstrap.json; or mesh.bootstrap()
                                collector=None, access_log=None, sampling=100.0)
    mesh.validate(config_dir)                             # envoy --mode validate
    subprocess.Popen(mesh.envoy_command(path))            # envoy -c path --disable-hot-restart ...
    mesh.write(config_dir, mesh.translate(other_rules, ...))  # hot switch, no restart
    mesh.wait_applied(("127.0.0.1", 15000), new_translation)

Files in ``config_dir``: ``bootstrap.json`` (static: admin, the two listeners,
the trace collector cluster), ``cds.json`` and ``rds-gateway.json`` /
``rds-outbound.json`` (what :func:`write` replaces). Envoy needs the xDS files
to exist when it starts, so call :func:`write` (or :func:`write_bootstrap`,
which writes empty ones) first.

``translate`` is pure and raises :class:`UnsupportedField` (a ValueError) for
any field the local mesh cannot honour or Istio does not define, and
ValueError for other mistakes (a subset no DestinationRule defines, a bad
duration, weights adding up to 0); each message names the object and the
field. ``validate`` raises :class:`EnvoyConfigError` with Envoy's own message.

:mod:`usvc_mesh.supervisor` runs the processes and Envoy (``usvc up``);
:mod:`usvc_mesh.manifests` says what it reads from the manifests;
:mod:`usvc_mesh.validation` is the one Istio validator (Istio's schema, its CEL and
webhook rules, the kinds the local mesh does not apply; docs/istio-validation.md).
"""

from .envoy import (
    BOOTSTRAP_FILE,
    CDS_FILE,
    RDS_FILES,
    EnvoyConfigError,
    MeshPorts,
    admin_stats,
    applied,
    bootstrap,
    envoy_binary,
    envoy_command,
    runs_versions,
    static_config,
    validate,
    versions,
    wait_applied,
    write,
    write_bootstrap,
)
from .spec import UnsupportedField
from .translation import GATEWAY_ROUTES, OUTBOUND_ROUTES, Translation, translate

__all__ = [
    "BOOTSTRAP_FILE",
    "CDS_FILE",
    "GATEWAY_ROUTES",
    "OUTBOUND_ROUTES",
    "RDS_FILES",
    "EnvoyConfigError",
    "MeshPorts",
    "Translation",
    "UnsupportedField",
    "admin_stats",
    "applied",
    "bootstrap",
    "envoy_binary",
    "envoy_command",
    "runs_versions",
    "static_config",
    "translate",
    "validate",
    "versions",
    "wait_applied",
    "write",
    "write_bootstrap",
]
