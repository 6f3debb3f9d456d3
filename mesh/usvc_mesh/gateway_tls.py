"""Gateway servers -> the local gateway's listeners: one per distinct server port, TLS on HTTPS.

istiod builds one gateway listener per server port, and on an HTTPS port one filter
chain per server, matched by SNI on the server's hosts
(pilot/pkg/networking/core/gateway.go, buildGatewayListeners / createGatewayHTTPFilterChainOpts),
with a ``DownstreamTlsContext`` from the server's ``tls`` settings. This module reads
those settings (:func:`server_tls`), plans the listeners (:class:`GatewayListener`) and,
when the mesh starts, turns them into Envoy listener pieces with certificate files in the
run directory (:func:`materialize`).

Certificates, as istio.io's Gateway reference describes them:

- ``credentialName`` names a Kubernetes TLS Secret (``tls.crt``, ``tls.key``, and for
  MUTUAL ``ca.crt``, or a ``<name>-cacert`` Secret). When the manifests hold it, it is
  used; when they do not, a certificate for the server's hosts is made locally, signed by
  a CA kept in the run directory (reported as a warning: in a cluster the server would
  have no certificate).
- ``serverCertificate`` / ``privateKey`` / ``caCertificates`` / ``caCrl`` are file paths,
  used when the file exists on this machine, else an error.

Modes: SIMPLE, MUTUAL and OPTIONAL_MUTUAL are applied; PASSTHROUGH and
AUTO_PASSTHROUGH forward TLS by SNI to ``tls`` routes of VirtualServices, which the
local mesh does not apply, and ISTIO_MUTUAL needs the mesh's own workload certificates:
those three are refused with that reason.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import Spec, metadata_name, metadata_namespace

DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
APPLIED_MODES = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")
_BY_SNI = "it forwards TLS by SNI to VirtualService tls routes, which are not applied"
REFUSED_MODES = {
    "PASSTHROUGH": _BY_SNI,
    "AUTO_PASSTHROUGH": _BY_SNI,
    "ISTIO_MUTUAL": "it needs the mesh's own workload certificates, which the local mesh has not",
}
# istio.io Gateway ServerTLSSettings.TLSProtocol -> Envoy TlsParameters.TlsProtocol.
PROTOCOLS = {
    "TLS_AUTO": "TLS_AUTO",
    "TLSV1_0": "TLSv1_0",
    "TLSV1_1": "TLSv1_1",
    "TLSV1_2": "TLSv1_2",
    "TLSV1_3": "TLSv1_3",
}
# istiod: HTTPS gateway servers offer HTTP/2 and HTTP/1.1 (util.ALPNHttp).
ALPN_HTTP = ("h2", "http/1.1")
CA_FILE = "ca.crt"
CLIENT_FILES = ("client.crt", "client.key")


@dataclass(frozen=True)
class Pem:
    """Certificate or key material: ``text`` from a Secret, or a ``path`` on this machine."""

    text: str = ""
    path: str = ""


@dataclass(frozen=True)
class ServerTls:
    """One HTTPS server's TLS settings, as read (certificate files not written yet)."""

    mode: str
    hosts: tuple[str, ...]
    # None: made locally for ``hosts`` at start (no Secret of that name in the manifests).
    certificate: tuple[Pem, Pem] | None
    client_ca: Pem | None = None  # None with MUTUAL / OPTIONAL_MUTUAL: the local CA
    crl: Pem | None = None
    subject_alt_names: tuple[str, ...] = ()
    spki: tuple[str, ...] = ()
    hashes: tuple[str, ...] = ()
    min_version: str = ""
    max_version: str = ""
    ciphers: tuple[str, ...] = ()
    credential: str = ""  # the credentialName, for messages

    @property
    def verifies_clients(self) -> bool:
        return self.mode in ("MUTUAL", "OPTIONAL_MUTUAL")


@dataclass(frozen=True)
class FilterChain:
    """One server of a gateway port: its SNI names, its route configuration, its TLS."""

    server_names: tuple[str, ...]
    routes: str
    tls: ServerTls | None = None


@dataclass(frozen=True)
class GatewayListener:
    """The local gateway's listener for one Gateway server port number."""

    port: int
    name: str
    chains: tuple[FilterChain, ...]

    @property
    def https(self) -> bool:
        return any(chain.tls is not None for chain in self.chains)


