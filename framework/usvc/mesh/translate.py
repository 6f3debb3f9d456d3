"""Istio objects -> the one local Envoy: the public API of the translator.

Import the module, not the function (``usvc.mesh.translate`` is this module)::

    from usvc.mesh import translate as tr

    translation = tr.translate(objects, endpoints={"middle-prod": ("127.0.0.1", 9102)},
                               externals={"worldtimeapi.org": ("127.0.0.1", 9200)})
    ports = tr.MeshPorts(gateway=8080, outbound=15001, admin=15000)
    tr.write(config_dir, translation)                   # xDS files, atomically
    path = tr.write_bootstrap(config_dir, ports,        # bootstrap.json; or tr.bootstrap() -> dict
                              zipkin=None, access_log=None, sampling=100.0, w3c=False)
    tr.validate(config_dir)                             # envoy --mode validate
    subprocess.Popen(tr.envoy_command(path))            # envoy -c path --disable-hot-restart ...
    tr.write(config_dir, tr.translate(other_rules, ...))  # hot switch, no restart
    tr.wait_applied(("127.0.0.1", 15000), new_translation)

Files in ``config_dir``: ``bootstrap.json`` (static: admin, the two listeners,
the Zipkin collector cluster), ``cds.json`` and ``rds-gateway.json`` /
``rds-outbound.json`` (what :func:`write` replaces). Envoy needs the xDS files
to exist when it starts, so call :func:`write` (or :func:`write_bootstrap`,
which writes empty ones) first.

``translate`` is pure and raises :class:`UnsupportedField` (a ValueError) for
any field the local mesh cannot honour or Istio does not define, and
ValueError for other mistakes (a subset no DestinationRule defines, a bad
duration, weights adding up to 0); each message names the object and the
field. ``validate`` raises :class:`EnvoyConfigError` with Envoy's own message.
"""

from .envoy import (
    BOOTSTRAP_FILE,
    CDS_FILE,
    RDS_FILES,
    EnvoyConfigError,
    MeshPorts,
    applied,
    bootstrap,
    envoy_binary,
    envoy_command,
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
    "applied",
    "bootstrap",
    "envoy_binary",
    "envoy_command",
    "static_config",
    "translate",
    "validate",
    "versions",
    "wait_applied",
    "write",
    "write_bootstrap",
]
