"""The translation applied by a real Envoy 1.40 to real aiohttp backends on loopback.

One Envoy serves the whole module; each test writes the rules it needs (a hot
switch, as the local mesh does) and waits until Envoy runs them. Clients use
the gateway listener like a browser, or the outbound listener as an HTTP
proxy like the workloads' egress client does.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import usvc_mesh as tr
from tests.mesh.conftest import (
    Backend,
    Backends,
    Envoy,
    deployment,
    destination_rule,
    free_port,
    gateway,
    istio,
    service,
    start_envoy,
    stop_envoy,
    virtual_service,
)
from usvc_mesh.telemetry.collector import otlp_from_protobuf, spans_of

pytestmark = pytest.mark.slow

WORKLOADS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    # deployment: (labels, backend options)
    "echo-v1": ({"app": "echo", "version": "v1"}, {}),
    "echo-v2": ({"app": "echo", "version": "v2"}, {}),
    "canary": ({"app": "split", "env": "canary"}, {}),
    "prod": ({"app": "split", "env": "prod"}, {}),
    "flaky": ({"app": "flaky"}, {"fail_ratio": 0.5}),
    "broken": ({"app": "broken"}, {"fail_ratio": 1.0}),
    "slow": ({"app": "switch", "v": "slow"}, {"delay": 1.0}),
    "quick": ({"app": "switch", "v": "quick"}, {}),
    "relay": ({"app": "relay"}, {}),
    "delayed": ({"app": "delayed"}, {}),
    "stand-in": ({"app": "stand-in"}, {}),
    "collector": ({"app": "collector"}, {}),
}
SERVICES = {
    "echo-svc": "echo",
    "split-svc": "split",
    "flaky-svc": "flaky",
    "broken-svc": "broken",
    "switch-svc": "switch",
    "relay-svc": "relay",
    "delayed-svc": "delayed",
    "dead-svc": "dead",
}
WORLDTIME = istio(
    "ServiceEntry",
    "worldtimeapi",
    {
        "hosts": ["worldtimeapi.org"],
        "resolution": "DNS",
        "ports": [
            {"number": 80, "name": "http", "protocol": "HTTP"},
            {"number": 443, "name": "tls", "protocol": "TLS"},
        ],
    },
)


@pytest.fixture(scope="module")
def running(backends: Backends) -> Backends:
    for name, (_, options) in WORKLOADS.items():
        backends.add(Backend(name, **options))
    return backends


@pytest.fixture(scope="module")
def dead_port() -> int:
    """A loopback port nothing listens on: a workload that is down."""
    return free_port()


class Mesh:
    def __init__(self, backends: Backends, dead_port: int) -> None:
        self.backends = backends
        self.dead_port = dead_port

    def translate(self, *rules: dict[str, Any]) -> tr.Translation:
        # No health checks: the dead endpoint must be tried for the retry tests.
        return tr.translate(
            [*self.objects(), *rules],
            endpoints=self.endpoints(),
            externals=self.externals(),
            health_checks=False,
        )

    def objects(self) -> list[dict[str, Any]]:
        """The workloads, Services and base rules (one Gateway, ServiceEntry, subsets)."""
        objects: list[dict[str, Any]] = [
            deployment(name, **labels)
            for name, (labels, _) in WORKLOADS.items()
            if name not in {"stand-in", "collector"}
        ]
        objects.append(deployment("dead", app="dead"))
        objects += [service(name, {"app": app}) for name, app in SERVICES.items()]
        objects += [
            gateway(),
            WORLDTIME,
            destination_rule(
                "echo", "echo-svc", {"v1": {"version": "v1"}, "v2": {"version": "v2"}}
            ),
            destination_rule(
                "split", "split-svc", {"canary": {"env": "canary"}, "prod": {"env": "prod"}}
            ),
        ]
        return objects

    def endpoints(self) -> dict[str, tuple[str, int]]:
        endpoints = {**self.backends.endpoints(), "dead": ("127.0.0.1", self.dead_port)}
        del endpoints["stand-in"], endpoints["collector"]
        return endpoints

    def externals(self) -> dict[str, tuple[str, int]]:
        return {"worldtimeapi.org": ("127.0.0.1", self.backends["stand-in"].port)}


@pytest.fixture(scope="module")
def mesh(running: Backends, dead_port: int) -> Mesh:
    return Mesh(running, dead_port)


@pytest.fixture(scope="module")
def envoy(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    running = start_envoy(tmp_path_factory.mktemp("envoy"), mesh.translate())
    yield running
    stop_envoy(running)


@pytest.fixture(autouse=True)
def fresh_backends(running: Backends) -> None:
    for backend in running.by_name.values():
        backend.reset()
        backend.forward = backend.proxy = None


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as client:
        yield client


async def call(
    session: aiohttp.ClientSession, url: str, *, proxy: str | None = None, **headers: str
) -> tuple[int, dict[str, Any]]:
    """Status and the backend's JSON (or {"body": text} for Envoy's own replies)."""
    async with session.get(url, proxy=proxy, headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, {"body": text}


async def many(
    session: aiohttp.ClientSession, n: int, url: str, *, proxy: str | None = None
) -> list[tuple[int, dict[str, Any]]]:
    return await asyncio.gather(*(call(session, url, proxy=proxy) for _ in range(n)))


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 response with a Content-Length, without waiting for the close."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(fields.get("content-length", "0")):
        body += sock.recv(65536)
    status = int(lines[0].split()[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"body": body.decode()}


def absolute_form_get(proxy_port: int, authority: str, path: str) -> tuple[int, dict[str, Any]]:
    """What an HTTP proxy client sends, byte for byte (``GET http://host:port/path``)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
        sock.sendall(f"GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        return read_response(sock)


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    spread = sigmas * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


# -- routing -----------------------------------------------------------------------


async def test_a_header_exact_match_routes_by_x_dev_user_case_sensitively(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    beta = {
        "match": [{"headers": {"x-dev-user": {"exact": "betaUser"}}}],
        "route": [{"destination": {"host": "echo-svc", "subset": "v2"}}],
    }
    default = {"route": [{"destination": {"host": "echo-svc", "subset": "v1"}}]}
    envoy.apply(mesh.translate(virtual_service("echo", ["echo-svc"], [beta, default])))
    proxy = envoy.proxy_url
    _, matched = await call(session, "http://echo-svc/", proxy=proxy, **{"x-dev-user": "betaUser"})
    _, other_case = await call(
        session, "http://echo-svc/", proxy=proxy, **{"x-dev-user": "betauser"}
    )
    _, without = await call(session, "http://echo-svc/", proxy=proxy)
    assert (matched["name"], other_case["name"], without["name"]) == (
        "echo-v2",
        "echo-v1",
        "echo-v1",
    )


async def test_a_20_80_weighted_split_holds_within_4_points_over_2000_requests(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    split = {
        "route": [
            {"destination": {"host": "split-svc", "subset": "canary"}, "weight": 20},
            {"destination": {"host": "split-svc", "subset": "prod"}, "weight": 80},
        ]
    }
    envoy.apply(mesh.translate(virtual_service("split", ["split-svc"], [split])))
    results = await many(session, 2000, "http://split-svc/", proxy=envoy.proxy_url)
    names = Counter(body["name"] for status, body in results if status == 200)
    assert sum(names.values()) == 2000
    assert abs(names["canary"] / 2000 - 0.20) <= 0.04


async def test_a_service_without_virtual_service_balances_over_all_its_workloads(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    envoy.apply(mesh.translate())
    results = await many(session, 100, "http://split-svc/", proxy=envoy.proxy_url)
    assert {body["name"] for _, body in results} == {"canary", "prod"}


def test_the_outbound_proxy_routes_absolute_form_requests_by_host(envoy: Envoy, mesh: Mesh) -> None:
    envoy.apply(mesh.translate())
    for authority, path, backend in [
        ("delayed-svc.default.svc.cluster.local", "/a", "delayed"),
        ("relay-svc.default:80", "/b", "relay"),
        ("delayed-svc", "/c?x=1", "delayed"),
    ]:
        status, body = absolute_form_get(envoy.outbound, authority, path)
        assert (status, body["name"], body["host"], body["path"]) == (200, backend, authority, path)


def outbound_policy(mode: str) -> dict[str, Any]:
    """A namespace-wide Sidecar setting the outbound traffic policy, as the chart renders it."""
    return istio(
        "Sidecar",
        "default",
        {"egress": [{"hosts": ["*/*"]}], "outboundTrafficPolicy": {"mode": mode}},
    )


async def test_a_gateway_server_with_https_redirect_answers_301_to_https(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    redirecting = istio(
        "Gateway",
        "front-gateway",
        {
            "servers": [
                {
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*"],
                    "tls": {"httpsRedirect": True},
                }
            ]
        },
    )
    front = virtual_service(
        "front",
        ["*"],
        [{"route": [{"destination": {"host": "echo-svc"}}]}],
        gateways=["front-gateway"],
    )
    base = [o for o in mesh.objects() if o["kind"] != "Gateway"]
    envoy.apply(
        tr.translate(
            [*base, redirecting, front], endpoints=mesh.endpoints(), externals=mesh.externals()
        )
    )
    async with session.get(f"{envoy.gateway_url}/x", allow_redirects=False) as response:
        assert response.status == 301
        assert response.headers["location"].startswith("https://")
        assert response.headers["location"].endswith("/x")


def test_by_default_a_host_no_service_has_is_passed_through(envoy: Envoy, mesh: Mesh) -> None:
    # Istio's mesh default is outboundTrafficPolicy ALLOW_ANY (pkg/config/mesh/mesh.go,
    # DefaultMeshConfig; istio.io "Accessing External Services"): the call leaves the mesh
    # to the host itself. "localhost:PORT" is a host no Service or ServiceEntry has.
    envoy.apply(mesh.translate())
    outside = mesh.backends["stand-in"]
    status, body = absolute_form_get(envoy.outbound, f"localhost:{outside.port}", "/out")
    assert (status, body["name"], body["path"]) == (200, "stand-in", "/out")


def test_with_registry_only_a_host_no_service_has_is_answered_502(envoy: Envoy, mesh: Mesh) -> None:
    envoy.apply(mesh.translate(outbound_policy("REGISTRY_ONLY")))
    outside = mesh.backends["stand-in"]
    status, body = absolute_form_get(envoy.outbound, f"localhost:{outside.port}", "/")
    assert status == 502
    assert "no Service or ServiceEntry" in body["body"]


def test_a_resolution_none_service_entry_reaches_the_host_the_request_names(
    envoy: Envoy, mesh: Mesh
) -> None:
    # REGISTRY_ONLY, so only the ServiceEntry lets the call out
    outside = mesh.backends["stand-in"]
    entry = istio(
        "ServiceEntry",
        "loopback",
        {
            "hosts": ["localhost"],
            "resolution": "NONE",
            "ports": [{"number": outside.port, "name": "http", "protocol": "HTTP"}],
        },
    )
    envoy.apply(mesh.translate(entry, outbound_policy("REGISTRY_ONLY")))
    status, body = absolute_form_get(envoy.outbound, f"localhost:{outside.port}", "/none")
    assert (status, body["name"], body["path"]) == (200, "stand-in", "/none")


async def test_a_service_entry_host_reaches_its_local_stand_in(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    envoy.apply(mesh.translate())
    status, body = await call(
        session, "http://worldtimeapi.org/api/timezone/Asia/Jakarta", proxy=envoy.proxy_url
    )
    assert (status, body["name"], body["host"]) == (200, "stand-in", "worldtimeapi.org")


def test_a_non_http_service_entry_port_is_a_connect_tunnel(envoy: Envoy, mesh: Mesh) -> None:
    envoy.apply(mesh.translate())
    with socket.create_connection(("127.0.0.1", envoy.outbound), timeout=5) as sock:
        sock.sendall(b"CONNECT worldtimeapi.org:443 HTTP/1.1\r\nHost: worldtimeapi.org:443\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        # The tunnel carries whatever the client speaks; the stand-in speaks plain HTTP.
        sock.sendall(b"GET /through HTTP/1.1\r\nHost: worldtimeapi.org\r\n\r\n")
        status, body = read_response(sock)
    assert (status, body["name"], body["path"]) == (200, "stand-in", "/through")


# -- faults, timeouts, retries -----------------------------------------------------------------


async def test_a_fault_abort_of_50_percent_answers_503_to_about_half(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    rule = {
        "route": [{"destination": {"host": "echo-svc", "subset": "v1"}}],
        "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 50}}},
    }
    envoy.apply(mesh.translate(virtual_service("echo", ["echo-svc"], [rule])))
    results = await many(session, 200, "http://echo-svc/", proxy=envoy.proxy_url)
    statuses = Counter(status for status, _ in results)
    low, high = binomial_bounds(200, 0.5)
    assert set(statuses) == {200, 503}
    assert low <= statuses[503] <= high
    # Aborted requests never reach the workload.
    assert mesh.backends["echo-v1"].hits == statuses[200]


DELAY = 10.0  # long: whatever the machine's load, the caller's 0.3 s timeout comes first


async def test_a_delay_on_the_callee_beyond_the_callers_timeout_gives_504_near_the_timeout(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    # gateway -(timeout 0.3 s)-> relay -(its sidecar)-> delayed, whose rule delays 10 s.
    # Envoy starts a route's timeout after that route's own fault delay, so the
    # timeout that cuts a delay short is the caller's, as in a cluster.
    relay = mesh.backends["relay"]
    relay.forward, relay.proxy = "http://delayed-svc/", envoy.proxy_url
    front = virtual_service(
        "front",
        ["*"],
        [{"route": [{"destination": {"host": "relay-svc"}}], "timeout": "0.3s"}],
        gateways=["front-gateway"],
    )
    delayed = virtual_service(
        "delayed",
        ["delayed-svc"],
        [
            {
                "route": [{"destination": {"host": "delayed-svc"}}],
                "fault": {"delay": {"fixedDelay": f"{DELAY:g}s", "percentage": {"value": 100}}},
            }
        ],
    )
    envoy.apply(mesh.translate(front, delayed))
    reached = mesh.backends["delayed"].hits
    timeouts = envoy.stats("upstream_rq_timeout$")
    started = time.monotonic()
    status, body = await call(session, f"{envoy.gateway_url}/")
    elapsed = time.monotonic() - started
    assert status == 504
    assert body["body"] == "upstream request timeout"
    # The caller's route timed out (relay's cluster), not the delayed one's...
    grown = {k for k, v in envoy.stats("upstream_rq_timeout$").items() if v > timeouts.get(k, 0)}
    assert grown and all("relay-svc" in name for name in grown), grown
    # ... while the delay still held the request (delayed never saw it), long before it ended.
    assert mesh.backends["delayed"].hits == reached
    assert elapsed < DELAY / 2


async def test_retries_on_5xx_hide_a_backend_that_fails_half_the_time(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    rule = {
        "route": [{"destination": {"host": "flaky-svc"}}],
        "retries": {"attempts": 10, "retryOn": "5xx"},
    }
    envoy.apply(mesh.translate(virtual_service("flaky", ["flaky-svc"], [rule])))
    results = await many(session, 200, "http://flaky-svc/", proxy=envoy.proxy_url)
    successes = sum(1 for status, _ in results if status == 200)
    assert successes >= 198
    assert mesh.backends["flaky"].hits > 250  # the failures were real, and retried


def retries(envoy: Envoy, service_name: str) -> int:
    # Stats are named by the cluster's alt_stat_name: its name without dots (clusters.py).
    stat = f"cluster.outbound|80||{service_name}_default_svc_cluster_local.upstream_rq_retry"
    return envoy.stats("upstream_rq_retry$").get(stat, 0)


async def test_istios_default_retry_policy_does_not_retry_a_500(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    envoy.apply(mesh.translate())
    before = retries(envoy, "broken-svc")
    status, _ = await call(session, "http://broken-svc/", proxy=envoy.proxy_url)
    assert status == 500
    assert mesh.backends["broken"].hits == 1
    assert retries(envoy, "broken-svc") == before


async def test_istios_default_retry_policy_retries_a_refused_connection_twice(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    envoy.apply(mesh.translate())
    before = retries(envoy, "dead-svc")
    status, _ = await call(session, "http://dead-svc/", proxy=envoy.proxy_url)
    assert status == 503
    assert retries(envoy, "dead-svc") == before + 2


async def test_a_mirrored_copy_keeps_the_original_host(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    rule = {
        "route": [{"destination": {"host": "echo-svc", "subset": "v1"}}],
        "mirror": {"host": "echo-svc", "subset": "v2"},
    }
    envoy.apply(mesh.translate(virtual_service("echo", ["echo-svc"], [rule])))
    _, body = await call(session, "http://echo-svc/m", proxy=envoy.proxy_url)
    assert body["name"] == "echo-v1"
    shadow = mesh.backends["echo-v2"]
    deadline = time.monotonic() + 2
    while not shadow.seen and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    # Istio >= 1.28 sets disable_shadow_host_suffix_append (pilot/pkg/features:
    # DISABLE_SHADOW_HOST_SUFFIX, default true); older releases sent "echo-svc-shadow".
    assert shadow.seen[0]["host"] == "echo-svc"


# -- tracing -----------------------------------------------------------------------------


async def test_request_id_and_traceparent_reach_the_backend(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    front = virtual_service(
        "front",
        ["*"],
        [{"route": [{"destination": {"host": "echo-svc"}}]}],
        gateways=["front-gateway"],
    )
    envoy.apply(mesh.translate(front))
    _, body = await call(session, f"{envoy.gateway_url}/")
    headers = body["headers"]
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-request-id"])
    # Envoy's OpenTelemetry tracer: W3C, sampled (100 %), no B3.
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", headers["traceparent"])
    assert "x-b3-traceid" not in headers


async def test_the_outbound_proxy_continues_the_callers_w3c_trace(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    envoy.apply(mesh.translate())
    trace, span = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
    _, body = await call(
        session,
        "http://echo-svc/",
        proxy=envoy.proxy_url,
        traceparent=f"00-{trace}-{span}-01",
    )
    _, trace_id, parent, flags = body["headers"]["traceparent"].split("-")
    assert (trace_id, flags) == (trace, "01")
    assert parent != span  # Envoy's own span, the caller's as its parent


async def test_the_zipkin_tracer_continues_the_callers_b3_trace(
    mesh: Mesh, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    traced = start_envoy(tmp_path, mesh.translate(), tracer="zipkin")
    trace, span = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
    try:
        _, body = await call(
            session,
            "http://echo-svc/",
            proxy=traced.proxy_url,
            **{
                "x-b3-traceid": trace,
                "x-b3-spanid": span,
                "x-b3-sampled": "1",
                "x-request-id": "req-1",
            },
        )
    finally:
        stop_envoy(traced)
    headers = body["headers"]
    assert headers["x-b3-traceid"] == trace
    assert headers["x-b3-parentspanid"] == span
    assert headers["x-b3-spanid"] != span
    assert headers["x-request-id"] == "req-1"


async def test_spans_reach_the_otlp_collector_with_the_trace_the_backend_saw(
    mesh: Mesh, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    collector = mesh.backends["collector"]
    front = virtual_service(
        "front",
        ["*"],
        [{"route": [{"destination": {"host": "echo-svc"}}]}],
        gateways=["front-gateway"],
    )
    traced = start_envoy(tmp_path, mesh.translate(front), collector=("127.0.0.1", collector.port))
    try:
        # Envoy's OpenTelemetry tracer flushes once it holds 5 spans.
        results = [await call(session, f"{traced.gateway_url}/") for _ in range(6)]
        deadline = time.monotonic() + 5
        while not collector.seen and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        stop_envoy(traced)
    post = collector.seen[0]
    assert post["path"] == "/v1/traces"
    assert post["headers"]["content-type"] == "application/x-protobuf"
    # What the mesh's own collector (usvc up --telemetry) makes of it.
    request = otlp_from_protobuf(collector.bodies[0])
    (resource,) = request["resourceSpans"]
    # The gateway listener's spans: the ingress gateway's service, as istiod names it.
    assert {
        "key": "service.name",
        "value": {"stringValue": "istio-ingressgateway.istio-ingress"},
    } in (resource["resource"]["attributes"])
    reported = {span["traceId"] for span in spans_of(request)}
    assert results[0][1]["headers"]["traceparent"].split("-")[1] in reported


async def test_with_w3c_the_proxy_continues_a_traceparent_and_writes_both_formats(
    mesh: Mesh, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    traced = start_envoy(tmp_path, mesh.translate(), tracer="zipkin", w3c=True)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        _, body = await call(
            session,
            "http://echo-svc/",
            proxy=traced.proxy_url,
            traceparent=f"00-{trace}-00f067aa0ba902b7-01",
        )
    finally:
        stop_envoy(traced)
    headers = body["headers"]
    assert headers["x-b3-traceid"] == trace
    assert headers["traceparent"].split("-")[1] == trace
    assert headers["traceparent"].split("-")[2] != "00f067aa0ba902b7"


def test_the_access_log_has_one_json_line_per_request(envoy: Envoy, mesh: Mesh) -> None:
    envoy.apply(mesh.translate())
    absolute_form_get(envoy.outbound, "relay-svc", "/logged")
    deadline = time.monotonic() + 5
    entry: dict[str, Any] = {}
    # The relay calls on through the mesh too, so the request to relay-svc is not
    # necessarily the last line: find it by path and authority.
    while time.monotonic() < deadline and not entry:
        lines = envoy.access_log.read_text().splitlines() if envoy.access_log.exists() else []
        entries = [json.loads(line) for line in lines]
        entry = next(
            (
                e
                for e in entries
                if e.get("path") == "/logged" and str(e.get("authority")).startswith("relay-svc")
            ),
            {},
        )
        time.sleep(0.05)
    assert entry["listener"] == "outbound"
    assert entry["response_code"] == 200
    assert entry["upstream_cluster"] == "outbound|80||relay-svc.default.svc.cluster.local"
    assert entry["route_name"] == "default"


# -- hot switching --------------------------------------------------------------------------


def switch_rules(target: str) -> list[dict[str, Any]]:
    front = virtual_service(
        "front",
        ["*"],
        [{"route": [{"destination": {"host": "switch-svc", "subset": target}}]}],
        gateways=["front-gateway"],
    )
    # Each side defines only the subset it uses, so the switch also removes a cluster.
    rule = destination_rule("switch", "switch-svc", {target: {"v": target}})
    return [front, rule]


async def test_a_cors_policy_answers_preflights_and_marks_allowed_origins(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    cors = {
        "allowOrigins": [{"exact": "https://shop.example"}],
        "allowMethods": ["GET"],
        "maxAge": "1m",
    }
    rule = {"route": [{"destination": {"host": "echo-svc", "subset": "v1"}}], "corsPolicy": cors}
    envoy.apply(mesh.translate(virtual_service("echo", ["echo-svc"], [rule])))
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "GET",
    }
    async with session.options("http://echo-svc/", proxy=envoy.proxy_url, headers=preflight) as r:
        assert r.status == 200
        assert r.headers["access-control-allow-origin"] == "https://shop.example"
        assert r.headers["access-control-max-age"] == "60"
    hits = mesh.backends["echo-v1"].hits
    assert hits == 0  # Envoy answered the preflight itself
    other = {"Origin": "https://evil.example"}
    async with session.get("http://echo-svc/", proxy=envoy.proxy_url, headers=other) as r:
        assert r.status == 200
        assert "access-control-allow-origin" not in r.headers


async def test_a_grpc_timeout_header_bounds_the_call_when_the_route_has_no_timeout(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    # istiod's setTimeout (pilot/pkg/networking/core/route/route.go) sets max_grpc_timeout
    # 0s on a route without timeout, so Envoy honours the client's grpc-timeout.
    envoy.apply(mesh.translate(*switch_rules("slow")))
    slow = mesh.backends["slow"]
    slow.delay = DELAY  # long: whatever the machine's load, the 200 ms grpc-timeout comes first
    headers = {"content-type": "application/grpc", "grpc-timeout": "200m", "te": "trailers"}
    try:
        started = time.monotonic()
        async with session.post(f"{envoy.gateway_url}/", headers=headers, data=b"") as response:
            await response.read()
            grpc = (response.headers.get("grpc-status"), response.headers.get("grpc-message"))
        elapsed = time.monotonic() - started
    finally:
        slow.delay = WORKLOADS["slow"][1]["delay"]
    # Envoy's own 504, as a trailers-only gRPC reply (HTTP 504 maps to UNAVAILABLE, 14),
    # long before the backend would have answered
    assert grpc == ("14", "upstream request timeout")
    assert elapsed < DELAY / 2


async def test_a_hot_switch_takes_effect_without_restart_and_drops_no_request_in_flight(
    envoy: Envoy, mesh: Mesh, session: aiohttp.ClientSession
) -> None:
    envoy.apply(mesh.translate(*switch_rules("slow")))
    pid = envoy.process.pid
    in_flight = [asyncio.create_task(call(session, f"{envoy.gateway_url}/")) for _ in range(20)]
    slow = mesh.backends["slow"]
    deadline = time.monotonic() + 2
    while slow.hits < 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert slow.hits == 20  # all 20 now wait on the slow (1 s) workload
    switched = mesh.translate(*switch_rules("quick"))
    await asyncio.to_thread(envoy.apply, switched)
    assert not any(request.done() for request in in_flight)
    _, after = await call(session, f"{envoy.gateway_url}/")
    finished = await asyncio.gather(*in_flight)
    assert [(status, body["name"]) for status, body in finished] == [(200, "slow")] * 20
    assert after["name"] == "quick"
    assert envoy.process.pid == pid
    assert envoy.process.poll() is None
    assert "outbound|80|slow|switch-svc.default.svc.cluster.local" not in {
        c["name"] for c in json.loads((envoy.config_dir / tr.CDS_FILE).read_text())["resources"]
    }


def test_applied_tells_the_running_translation_from_any_other(envoy: Envoy, mesh: Mesh) -> None:
    """applied() reads the xDS versions Envoy reports, not the whole /config_dump."""
    quick, slow = mesh.translate(*switch_rules("quick")), mesh.translate(*switch_rules("slow"))
    envoy.apply(quick)
    assert tr.applied(envoy.admin, quick)
    assert not tr.applied(envoy.admin, slow)  # other routes and clusters
    tr.write(envoy.config_dir, slow)
    tr.wait_applied(envoy.admin, slow)
    assert not tr.applied(envoy.admin, quick)
    dump = _config_dump(envoy)
    seen = {}
    for section in dump["configs"]:
        if section["@type"].endswith("ClustersConfigDump"):
            seen["cds"] = section["version_info"]
        for dynamic in section.get("dynamic_route_configs", []):
            seen[dynamic["route_config"]["name"]] = dynamic["version_info"]
    assert tr.runs_versions(seen, slow)  # what the whole dump says, too (no LDS: no sidecars)


def test_envoy_answers_applied_warming_query_with_the_two_gauges_alone(envoy: Envoy) -> None:
    """The filter, the type and ``usedonly`` are all honoured: no other stat comes back."""
    found = tr.admin_stats(envoy.admin, tr.envoy._WARMING_QUERY, timeout=10)
    assert found == dict.fromkeys(tr.envoy._WARMING_GAUGES, "0")


def _config_dump(envoy: Envoy) -> dict[str, Any]:
    url = f"http://127.0.0.1:{envoy.ports.admin}/config_dump"
    with urllib.request.urlopen(url, timeout=10) as response:
        dump: dict[str, Any] = json.loads(response.read())
    return dump


# -- validation -------------------------------------------------------------------------------


def test_validate_accepts_what_translate_writes(mesh: Mesh, tmp_path: Path) -> None:
    tr.write(tmp_path, mesh.translate(*switch_rules("slow")))
    tr.validate(tmp_path)


def test_validate_reports_envoys_message_for_a_route_to_a_missing_cluster(
    mesh: Mesh, tmp_path: Path
) -> None:
    tr.write(tmp_path, mesh.translate())
    rds = tmp_path / tr.RDS_FILES[tr.OUTBOUND_ROUTES]
    document = json.loads(rds.read_text())
    document["resources"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = (
        "outbound|80||ghost"
    )
    rds.write_text(json.dumps(document))
    with pytest.raises(tr.EnvoyConfigError, match=r"outbound\|80\|\|ghost"):
        tr.validate(tmp_path)


def test_validate_accepts_the_running_configuration_with_its_bootstrap(envoy: Envoy) -> None:
    tr.validate(envoy.config_dir)


def test_write_leaves_a_file_whose_content_does_not_change_untouched(
    mesh: Mesh, tmp_path: Path
) -> None:
    """Envoy reloads a file when one is renamed onto it: new gateway routes, nothing else."""
    rule = destination_rule(
        "switch", "switch-svc", {"slow": {"v": "slow"}, "quick": {"v": "quick"}}
    )
    slow, quick = (mesh.translate(switch_rules(target)[0], rule) for target in ("slow", "quick"))
    assert slow.clusters == quick.clusters and slow.gateway_routes != quick.gateway_routes
    tr.write(tmp_path, slow)
    before = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    tr.write(tmp_path, quick)
    after = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    assert after["cds.json"] == before["cds.json"]
    assert after["rds-outbound.json"] == before["rds-outbound.json"]
    assert after["rds-gateway.json"] != before["rds-gateway.json"]
    assert (
        json.loads((tmp_path / "rds-gateway.json").read_text())["version_info"]
        == (tr.versions(quick)["gateway"])
    )


def test_write_leaves_no_temporary_files(mesh: Mesh, tmp_path: Path) -> None:
    tr.write(tmp_path, mesh.translate())
    tr.write(tmp_path, mesh.translate(*switch_rules("quick")))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cds.json",
        "lds.json",
        "rds-gateway.json",
        "rds-outbound.json",
    ]