@dataclass(frozen=True)
class LocalListener:
    """A :class:`GatewayListener` made concrete: where it listens, Envoy's TLS per chain."""

    name: str
    host: str
    port: int  # the local port
    server_port: int  # the Gateway's port number
    chains: tuple[tuple[tuple[str, ...], str, dict[str, Any] | None], ...]
    http_filters: tuple[dict[str, Any], ...] = ()  # before the listener's own (jwt_authn)

    @property
    def https(self) -> bool:
        return any(tls is not None for _, _, tls in self.chains)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}/"


@dataclass
class Materialized:
    """What :func:`materialize` made: the listeners, and the files a client needs."""

    listeners: list[LocalListener]
    ca: Path | None = None  # the local CA, when some certificate was made locally
    client: tuple[Path, Path] | None = None  # a client certificate, for MUTUAL servers
    notes: list[str] = field(default_factory=list)


# -- reading --------------------------------------------------------------------------


def server_tls(
    tls: Spec,
    mode: str,
    hosts: Sequence[str],
    secrets: Mapping[str, Mapping[str, Any]],
    namespace: str,
) -> ServerTls:
    """The TLS settings of an HTTPS server (``mode`` checked by the caller)."""
    if mode in REFUSED_MODES:
        raise tls.unsupported("mode", mode, REFUSED_MODES[mode])
    if mode not in APPLIED_MODES:
        raise tls.error("mode", f"must be one of {', '.join([*APPLIED_MODES, *REFUSED_MODES])}")
    credential = tls.text("credentialName") or ""
    credentials = tls.strings("credentialNames")
    if credential and credentials:
        raise tls.error("credentialNames", "and credentialName are mutually exclusive")
    if len(credentials) > 1:
        raise tls.unsupported(
            "credentialNames", credentials, "one certificate per server (an RSA and an ECDSA pair)"
        )
    credential = credential or (credentials[0] if credentials else "")
    files = [tls.has(key) for key in ("serverCertificate", "privateKey")]
    if credential and any(files):
        raise tls.error("credentialName", "and serverCertificate/privateKey are mutually exclusive")
    certificate: tuple[Pem, Pem] | None = None
    client_ca: Pem | None = None
    verifies = mode in ("MUTUAL", "OPTIONAL_MUTUAL")
    if credential:
        secret = _secret(secrets, credential, namespace)
        if secret is not None:
            certificate = (
                Pem(_secret_text(tls, secret, credential, "tls.crt")),
                Pem(_secret_text(tls, secret, credential, "tls.key")),
            )
            if verifies and _secret_value(secret, "ca.crt"):
                client_ca = Pem(_secret_text(tls, secret, credential, "ca.crt"))
    elif all(files):
        certificate = (
            _local_file(tls, "serverCertificate"),
            _local_file(tls, "privateKey"),
        )
    elif any(files):
        raise tls.error("privateKey" if files[0] else "serverCertificate", "is required too")
    else:
        raise tls.error(
            "credentialName", f"(or serverCertificate and privateKey) is required for {mode}"
        )
    ca_name = tls.text("caCertCredentialName") or ""
    if ca_name:
        secret = _secret(secrets, ca_name, namespace)
        if secret is None:
            raise tls.error("caCertCredentialName", f"{ca_name!r} names no Secret in the manifests")
        client_ca = Pem(_secret_text(tls, secret, ca_name, "ca.crt"))
    elif credential and verifies and client_ca is None:
        # istio.io: the CA may sit in a Secret named <credentialName>-cacert.
        secret = _secret(secrets, f"{credential}-cacert", namespace)
        if secret is not None:
            client_ca = Pem(_secret_text(tls, secret, f"{credential}-cacert", "ca.crt"))
    if tls.has("caCertificates"):
        client_ca = _local_file(tls, "caCertificates")
    if verifies and client_ca is None and certificate is not None:
        raise tls.error(
            "caCertificates",
            f"(or a ca.crt in the credential's Secret) is required for {mode}: "
            "nothing says which client certificates to trust",
        )
    if not verifies:
        for key in ("caCertificates", "caCertCredentialName", "subjectAltNames"):
            if tls.has(key):
                raise tls.error(key, f"applies to MUTUAL servers only, not {mode}")
    versions = []
    for key in ("minProtocolVersion", "maxProtocolVersion"):
        value = tls.text(key) or ""
        if value and value not in PROTOCOLS:
            raise tls.error(key, f"must be one of {', '.join(PROTOCOLS)}, not {value!r}")
        versions.append(PROTOCOLS.get(value, ""))
    return ServerTls(
        mode=mode,
        hosts=tuple(hosts),
        certificate=certificate,
        client_ca=client_ca,
        crl=_local_file(tls, "caCrl") if tls.has("caCrl") else None,
        subject_alt_names=tuple(tls.strings("subjectAltNames")),
        spki=tuple(tls.strings("verifyCertificateSpki")),
        hashes=tuple(tls.strings("verifyCertificateHash")),
        min_version=versions[0],
        max_version=versions[1],
        ciphers=tuple(tls.strings("cipherSuites")),
        credential=credential,
    )


