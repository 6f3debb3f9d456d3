"""Prometheus RED metrics for the server side and for egress calls.

Each service owns a :class:`CollectorRegistry`, so several services can live in
one process (tests, benchmarks) without sharing series. Labels use the route
template, never the raw path, and one fixed value for unmatched paths, so no
client can grow the label set.

The request counters and latency histograms are kept by :class:`RedSeries`,
not by prometheus-client's Counter and Histogram: those take a lock and walk
every bucket on each observation, and the counter repeats the histogram's
count. A service's requests and its scrapes all run on one event loop, so
plain lists suffice, and the families are built when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds; tuned for a few-hop request chain: sub-millisecond to a slow upstream.
# Distinct (method, route, status) whose series is kept bound.
_BOUND_SERIES = 1024
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


def _add(series: list[float], bounds: Sequence[float], seconds: float) -> None:
    """Count one observation of ``seconds`` into ``series`` (a :meth:`RedSeries.series`)."""
    series[bisect_left(bounds, seconds)] += 1
    series[-1] += seconds


class RedSeries(Collector):
    """A request counter and a latency histogram over the same labels.

    Exposed as ``<name>_total`` (counter) and ``<histogram>`` (buckets, sum,
    count), exactly as a prometheus-client Counter and Histogram would be.
    """

    def __init__(
        self,
        counter: tuple[str, str],
        histogram: tuple[str, str],
        labels: Sequence[str],
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.counter_name, self.counter_help = counter
        self.histogram_name, self.histogram_help = histogram
        self.labels = list(labels)
        self.bounds = tuple(buckets)
        # label values -> [count per bucket (the last one is +Inf)..., sum]
        self._series: dict[tuple[str, ...], list[float]] = {}

    def series(self, labels: tuple[str, ...]) -> list[float]:
        """The counts of one label set ([per bucket..., +Inf, sum]), for observing into."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self.bounds) + 2)
        return series

    def count(self, labels: tuple[str, ...]) -> int:
        series = self._series.get(labels)
        return 0 if series is None else int(sum(series[:-1]))

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(self.counter_name, self.counter_help, labels=self.labels)
        histogram = HistogramMetricFamily(
            self.histogram_name, self.histogram_help, labels=self.labels
        )
        edges = [*(f"{bound}" for bound in self.bounds), "+Inf"]
        for labels, series in self._series.items():
            cumulative, buckets = 0.0, []
            for edge, count in zip(edges, series[:-1], strict=True):
                cumulative += count
                buckets.append((edge, cumulative))
            counter.add_metric(list(labels), cumulative)
            histogram.add_metric(list(labels), buckets, series[-1])
        yield counter
        yield histogram

    def describe(self) -> Iterable[Metric]:
        return []


class Metrics:
    """The RED metrics of one service, exposed in Prometheus text format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self, service: str, version: str, env: str, usvc_version: str, *, instance: str = ""
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.server = RedSeries(
            ("http_server_requests", "HTTP requests served, by method, route template and code."),
            (
                "http_server_request_duration_seconds",
                "Time to serve an HTTP request, by method, route template and status code.",
            ),
            ("method", "route", "code"),
        )
        self.egress = RedSeries(
            (
                "http_client_requests",
                "Egress HTTP attempts by upstream host, method and outcome "
                "(the status code, or connect_error / timeout).",
            ),
            (
                "http_client_request_duration_seconds",
                "Time of one egress HTTP attempt, by upstream host, method and outcome.",
            ),
            ("upstream", "method", "outcome"),
        )
        self.registry.register(self.server)
        self.registry.register(self.egress)
        self.in_flight = Gauge(
            "http_server_requests_in_flight",
            "HTTP requests being served now.",
            registry=self.registry,
        )
        # service_instance, not instance: Prometheus gives every scraped series
        # the target's own `instance` label, and would rename ours.
        self.build_info = Gauge(
            "usvc_build_info",
            "Always 1; labels say what runs.",
            ("service", "version", "env", "usvc_version", "service_instance"),
            registry=self.registry,
        )
        self.build_info.labels(service, version, env, usvc_version, instance).set(1)
        # (method as sent, route, status) -> its series, bound on first use: a
        # request then costs one lookup, not a label tuple and two.
        self._bound: dict[tuple[str, str, int], list[float]] = {}
        self._bounds = self.server.bounds

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a request; ``method`` as the client sent it (unknown ones count as OTHER)."""
        series = self._bound.get((method, route, status))
        if series is None:
            series = self.server.series((method_label(method), route, str(status)))
            if len(self._bound) < _BOUND_SERIES:  # the client chooses the method
                self._bound[(method, route, status)] = series
        _add(series, self._bounds, seconds)

    def observe_egress(self, upstream: str, method: str, outcome: str, seconds: float) -> None:
        """Count one egress attempt (the series looked up in place: one call per attempt)."""
        egress = self.egress
        labels = (upstream, method, outcome)
        series = egress._series.get(labels) or egress.series(labels)
        _add(series, egress.bounds, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
