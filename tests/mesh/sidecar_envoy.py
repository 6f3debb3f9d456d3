"""A small real Envoy in the sidecar shape, for inbound-listener filters (RBAC, mTLS modes).

One static configuration, built here (no translator): per caller, an HTTP listener on
loopback that stamps the caller's identity as the filter state ``usvc.peer_principal``
(``envoy.filters.http.set_filter_state``, ``envoy.string``, shared with the upstream
connection ONCE) and routes by Host to a target's cluster; each target's cluster has
one endpoint, an internal listener (``envoy.bootstrap.internal_listener``,
``envoy_internal_address``, transport socket ``envoy.transport_sockets.internal_upstream``)
carrying the target's inbound HTTP filters, which forwards to a real aiohttp backend on
127.0.0.1. Each target also has a plain TCP listener on loopback (the pod address a
client outside the mesh uses) with the same filters and no principal.

envoyproxy.io: Internal listener (configuration/other_features/internal_listener),
set_filter_state (configuration/http/http_filters/set_filter_state_filter).

Usage::

    with SidecarEnvoy(tmp_path, backends, callers={"front": "spiffe://..."},
                      targets=[Target("core", rbac_filters(...))]) as envoy:
        envoy.call("front", "core", "/").status  # through front's outbound listener
        envoy.plain("core", "/")                 # straight to core's plain listener
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import usvc_mesh as mesh
from usvc_mesh.authz import PEER_PRINCIPAL, PRINCIPAL_FACTORY
from usvc_mesh.envoy import static_cluster
from usvc_mesh.procs import free_port

from .conftest import Backend, Backends, await_envoy, stop_envoy

TARGET_HEADER = "x-target"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


@dataclass
class Target:
    """A workload behind an inbound internal listener and a plain TCP listener."""

    name: str
    http_filters: Sequence[Mapping[str, Any]] = ()
    # The plain listener's filter chain match (authz.PLAINTEXT_REFUSED_CHAIN_MATCH for STRICT).
    plain_chain_match: Mapping[str, Any] | None = None
    backend: Backend | None = None
    plain_port: int = 0


@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


# An access line per request at an inbound listener: the path, the status, and
# whether an RBAC LOG (AUDIT) policy matched (envoy.common access_log_hint).
ACCESS_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% %DYNAMIC_METADATA(envoy.common:access_log_hint)%\n"


def _hcm(
    name: str,
    http_filters: Sequence[Mapping[str, Any]],
    routes: list[Any],
    access_log: Path | None = None,
) -> Any:
    config: dict[str, Any] = {
        "@type": f"{_HCM}.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"name": name, "virtual_hosts": routes},
        "http_filters": [*http_filters, _ROUTER],
    }
    if access_log is not None:
        config["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                    "FileAccessLog",
                    "path": str(access_log),
                    "log_format": {"text_format_source": {"inline_string": ACCESS_FORMAT}},
                },
            }
        ]
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def _to(cluster: str, domains: list[str]) -> dict[str, Any]:
    return {
        "name": cluster,
        "domains": domains,
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
    }


def _principal_filter(principal: str, factory: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": [
                {
                    "object_key": PEER_PRINCIPAL,
                    "factory_key": factory,
                    "format_string": {"text_format_source": {"inline_string": principal}},
                    "shared_with_upstream": "ONCE",
                }
            ],
        },
    }


def config(
    admin: int,
    callers: Mapping[str, tuple[int, str | None]],
    targets: Sequence[Target],
    factory: str = PRINCIPAL_FACTORY,
    logs: Path | None = None,
) -> dict[str, Any]:
    """The static Envoy configuration (``callers``: name -> (port, principal or None)).

    ``factory`` makes the principal's filter state object (``envoy.string`` shows why
    it must be hashable).
    """
    listeners: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    # By the x-target header (so a test may send any Host), else by Host.
    routes = [
        {
            "name": "targets",
            "domains": ["*"],
            "routes": [
                {
                    "match": {"prefix": "/", "headers": [header]},
                    "route": {"cluster": f"mesh-{t.name}"},
                }
                for t in targets
                for header in (
                    {"name": TARGET_HEADER, "string_match": {"exact": t.name}},
                    {"name": ":authority", "string_match": {"exact": t.name}},
                )
            ],
        }
    ]
    for name, (port, principal) in callers.items():
        stamp = [_principal_filter(principal, factory)] if principal else []
        listeners.append(
            {
                "name": f"outbound-{name}",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "enable_reuse_port": False,
                "filter_chains": [{"filters": [_hcm(f"outbound-{name}", stamp, routes)]}],
            }
        )
    for target in targets:
        assert target.backend is not None
        app = f"app-{target.name}"
        clusters.append(static_cluster(app, "127.0.0.1", target.backend.port))
        inbound = f"inbound-{target.name}"
        clusters.append(
            {
                "name": f"mesh-{target.name}",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": f"mesh-{target.name}",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "envoy_internal_address": {
                                                "server_listener_name": inbound
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
                "transport_socket": {
                    "name": "envoy.transport_sockets.internal_upstream",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets."
                        "internal_upstream.v3.InternalUpstreamTransport",
                        "transport_socket": {
                            "name": "envoy.transport_sockets.raw_buffer",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions."
                                "transport_sockets.raw_buffer.v3.RawBuffer"
                            },
                        },
                    },
                },
            }
        )
        log = logs / f"{inbound}.log" if logs is not None else None
        chain = [_hcm(inbound, target.http_filters, [_to(app, ["*"])], log)]
        listeners.append(
            {"name": inbound, "internal_listener": {}, "filter_chains": [{"filters": chain}]}
        )
        plain: dict[str, Any] = {
            "filters": [_hcm(f"plain-{target.name}", target.http_filters, [_to(app, ["*"])])]
        }
        if target.plain_chain_match is not None:
            plain["filter_chain_match"] = dict(target.plain_chain_match)
        listeners.append(
            {
                "name": f"plain-{target.name}",
                "address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": target.plain_port}
                },
                "enable_reuse_port": False,
                "filter_chains": [plain],
            }
        )
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap."
                    "internal_listener.v3.InternalListener"
                },
            }
        ],
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


class SidecarEnvoy:
    """The Envoy of :func:`config`, running; a context manager that stops it."""

    def __init__(
        self,
        scratch: Path,
        backends: Backends,
        callers: Mapping[str, str | None],
        targets: Sequence[Target],
        *,
        factory: str = PRINCIPAL_FACTORY,
    ) -> None:
        self.scratch = scratch
        self.callers = {name: (free_port(), principal) for name, principal in callers.items()}
        self.targets = {t.name: t for t in targets}
        for target in targets:
            if target.backend is None:
                existing = backends.by_name.get(target.name)
                target.backend = existing or backends.add(Backend(target.name))
            target.plain_port = free_port()
        self.admin = free_port()
        self.document = config(self.admin, self.callers, targets, factory, scratch)
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SidecarEnvoy:
        path = self.scratch / "sidecar-envoy.json"
        path.write_text(json.dumps(self.document, indent=1))
        self.log = self.scratch / "sidecar-envoy.log"
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                mesh.envoy_command(path, log_flush_ms=100), stdout=output, stderr=output
            )
        try:
            await_envoy(self.process, self.admin, self.log, timeout=15)
        except RuntimeError:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.process is None:
            return
        stop_envoy(self.process)

    def call(
        self,
        caller: str,
        target: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        host: str | None = None,
    ) -> Reply:
        """A request through ``caller``'s outbound listener to ``target``'s inbound listener."""
        port, _ = self.callers[caller]
        return _request(
            port, host or target, path, method, {TARGET_HEADER: target, **(headers or {})}
        )

    def plain(
        self,
        target: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """A plaintext request straight to ``target``'s plain TCP listener (no principal)."""
        return _request(self.targets[target].plain_port, target, path, method, headers)

    def access_lines(self, target: str, count: int) -> list[str]:
        """The first ``count`` access lines of ``target``'s inbound listener (Envoy flushes
        them every 100 ms: waits up to 10 s for them)."""
        path = self.scratch / f"inbound-{target}.log"
        deadline = time.monotonic() + 10
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= count or time.monotonic() > deadline:
                return lines[:count]
            time.sleep(0.05)

    def stats(self, prefix: str) -> dict[str, int]:
        """The counters and gauges matching ``prefix`` (not text readouts or histograms)."""
        found = mesh.admin_stats(("127.0.0.1", self.admin), f"filter={prefix}")
        return {name: int(value) for name, value in found.items() if value.isdigit()}


def _request(
    port: int, host: str, path: str, method: str, headers: Mapping[str, str] | None
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        body = response.read().decode()
        return Reply(response.status, body, {k.lower(): v for k, v in response.getheaders()})
    finally:
        connection.close()


def refused(port: int) -> bool:
    """Whether a plaintext HTTP request to 127.0.0.1:``port`` gets no response at all.

    The connection is accepted by the kernel and closed by Envoy (no filter chain
    matches): the client reads end-of-file or a reset, never a status line.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            return sock.recv(1024) == b""
        except ConnectionResetError:
            return True