def secrets_of(
    objects: Sequence[Mapping[str, Any]], namespace: str
) -> dict[str, Mapping[str, Any]]:
    """The ``kubernetes.io/tls`` (and opaque CA) Secrets, by ``namespace/name``."""
    found: dict[str, Mapping[str, Any]] = {}
    for obj in objects:
        if obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1":
            found[f"{metadata_namespace(obj, namespace)}/{metadata_name(obj)}"] = obj
    return found


def _secret(
    secrets: Mapping[str, Mapping[str, Any]], name: str, namespace: str
) -> Mapping[str, Any] | None:
    # In a cluster the Secret lives in the gateway's namespace, which the manifests do
    # not name: the Gateway's own namespace first, then any.
    if f"{namespace}/{name}" in secrets:
        return secrets[f"{namespace}/{name}"]
    for key, secret in secrets.items():
        if key.split("/", 1)[1] == name:
            return secret
    return None


def _secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    string_data = secret.get("stringData") or {}
    if isinstance(string_data, Mapping) and isinstance(string_data.get(key), str):
        return str(string_data[key])
    data = secret.get("data") or {}
    if isinstance(data, Mapping) and isinstance(data.get(key), str):
        return base64.b64decode(str(data[key])).decode()
    return None


def _secret_text(tls: Spec, secret: Mapping[str, Any], name: str, key: str) -> str:
    kind = secret.get("type", "Opaque")
    if key != "ca.crt" and kind != "kubernetes.io/tls":
        raise tls.error("credentialName", f"Secret {name} is of type {kind}, not kubernetes.io/tls")
    try:
        value = _secret_value(secret, key)
    except (ValueError, UnicodeDecodeError):
        raise tls.error("credentialName", f"Secret {name}: {key} is not base64 PEM") from None
    if not value:
        raise tls.error("credentialName", f"Secret {name} has no {key}")
    return value


def _local_file(tls: Spec, key: str) -> Pem:
    path = tls.required_text(key)
    if not Path(path).is_file():
        raise tls.error(
            key,
            f"{path!r} is not a file on this machine (in a cluster it is a path in the "
            "gateway's container; locally it must exist here, or use credentialName)",
        )
    return Pem(path=str(Path(path).absolute()))


def sni_names(hosts: Sequence[str]) -> tuple[str, ...]:
    """istiod's SNI match for a server: its hosts, none when one of them is ``*``."""
    names = tuple(dict.fromkeys(host.split("/", 1)[-1] for host in hosts))
    return () if "*" in names else names


# -- making it concrete at start ---------------------------------------------------------


def materialize(
    listeners: Sequence[GatewayListener],
    local_ports: Mapping[int, int],
    host: str,
    directory: Path,
    *,
    http_filters: Sequence[dict[str, Any]] = (),
) -> Materialized:
    """Envoy's pieces for ``listeners``, their certificate files written to ``directory``.

    Keys are written 0600 and never printed. A locally made CA is kept across starts
    (a client that trusts it keeps trusting it); server certificates are made anew.
    """
    made = Materialized([])
    authority: _Authority | None = None
    for listener in listeners:
        chains: list[tuple[tuple[str, ...], str, dict[str, Any] | None]] = []
        for index, chain in enumerate(listener.chains):
            if chain.tls is None:
                chains.append((chain.server_names, chain.routes, None))
                continue
            stem = f"{listener.name}-{index}"
            local = chain.tls.certificate is None or (
                chain.tls.verifies_clients and chain.tls.client_ca is None
            )
            if local and authority is None:
                authority = _Authority.load_or_make(directory)
                made.ca = authority.cert_path
            chains.append(
                (
                    chain.server_names,
                    chain.routes,
                    _tls_context(chain.tls, directory, stem, authority),
                )
            )
            if chain.tls.certificate is None:
                what = f"credentialName {chain.tls.credential!r}" if chain.tls.credential else ""
                made.notes.append(
                    f"gateway port {listener.port}: {what or 'the server'} names no Secret in "
                    f"the manifests; serving a certificate made locally for "
                    f"{', '.join(chain.tls.hosts)} (CA {authority.cert_path if authority else ''})"
                )
            if chain.tls.verifies_clients and chain.tls.client_ca is None and authority:
                made.client = authority.client(directory)
        made.listeners.append(
            LocalListener(
                name=listener.name,
                host=host,
                port=local_ports[listener.port],
                server_port=listener.port,
                chains=tuple(chains),
                http_filters=tuple(http_filters),
            )
        )
    return made


