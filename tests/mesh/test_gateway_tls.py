"""HTTPS Gateway servers through a real Envoy: certificates, SNI, client certificates.

istio.io Gateway reference (ServerTLSSettings) and the "Secure Gateways" task: an
HTTPS server terminates TLS with the certificate of its ``credentialName`` (a
``kubernetes.io/tls`` Secret) or of its ``serverCertificate``/``privateKey`` files,
``MUTUAL`` also verifies the client's; istiod matches each server by SNI on its hosts
(pilot/pkg/networking/core/gateway.go). Locally, a credential the manifests do not
hold is made at start, signed by a CA in the run directory.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import usvc_mesh as tr
from tests.mesh.conftest import Backend, Backends, deployment, istio, service, virtual_service
from tests.mesh.gateway_clients import Gateway, http_get, https_get, start_gateway
from tests.mesh.test_tls_origination import HOST, make_certificates


def secret(name: str, crt: Path, key: Path, ca: Path | None = None) -> dict[str, Any]:
    data = {"tls.crt": crt.read_bytes(), "tls.key": key.read_bytes()}
    if ca is not None:
        data["ca.crt"] = ca.read_bytes()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def objects(certs: tuple[Path, Path, Path]) -> list[dict[str, Any]]:
    _, crt, key = certs
    servers = [
        {
            "port": {"number": 80, "name": "http", "protocol": "HTTP"},
            "hosts": ["redirect.test"],
            "tls": {"httpsRedirect": True},
        },
        {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["plain.test"]},
        {
            "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["made.test", "redirect.test"],
            "tls": {"mode": "SIMPLE", "credentialName": "not-in-the-manifests"},
        },
        {
            "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": [HOST],
            "tls": {"mode": "SIMPLE", "credentialName": "secure-cert"},
        },
        {
            "port": {"number": 8443, "name": "https-mutual", "protocol": "HTTPS"},
            "hosts": ["*"],
            "tls": {"mode": "MUTUAL", "credentialName": "mutual-cert"},
        },
        {
            "port": {"number": 9443, "name": "https-files", "protocol": "HTTPS"},
            "hosts": [HOST],
            "tls": {
                "mode": "SIMPLE",
                "serverCertificate": str(crt),
                "privateKey": str(key),
                "minProtocolVersion": "TLSV1_3",
            },
        },
    ]
    return [
        deployment("web", app="web"),
        service("web", {"app": "web"}),
        secret("secure-cert", crt, key),
        istio("Gateway", "edge", {"selector": {"istio": "ingressgateway"}, "servers": servers}),
        virtual_service(
            "web", ["*"], [{"route": [{"destination": {"host": "web"}}]}], gateways=["edge"]
        ),
    ]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def web(backends: Backends) -> Backend:
    return backends.add(Backend("web"))


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, web: Backend, certs: tuple[Path, Path, Path]
) -> Iterator[Gateway]:
    running = start_gateway(
        tmp_path_factory.mktemp("gateway"),
        objects(certs),
        endpoints={"web": ("127.0.0.1", web.port)},
    )
    yield running
    running.stop()


@pytest.mark.slow
def test_each_server_port_gets_its_own_local_listener(gateway: Gateway) -> None:
    assert sorted(gateway.ports) == [80, 443, 8443, 9443]
    assert [g.server_port for g in gateway.made.listeners] == [80, 443, 8443, 9443]
    assert http_get(gateway.ports[80], headers={"Host": "plain.test"}).status == 200


@pytest.mark.slow
def test_a_locally_made_certificate_answers_with_the_printed_ca(
    gateway: Gateway, web: Backend
) -> None:
    assert gateway.made.ca is not None
    web.reset()
    reply = https_get(gateway.ports[443], "made.test", gateway.made.ca)
    assert reply.status == 200
    assert web.seen[0]["headers"]["x-forwarded-proto"] == "https"
    key = gateway.made.ca.with_name("ca.key")
    assert key.stat().st_mode & 0o777 == 0o600
    assert any("not-in-the-manifests" in note for note in gateway.made.notes)


@pytest.mark.slow
def test_the_secret_named_by_credential_name_is_the_served_certificate(
    gateway: Gateway, certs: tuple[Path, Path, Path]
) -> None:
    ca, _, _ = certs
    assert https_get(gateway.ports[443], HOST, ca).status == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        # the locally made CA did not sign the Secret's certificate
        assert gateway.made.ca is not None
        https_get(gateway.ports[443], HOST, gateway.made.ca)


@pytest.mark.slow
def test_an_sni_no_server_names_is_refused(gateway: Gateway) -> None:
    assert gateway.made.ca is not None
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(gateway.ports[443], "other.test", gateway.made.ca)


@pytest.mark.slow
def test_mutual_refuses_a_client_without_a_certificate(gateway: Gateway) -> None:
    assert gateway.made.ca is not None
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(gateway.ports[8443], "localhost", gateway.made.ca)


@pytest.mark.slow
def test_mutual_accepts_the_client_certificate_signed_by_the_trusted_ca(gateway: Gateway) -> None:
    assert gateway.made.ca is not None and gateway.made.client is not None
    reply = https_get(gateway.ports[8443], "localhost", gateway.made.ca, cert=gateway.made.client)
    assert reply.status == 200


@pytest.mark.slow
def test_certificate_files_and_min_protocol_version(
    gateway: Gateway, certs: tuple[Path, Path, Path]
) -> None:
    ca, _, _ = certs
    assert https_get(gateway.ports[9443], HOST, ca).status == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(gateway.ports[9443], HOST, ca, max_version=ssl.TLSVersion.TLSv1_2)


@pytest.mark.slow
def test_https_redirect_sends_the_client_to_the_local_https_port(gateway: Gateway) -> None:
    reply = http_get(gateway.ports[80], "/a?b=c", headers={"Host": "redirect.test"})
    assert reply.status == 301
    assert reply.headers["location"] == f"https://redirect.test:{gateway.ports[443]}/a?b=c"
    assert gateway.made.ca is not None
    assert https_get(gateway.ports[443], "redirect.test", gateway.made.ca, path="/a").status == 200


@pytest.mark.slow
def test_a_mutual_secret_with_ca_crt_verifies_clients_with_it(
    tmp_path: Path, web: Backend, certs: tuple[Path, Path, Path]
) -> None:
    ca, crt, key = certs
    servers = [
        {
            "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": [HOST],
            "tls": {
                "mode": "MUTUAL",
                "credentialName": "with-ca",
                "subjectAltNames": [HOST],
            },
        }
    ]
    gateway_objects = [
        *objects(certs)[:2],
        secret("with-ca", crt, key, ca),
        istio("Gateway", "edge", {"selector": {"istio": "ingressgateway"}, "servers": servers}),
        objects(certs)[-1],
    ]
    running = start_gateway(tmp_path, gateway_objects, endpoints={"web": ("127.0.0.1", web.port)})
    try:
        # the test's server certificate doubles as a client certificate for HOST
        port = running.ports[443]
        assert https_get(port, HOST, ca, cert=(crt, key)).status == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_get(port, HOST, ca)
    finally:
        running.stop()


# -- what is refused, and why (no Envoy needed) ------------------------------------------


def _translate(tls: dict[str, Any], protocol: str = "HTTPS") -> tr.Translation:
    server = {"port": {"number": 443, "name": "https", "protocol": protocol}, "hosts": ["*"]}
    server["tls"] = tls
    return tr.translate([istio("Gateway", "edge", {"servers": [server]})], endpoints={})


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("PASSTHROUGH", "VirtualService tls routes"),
        ("AUTO_PASSTHROUGH", "VirtualService tls routes"),
        ("ISTIO_MUTUAL", "workload certificates"),
    ],
)
def test_modes_the_local_mesh_cannot_apply_are_refused_with_the_reason(
    mode: str, reason: str
) -> None:
    with pytest.raises(tr.UnsupportedField, match=rf"servers\[0\]\.tls\.mode {mode}.*{reason}"):
        _translate({"mode": mode, "credentialName": "x"})


@pytest.mark.parametrize("key", ["tlsCertificates", "insecureSkipVerify"])
def test_tls_fields_not_applied_are_reported(key: str) -> None:
    with pytest.raises(tr.UnsupportedField, match=rf"tls\.{key} is an Istio field the local"):
        _translate({"mode": "SIMPLE", "credentialName": "x", key: True})


def test_a_certificate_file_missing_here_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"serverCertificate '/nowhere/tls.crt' is not a file"):
        _translate({"mode": "SIMPLE", "serverCertificate": "/nowhere/tls.crt", "privateKey": "/k"})


def test_an_https_server_needs_a_mode_and_an_http_one_takes_redirect_only() -> None:
    with pytest.raises(ValueError, match=r"servers\[0\]\.tls\.mode is required"):
        _translate({"credentialName": "x"})
    with pytest.raises(ValueError, match=r"takes httpsRedirect only"):
        _translate({"mode": "SIMPLE", "credentialName": "x"}, protocol="HTTP")


def test_http_and_https_on_one_port_is_refused() -> None:
    servers = [
        {"port": {"number": 443, "name": "http", "protocol": "HTTP"}, "hosts": ["a.test"]},
        {
            "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["b.test"],
            "tls": {"mode": "SIMPLE", "credentialName": "x"},
        },
    ]
    with pytest.raises(ValueError, match=r"one port serves one protocol"):
        tr.translate([istio("Gateway", "edge", {"servers": servers})], endpoints={})


def test_two_https_servers_with_the_same_sni_on_one_port_are_refused() -> None:
    server = {
        "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
        "hosts": ["a.test"],
        "tls": {"mode": "SIMPLE", "credentialName": "x"},
    }
    with pytest.raises(tr.UnsupportedField, match=r"the hosts \(SNI\) of another HTTPS server"):
        tr.translate([istio("Gateway", "edge", {"servers": [server, server]})], endpoints={})
