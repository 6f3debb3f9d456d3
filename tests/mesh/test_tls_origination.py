"""DestinationRule ``tls.mode: SIMPLE``: the proxy originates TLS for a plaintext caller.

istio.io's "Egress TLS Origination" task: the application calls
``http://HOST/``, the ServiceEntry maps port 80 to the upstream's 443, and a
DestinationRule makes the sidecar speak TLS there, verifying the upstream.
"""

from __future__ import annotations

import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import usvc_mesh as tr
from tests.mesh.conftest import Backend, Backends, Envoy, istio, start_envoy, stop_envoy

pytestmark = pytest.mark.slow

HOST = "secure.test"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for HOST signed by it (openssl, at test time)."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
        "-keyout", str(ca_key), "-out", str(ca_crt))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={HOST}",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{HOST}\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-extfile", str(directory / "san.ext"),
        "-out", str(crt))  # fmt: skip
    return ca_crt, crt, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def upstream(backends: Backends, certificates: tuple[Path, Path, Path]) -> Backend:
    _, crt, key = certificates
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    return backends.add(Backend("secure", tls=context))


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    running = start_envoy(tmp_path_factory.mktemp("envoy"), translate())
    yield running
    stop_envoy(running)


def translate(tls: dict[str, Any] | None = None, port: int = 1) -> tr.Translation:
    entry = istio(
        "ServiceEntry",
        "secure",
        {
            "hosts": [HOST],
            "resolution": "DNS",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 443}],
        },
    )
    objects = [entry]
    if tls is not None:
        objects.append(
            istio(
                "DestinationRule",
                "secure",
                {
                    "host": HOST,
                    "trafficPolicy": {"portLevelSettings": [{"port": {"number": 80}, "tls": tls}]},
                },
            )
        )
    return tr.translate(objects, endpoints={}, externals={HOST: ("127.0.0.1", port)})


def get(envoy: Envoy) -> int:
    """Status of a plain-HTTP call through the outbound proxy, as an application makes it."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": envoy.proxy_url}))
    try:
        with opener.open(f"http://{HOST}/origin", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_simple_tls_reaches_an_https_upstream_the_caller_calls_over_http(
    envoy: Envoy, upstream: Backend, certificates: tuple[Path, Path, Path]
) -> None:
    ca, _, _ = certificates
    envoy.apply(translate({"mode": "SIMPLE", "caCertificates": str(ca)}, upstream.port))
    upstream.reset()
    assert get(envoy) == 200
    assert upstream.seen[0]["path"] == "/origin"


def test_without_tls_origination_the_https_upstream_is_not_reached(
    envoy: Envoy, upstream: Backend
) -> None:
    envoy.apply(translate(None, upstream.port))
    upstream.reset()
    assert get(envoy) == 503
    assert not upstream.seen


def test_an_upstream_certificate_from_an_untrusted_ca_is_refused(
    envoy: Envoy, upstream: Backend
) -> None:
    # no caCertificates: the system roots, which did not sign the test CA
    envoy.apply(translate({"mode": "SIMPLE"}, upstream.port))
    upstream.reset()
    assert get(envoy) == 503
    assert not upstream.seen


def test_a_certificate_for_another_name_is_refused(
    envoy: Envoy, upstream: Backend, certificates: tuple[Path, Path, Path]
) -> None:
    ca, _, _ = certificates
    tls = {"mode": "SIMPLE", "caCertificates": str(ca), "subjectAltNames": ["other.test"]}
    envoy.apply(translate(tls, upstream.port))
    upstream.reset()
    assert get(envoy) == 503
    assert not upstream.seen
