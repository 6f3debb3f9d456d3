"""`usvc up` with HTTPS Gateway servers and a RequestAuthentication: the generic manifests.

tests/mesh/generic (two plain aiohttp services) with a scenario of this test's own:
the Gateway has an HTTP server that redirects to HTTPS on 443, whose certificate the
manifests do not hold, so the mesh makes one at start and prints its CA (istio.io
Gateway reference, ServerTLSSettings; the "Secure Gateways" task).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.mesh.gateway_clients import http_get, https_get
from tests.mesh.test_request_authn import Signer
from usvc_mesh.cli import describe_gateway
from usvc_mesh.containers import compose
from usvc_mesh.manifests import Layout, MeshError
from usvc_mesh.procs import free_port
from usvc_mesh.supervisor import STATE_FILE, LocalMesh

GENERIC = Path(__file__).parent / "generic"
USVC_MESH = "import sys; from usvc_mesh.cli import main; sys.exit(main())"  # usvc-mesh
SECURE = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
    - port: {number: 80, name: http, protocol: HTTP}
      hosts: ["*"]
      tls: {httpsRedirect: true}
    - port: {number: 443, name: https, protocol: HTTPS}
      hosts: ["*"]
      tls: {mode: SIMPLE, credentialName: shop-cert}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: gateway-jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules: [{issuer: "https://issuer.test", jwks: 'JWKS'}]
"""


def secure_root(tmp_path: Path) -> Path:
    """tests/mesh/generic, plus a scenario ``secure``: split's rules behind SECURE."""
    root = tmp_path / "generic"
    shutil.copytree(GENERIC, root)
    scenarios = root / "k8s" / "mesh" / "scenarios"
    split = list(yaml.safe_load_all((scenarios / "split.yaml").read_text()))
    rules = [doc for doc in split if doc["kind"] != "Gateway"]
    secure = SECURE.replace("JWKS", Signer().jwks())
    (scenarios / "secure.yaml").write_text(
        secure + "---\n" + yaml.safe_dump_all(rules, sort_keys=False)
    )
    return root


def test_compose_refuses_what_its_one_plain_gateway_listener_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match=r"applied by `usvc up` only, not in compose"):
        compose.plan(Layout(secure_root(tmp_path), namespace="shop"), "secure")


@pytest.mark.slow
def test_up_serves_https_with_a_ca_it_made_and_refuses_switching_the_gateway(
    tmp_path: Path,
) -> None:
    root = secure_root(tmp_path)
    mesh = LocalMesh(
        Layout(root, namespace="shop"),
        scenario="secure",
        gateway_port=free_port(),
        run_dir=tmp_path / "run",
        base_env={"PATH": "/usr/bin:/bin"},
    )
    mesh.start(timeout=30)
    try:
        assert mesh.gateway is not None and mesh.gateway.ca is not None
        https_port = mesh.gateway_ports[443]
        assert mesh.gateway_ports[80] == mesh.gateway_port
        lines = describe_gateway(mesh)
        assert f"gateway https://127.0.0.1:{https_port}/" in lines[1]
        assert f"curl --cacert {mesh.gateway.ca} https://127.0.0.1:{https_port}/" in lines[-1]
        assert any("shop-cert" in w and "made locally" in w for w in mesh.warnings)
        # the private keys are the owner's only, and nothing printed holds one
        assert (mesh.gateway.ca.parent / "ca.key").stat().st_mode & 0o777 == 0o600
        assert "PRIVATE KEY" not in "\n".join([*lines, *mesh.warnings])
        reply = https_get(https_port, "localhost", mesh.gateway.ca)
        assert (reply.status, reply.body) == (200, "alpha > beta-one")
        with pytest.raises(ssl.SSLCertVerificationError):
            https_get(https_port, "localhost", ssl.get_default_verify_paths().cafile or "/dev/null")
        redirect = http_get(mesh.gateway_port, "/x")
        assert redirect.status == 301
        assert redirect.headers["location"] == f"https://127.0.0.1:{https_port}/x"
        # a malformed token is refused by the gateway's jwt_authn
        bad = https_get(
            https_port, "localhost", mesh.gateway.ca, headers={"Authorization": "Bearer a.b.c"}
        )
        assert bad.status == 401
        state = json.loads((mesh.run_dir / STATE_FILE).read_text())  # type: ignore[operator]
        assert state["gateways"]["443"] == f"https://127.0.0.1:{https_port}/"
        with pytest.raises(MeshError, match=r"changes the gateway's servers"):
            mesh.use("split")
        assert mesh.scenario == "secure"
    finally:
        mesh.stop()


@pytest.mark.slow
def test_usvc_up_prints_each_gateway_port_and_the_ca_to_curl_with(tmp_path: Path) -> None:
    root = secure_root(tmp_path)
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-c", USVC_MESH, "up", "--root", str(root), "--scenario",
         "secure", "--gateway", f"127.0.0.1:{port}", "--run-dir", str(tmp_path / "run")],
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        lines: list[str] = []
        for line in up.stdout:
            lines.append(line.rstrip())
            if line.startswith("ready in "):
                break
        printed = "\n".join(lines)
        if not lines or not lines[-1].startswith("ready in "):
            up.wait(30)
            raise AssertionError(
                f"usvc up ended: {printed}\n{up.stderr.read() if up.stderr else ''}"
            )
        match = re.search(r"gateway CA \(made locally\): (\S+)   curl --cacert \S+ (\S+)", printed)
        assert match, printed
        ca, url = Path(match.group(1)), match.group(2)
        assert f"gateway http://127.0.0.1:{port}/" in printed
        assert re.search(rf"gateway {re.escape(url)} +Gateway port 443 \(HTTPS\)", printed)
        https_port = int(url.rsplit(":", 1)[1].strip("/"))
        assert https_get(https_port, "localhost", ca).body == "alpha > beta-one"
        assert "PRIVATE KEY" not in printed
    finally:
        up.send_signal(signal.SIGINT)
        _, stderr = up.communicate(timeout=30)
    assert up.returncode == 0, stderr
    assert "shop-cert" in stderr and "made locally" in stderr  # the warning
