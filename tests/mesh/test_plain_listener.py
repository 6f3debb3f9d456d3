"""A replica's plain listener: its pod address, where PeerAuthentication's mode applies.

istio.io, "PeerAuthentication" (reference) and "Mutual TLS Migration": in PERMISSIVE
mode a workload accepts plaintext from a client without a sidecar; in STRICT it
accepts only mutual TLS, so such a client's connection is closed before any HTTP
(istiod's inbound listener, pilot/pkg/networking/core/listener_builder.go, has
filter chains for TLS only; a plaintext connection matches none). A client outside
the mesh has no identity, so a principal-based ALLOW answers 403.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import usvc_mesh as mesh
from tests.mesh.conftest import (
    Backend,
    Backends,
    deployment,
    istio,
    service,
    start_envoy,
    stop_envoy,
)
from usvc_mesh import envoy
from usvc_mesh.procs import free_port
from usvc_mesh.sidecars import Inbound, Sidecar

pytestmark = pytest.mark.slow  # a real Envoy and a real backend


def security(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {**istio(kind, name, spec), "apiVersion": "security.istio.io/v1"}


def peer_authentication(mode: str, **selector: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return security("PeerAuthentication", f"beta-{mode.lower()}-{len(selector)}", spec)


ONLY_ALPHA = security(
    "AuthorizationPolicy",
    "beta-from-alpha",
    {
        "selector": {"matchLabels": {"app": "beta"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/alpha"]}}]}],
    },
)


def translation(app: tuple[str, int], pod: int, *security: dict[str, Any]) -> mesh.Translation:
    sidecar = Sidecar(
        "beta", "default", "beta", {"app": "beta"}, free_port(), (Inbound("beta-1", app, pod),)
    )
    objects = [deployment("beta", app="beta"), service("beta", {"app": "beta"}), *security]
    return mesh.translate(objects, endpoints={"beta": app}, sidecars=[sidecar])


def plain_listener(translated: mesh.Translation, tmp_path: Path) -> dict[str, Any]:
    listeners = {x["name"]: x for x in envoy.sidecar_listeners(translated.sidecars, tmp_path)}
    return listeners[translated.sidecars[0].inbounds[0].plain_listener]


@pytest.mark.parametrize(
    ("security", "refused"),
    [
        ((), False),  # no PeerAuthentication: Istio's default is PERMISSIVE
        ((peer_authentication("PERMISSIVE"),), False),
        ((peer_authentication("DISABLE"),), False),
        ((peer_authentication("STRICT"),), True),
        ((peer_authentication("STRICT"), peer_authentication("PERMISSIVE", app="beta")), False),
        ((peer_authentication("PERMISSIVE"), peer_authentication("STRICT", app="beta")), True),
    ],
    ids=["none", "permissive", "disable", "strict", "workload-overrides", "workload-strict"],
)
def test_the_plain_listener_refuses_plaintext_exactly_when_the_mode_is_strict(
    security: tuple[dict[str, Any], ...], refused: bool, tmp_path: Path
) -> None:
    """Precedence as istio.io states it: workload selector > namespace > mesh."""
    listener = plain_listener(translation(("127.0.0.1", 9101), 9301, *security), tmp_path)
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9301}
    assert listener["traffic_direction"] == "INBOUND"
    (chain,) = listener["filter_chains"]
    assert ("filter_chain_match" in chain) is refused
    if refused:
        assert chain["filter_chain_match"] == {"transport_protocol": "tls"}


def test_port_level_mtls_that_differs_is_reported(tmp_path: Path) -> None:
    peer = peer_authentication("PERMISSIVE", app="beta")
    peer["spec"]["portLevelMtls"] = {"8080": {"mode": "STRICT"}}
    translated = translation(("127.0.0.1", 9101), 9301, peer)
    assert any("portLevelMtls" in w and "8080" in w for w in translated.warnings)


@pytest.fixture
def upstream(backends: Backends) -> Iterator[Backend]:
    backend = backends.by_name.get("beta") or backends.add(Backend("beta"))
    backend.reset()
    yield backend


def get(port: int) -> bytes:
    """A plaintext HTTP/1.1 request as a client outside the mesh sends it; the raw answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"GET /hello HTTP/1.1\r\nHost: beta\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while chunk := client.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # a reset is a refusal too
        return answer


def test_permissive_admits_a_plaintext_client_and_strict_closes_its_connection(
    upstream: Backend, tmp_path: Path
) -> None:
    app = ("127.0.0.1", upstream.port)
    pod = free_port()
    running = start_envoy(tmp_path, translation(app, pod, peer_authentication("PERMISSIVE")))
    try:
        answer = get(pod)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert upstream.hits == 1
        running.apply(translation(app, pod, peer_authentication("STRICT")))
        assert get(pod) == b""  # closed before any HTTP: no response at all
        assert upstream.hits == 1
    finally:
        stop_envoy(running)


def test_a_plaintext_client_has_no_principal_so_a_principal_allow_denies_it(
    upstream: Backend, tmp_path: Path
) -> None:
    app = ("127.0.0.1", upstream.port)
    pod = free_port()
    security = (peer_authentication("PERMISSIVE"), ONLY_ALPHA)
    running = start_envoy(tmp_path, translation(app, pod, *security))
    try:
        answer = get(pod)
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        assert answer.endswith(b"RBAC: access denied")
        assert upstream.hits == 0
    finally:
        stop_envoy(running)
