"""Each ServerTLSSettings field an HTTPS Gateway server applies, live through Envoy.

istio.io Gateway reference, ServerTLSSettings: ``OPTIONAL_MUTUAL`` asks for a client
certificate and accepts a client without one; ``caCertificates`` are the CAs a MUTUAL
server trusts; ``verifyCertificateHash`` / ``verifyCertificateSpki`` / ``subjectAltNames``
narrow the client certificates accepted; ``caCrl`` revokes some;
``min``/``maxProtocolVersion`` and ``cipherSuites`` bound the handshake. Each maps to
Envoy's DownstreamTlsContext (envoyproxy.io: CommonTlsContext, CertificateValidationContext,
TlsParameters).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.mesh.conftest import Backend, Backends, deployment, istio, service, virtual_service
from tests.mesh.gateway_clients import Gateway, https_get, start_gateway
from tests.mesh.test_tls_origination import HOST, make_certificates

pytestmark = pytest.mark.slow
REFUSED = (ssl.SSLError, ConnectionError)


def fingerprint(cert: Path) -> str:
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A client certificate no CA of the test signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / "stranger.crt", directory / "stranger.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def revoking(directory: Path, ca: Path, revoked: Path) -> Path:
    """A CRL signed by the test CA that revokes ``revoked``."""
    authority = x509.load_pem_x509_certificate(ca.read_bytes())
    key: Any = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    serial = x509.load_pem_x509_certificate(revoked.read_bytes()).serial_number
    now = datetime.datetime.now(datetime.UTC)
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(now - datetime.timedelta(minutes=1))
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=1))
        .add_revoked_certificate(entry)
        .sign(key, hashes.SHA256())
    )
    path = directory / "revoked.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certificates(tmp_path_factory.mktemp("certs"))


SERVERS: dict[int, dict[str, Any]] = {
    1: {"mode": "OPTIONAL_MUTUAL"},
    2: {"mode": "MUTUAL", "verifyCertificateHash": ["00" * 32]},
    3: {"mode": "MUTUAL", "verifyCertificateHash": ["RIGHT"]},
    4: {"mode": "MUTUAL", "verifyCertificateSpki": [base64.b64encode(b"\0" * 32).decode()]},
    5: {"mode": "MUTUAL", "subjectAltNames": ["other.test"]},
    6: {"mode": "SIMPLE", "maxProtocolVersion": "TLSV1_2"},
    7: {
        "mode": "SIMPLE",
        "maxProtocolVersion": "TLSV1_2",
        "cipherSuites": ["ECDHE-RSA-AES256-GCM-SHA384"],
    },
    8: {"mode": "MUTUAL", "caCrl": "CRL"},
}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, backends: Backends, certs: tuple[Path, Path, Path]
) -> Iterator[Gateway]:
    ca, crt, key = certs
    web = backends.add(Backend("web"))
    crl = revoking(ca.parent, ca, crt)
    servers = []
    for number, settings in SERVERS.items():
        tls: dict[str, Any] = {"serverCertificate": str(crt), "privateKey": str(key), **settings}
        if tls["mode"] != "SIMPLE":
            tls["caCertificates"] = str(ca)
        if tls.get("verifyCertificateHash") == ["RIGHT"]:
            tls["verifyCertificateHash"] = [fingerprint(crt)]
        if tls.get("caCrl") == "CRL":
            tls["caCrl"] = str(crl)
        servers.append(
            {
                "port": {"number": 9000 + number, "name": f"https-{number}", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": tls,
            }
        )
    objects = [
        deployment("web", app="web"),
        service("web", {"app": "web"}),
        istio("Gateway", "edge", {"selector": {"istio": "ingressgateway"}, "servers": servers}),
        virtual_service(
            "web", ["*"], [{"route": [{"destination": {"host": "web"}}]}], gateways=["edge"]
        ),
    ]
    running = start_gateway(
        tmp_path_factory.mktemp("settings"), objects, endpoints={"web": ("127.0.0.1", web.port)}
    )
    yield running
    running.stop()


def get(gateway: Gateway, server: int, ca: Path, **options: Any) -> int:
    return https_get(gateway.ports[9000 + server], HOST, ca, **options).status


def test_optional_mutual_accepts_a_client_with_or_without_a_trusted_certificate(
    gateway: Gateway, certs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ca, crt, key = certs
    assert get(gateway, 1, ca) == 200
    assert get(gateway, 1, ca, cert=(crt, key)) == 200
    with pytest.raises(REFUSED):
        get(gateway, 1, ca, cert=self_signed(tmp_path))


def test_ca_certificates_decide_which_client_certificates_a_mutual_server_trusts(
    gateway: Gateway, certs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ca, crt, key = certs
    assert get(gateway, 3, ca, cert=(crt, key)) == 200
    with pytest.raises(REFUSED):
        get(gateway, 3, ca, cert=self_signed(tmp_path))


def test_verify_certificate_hash_accepts_only_the_named_certificate(
    gateway: Gateway, certs: tuple[Path, Path, Path]
) -> None:
    ca, crt, key = certs
    assert get(gateway, 3, ca, cert=(crt, key)) == 200
    with pytest.raises(REFUSED):
        get(gateway, 2, ca, cert=(crt, key))


def test_verify_certificate_spki_refuses_another_key(
    gateway: Gateway, certs: tuple[Path, Path, Path]
) -> None:
    ca, crt, key = certs
    with pytest.raises(REFUSED):
        get(gateway, 4, ca, cert=(crt, key))


def test_subject_alt_names_refuse_a_client_certificate_for_another_name(
    gateway: Gateway, certs: tuple[Path, Path, Path]
) -> None:
    ca, crt, key = certs
    with pytest.raises(REFUSED):
        get(gateway, 5, ca, cert=(crt, key))


def test_max_protocol_version_refuses_a_tls_1_3_only_client(
    gateway: Gateway, certs: tuple[Path, Path, Path]
) -> None:
    ca, _, _ = certs
    assert get(gateway, 6, ca) == 200
    with pytest.raises(REFUSED):
        get(gateway, 6, ca, min_version=ssl.TLSVersion.TLSv1_3)


def test_cipher_suites_refuse_a_client_offering_none_of_them(
    gateway: Gateway, certs: tuple[Path, Path, Path]
) -> None:
    ca, _, _ = certs
    assert get(gateway, 7, ca, ciphers="ECDHE-RSA-AES256-GCM-SHA384") == 200
    with pytest.raises(REFUSED):
        get(gateway, 7, ca, ciphers="ECDHE-RSA-AES128-GCM-SHA256")


def test_ca_crl_refuses_a_revoked_client_certificate(
    gateway: Gateway, certs: tuple[Path, Path, Path]
) -> None:
    ca, crt, key = certs
    with pytest.raises(REFUSED):
        get(gateway, 8, ca, cert=(crt, key))
