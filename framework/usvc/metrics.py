"""Prometheus RED metrics for the server side and for egress calls.

Each service owns a :class:`CollectorRegistry`, so several services can live in
one process (tests, benchmarks) without sharing series. Labels use the route
template, never the raw path, and one fixed value for unmatched paths, so no
client can grow the label set. Label children are cached per known label
tuple: looking one up costs a dict hit instead of prometheus-client's locking.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds; tuned for a few-hop request chain: sub-millisecond to a slow upstream.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_ServerChildren = tuple[Counter, Histogram]
_ClientChildren = tuple[Counter, Histogram]


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


class Metrics:
    """The RED metrics of one service, exposed in Prometheus text format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: str, version: str, env: str, usvc_version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_server_requests",
            "HTTP requests served, by method, route template and status code.",
            ("method", "route", "code"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Time to serve an HTTP request, by method, route template and status code.",
            ("method", "route", "code"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "http_server_requests_in_flight",
            "HTTP requests being served now.",
            registry=self.registry,
        )
        self.egress_requests = Counter(
            "http_client_requests",
            "Egress HTTP calls by upstream host, method and outcome "
            "(the status code, or connect_error / timeout / error).",
            ("upstream", "method", "outcome"),
            registry=self.registry,
        )
        self.egress_duration = Histogram(
            "http_client_request_duration_seconds",
            "Time of one egress HTTP attempt, by upstream host, method and outcome.",
            ("upstream", "method", "outcome"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.build_info = Gauge(
            "usvc_build_info",
            "Always 1; labels say what runs.",
            ("service", "version", "env", "usvc_version"),
            registry=self.registry,
        )
        self.build_info.labels(service, version, env, usvc_version).set(1)
        self._server: dict[tuple[str, str, int], _ServerChildren] = {}
        self._client: dict[tuple[str, str, str], _ClientChildren] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._server.get(key)
        if children is None:
            code = str(status)
            children = (
                self.requests.labels(method, route, code),
                self.duration.labels(method, route, code),
            )
            self._server[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_egress(self, upstream: str, method: str, outcome: str, seconds: float) -> None:
        key = (upstream, method, outcome)
        children = self._client.get(key)
        if children is None:
            children = (
                self.egress_requests.labels(upstream, method, outcome),
                self.egress_duration.labels(upstream, method, outcome),
            )
            self._client[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
