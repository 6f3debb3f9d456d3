"""Clients for the local gateway's listeners (HTTPS with a chosen SNI), and an Envoy for them."""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import usvc_mesh as tr
from usvc_mesh import gateway_tls
from usvc_mesh.procs import free_port

from .conftest import Envoy, start_envoy, stop_envoy


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str


def https_get(
    port: int,
    sni: str | None,
    ca: Path | str,
    *,
    path: str = "/",
    host: str | None = None,
    cert: tuple[Path, Path] | None = None,
    headers: dict[str, str] | None = None,
    max_version: ssl.TLSVersion | None = None,
    min_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> Reply:
    """GET over TLS to 127.0.0.1:``port``, sending ``sni``, trusting only ``ca``.

    Raises ``ssl.SSLError`` or ``ConnectionError`` when the gateway refuses the
    handshake (no filter chain for the SNI, no client certificate, ...).
    """
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    if sni is None:
        context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    if max_version is not None:
        context.maximum_version = max_version
    if min_version is not None:
        context.minimum_version = min_version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = context.wrap_socket(raw, server_hostname=sni)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.sock = sock
        connection.request(
            "GET", path, headers={"Host": host or sni or "localhost", **(headers or {})}
        )
        response = connection.getresponse()
        body = response.read().decode()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        sock.close()


def http_get(port: int, path: str = "/", headers: dict[str, str] | None = None) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read().decode()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()


@dataclass
class Gateway:
    """A real Envoy whose gateway listeners are the Gateways' (ports, TLS, JWT)."""

    envoy: Envoy
    made: gateway_tls.Materialized
    ports: dict[int, int]  # Gateway server port -> local port

    def stop(self) -> None:
        stop_envoy(self.envoy)


def start_gateway(directory: Path, objects: list[dict[str, Any]], **translate: Any) -> Gateway:
    """Translate ``objects`` as the supervisor does and start Envoy on the result."""
    first = tr.translate(objects, **translate)
    ports = {listener.port: free_port() for listener in first.gateway_listeners}
    translation = tr.translate(objects, gateway_ports=ports, **translate)
    made = gateway_tls.materialize(
        translation.gateway_listeners,
        ports,
        "127.0.0.1",
        directory / "tls",
        http_filters=translation.gateway_filters,
    )
    envoy = start_envoy(directory / "envoy", translation, gateways=made.listeners)
    return Gateway(envoy, made, ports)