def _tls_context(
    tls: ServerTls, directory: Path, stem: str, authority: _Authority | None
) -> dict[str, Any]:
    if tls.certificate is None:
        assert authority is not None
        cert_path, key_path = authority.server(directory, stem, tls.hosts)
    else:
        cert_path = _pem_file(tls.certificate[0], directory / f"{stem}.crt", secret=False)
        key_path = _pem_file(tls.certificate[1], directory / f"{stem}.key", secret=True)
    common: dict[str, Any] = {
        "tls_certificates": [
            {"certificate_chain": {"filename": cert_path}, "private_key": {"filename": key_path}}
        ],
        "alpn_protocols": list(ALPN_HTTP),
    }
    params: dict[str, Any] = {}
    if tls.min_version:
        params["tls_minimum_protocol_version"] = tls.min_version
    if tls.max_version:
        params["tls_maximum_protocol_version"] = tls.max_version
    if tls.ciphers:
        params["cipher_suites"] = list(tls.ciphers)
    if params:
        common["tls_params"] = params
    context: dict[str, Any] = {"@type": DOWNSTREAM_TLS, "common_tls_context": common}
    if tls.verifies_clients:
        if tls.client_ca is None:
            assert authority is not None
            ca_path = str(authority.cert_path)
        else:
            ca_path = _pem_file(tls.client_ca, directory / f"{stem}-ca.crt", secret=False)
        validation: dict[str, Any] = {"trusted_ca": {"filename": ca_path}}
        if tls.subject_alt_names:
            validation["match_typed_subject_alt_names"] = [
                {"san_type": san_type, "matcher": {"exact": name}}
                for name in tls.subject_alt_names
                for san_type in ("DNS", "URI")
            ]
        if tls.spki:
            validation["verify_certificate_spki"] = list(tls.spki)
        if tls.hashes:
            validation["verify_certificate_hash"] = list(tls.hashes)
        if tls.crl is not None:
            validation["crl"] = {"filename": tls.crl.path}
        common["validation_context"] = validation
        context["require_client_certificate"] = tls.mode == "MUTUAL"
    else:
        context["require_client_certificate"] = False
    return context


def _pem_file(pem: Pem, path: Path, *, secret: bool) -> str:
    if pem.path:
        return pem.path
    _write(path, pem.text.encode(), secret=secret)
    return str(path.absolute())


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600 if secret else 0o644)
        os.write(descriptor, data)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


class _Authority:
    """A local CA (ECDSA P-256) that signs the gateway's server certificates."""

    def __init__(self, key: Any, cert: Any, cert_path: Path) -> None:
        self.key = key
        self.cert = cert
        self.cert_path = cert_path

    @classmethod
    def load_or_make(cls, directory: Path) -> _Authority:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import NameOID

        cert_path, key_path = directory / CA_FILE, directory / "ca.key"
        if cert_path.is_file() and key_path.is_file():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if cert.not_valid_after_utc > _now() + datetime.timedelta(days=1):
                key = serialization.load_pem_private_key(key_path.read_bytes(), None)
                return cls(key, cert, cert_path.absolute())
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "usvc local mesh CA")])
        cert = (
            _builder(name, name, key.public_key(), days=365)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, _sha256())
        )
        _write(key_path, _key_pem(key), secret=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
        return cls(key, cert, cert_path.absolute())

    def server(self, directory: Path, stem: str, hosts: Sequence[str]) -> tuple[str, str]:
        from cryptography import x509

        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(h.split("/", 1)[-1] for h in hosts):
            if host == "*":
                names += [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            else:
                names.append(x509.DNSName(host))
        return self._leaf(directory, stem, names, server=True)

    def client(self, directory: Path) -> tuple[Path, Path]:
        from cryptography import x509

        cert, key = self._leaf(
            directory, "client", [x509.DNSName("client.usvc.local")], server=False
        )
        return Path(cert), Path(key)

    def _leaf(
        self, directory: Path, stem: str, names: list[Any], *, server: bool
    ) -> tuple[str, str]:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = _new_key()
        common = names[0].value if isinstance(names[0], x509.DNSName) else "localhost"
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(common))])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            _builder(subject, self.cert.subject, key.public_key(), days=30)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, _sha256())
        )
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        _write(key_path, _key_pem(key), secret=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
        return str(cert_path.absolute()), str(key_path.absolute())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


def _builder(subject: Any, issuer: Any, public_key: Any, *, days: int) -> Any:
    from cryptography import x509

    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
