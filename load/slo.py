"""Service levels: read ``slo.yaml``, measure the run in Prometheus, judge, print a table.

Measured over the run's window: from the last scrape before the load to the
first scrape after it, as exact counter differences (``x - x offset window``;
``increase()`` would extrapolate to the window's edges and count traffic from
outside it). A series born during the run counts from zero.

* per usvc service (a "hop"): requests, 5xx answers and p50/p95/p99 from its
  RED metrics (usvc.metrics: ``http_server_requests_total`` and
  ``http_server_request_duration_seconds``), named by ``usvc_build_info`` of
  the same target, the join telemetry/prometheus/rules.yml uses;
* at the gateway: the same from the gateway proxy's own counters;
* by Locust: requests and failures from its stats CSV.

Quantiles come from histogram buckets (usvc's bounds include 0.1, 0.25, 0.5 s),
so they are interpolated within a bucket: a p99 below 250 ms means fewer than
1 % of requests took longer than the 250 ms bound.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .prometheus import query

QUANTILES = (0.5, 0.95, 0.99)
SERVICE_JOIN = "* on(job, instance) group_left(service) usvc_build_info"


class SloError(ValueError):
    """slo.yaml is malformed; the message names the key."""


@dataclass(frozen=True)
class Limits:
    max_5xx_ratio: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


@dataclass(frozen=True)
class GatewayQueries:
    requests: str = 'envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="gateway"}'
    errors: str = (
        'envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="gateway",'
        'envoy_response_code_class="5"}'
    )
    duration_ms_bucket: str = (
        'envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="gateway"}'
    )


@dataclass(frozen=True)
class Slo:
    locust_max_failure_ratio: float | None = 0.0
    gateway: Limits = Limits(max_5xx_ratio=0.0)
    gateway_queries: GatewayQueries = GatewayQueries()
    hop_default: Limits = Limits(p99_ms=250.0)
    hops: Mapping[str, Limits] = field(default_factory=dict)

    def for_hop(self, service: str) -> Limits:
        own = self.hops.get(service)
        if own is None:
            return self.hop_default
        changes = {f.name: getattr(own, f.name) for f in fields(Limits)}
        given = {k: v for k, v in changes.items() if v is not None}
        return replace(self.hop_default, **given)


def _number(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SloError(f"{where}: {value!r} is not a number >= 0")
    return float(value)


def _mapping(where: str, value: Any, known: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SloError(f"{where}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise SloError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")
    return value


def _limits(where: str, value: Any) -> Limits:
    names = {f.name for f in fields(Limits)}
    given = _mapping(where, value, names)
    return Limits(**{k: _number(f"{where}.{k}", v) for k, v in given.items()})


def load_slo(path: Path) -> Slo:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SloError(f"{path}: {exc}") from None
    top = _mapping(str(path), doc, {"locust", "gateway", "hops"})
    locust = _mapping("locust", top.get("locust"), {"max_failure_ratio"})
    limit_names = {f.name for f in fields(Limits)}
    query_names = {f.name for f in fields(GatewayQueries)}
    gateway = _mapping("gateway", top.get("gateway"), limit_names | query_names)
    for name in query_names & set(gateway):
        if not isinstance(gateway[name], str):
            raise SloError(f"gateway.{name}: expected a PromQL series selector")
    hops = _mapping("hops", top.get("hops"), set(top.get("hops") or {}))
    return Slo(
        locust_max_failure_ratio=_number(
            "locust.max_failure_ratio", locust.get("max_failure_ratio")
        ),
        gateway=_limits("gateway", {k: v for k, v in gateway.items() if k in limit_names}),
        gateway_queries=GatewayQueries(**{k: v for k, v in gateway.items() if k in query_names}),
        hop_default=_limits("hops.default", hops.get("default")),
        hops={name: _limits(f"hops.{name}", v) for name, v in hops.items() if name != "default"},
    )


@dataclass(frozen=True)
class Measured:
    """One row: a hop, the gateway or Locust; latencies in seconds."""

    name: str
    requests: float | None
    errors: float | None  # 5xx answers (Locust: failures)
    quantiles: Mapping[float, float | None] = field(default_factory=dict)

    @property
    def error_ratio(self) -> float | None:
        if self.requests is None or self.errors is None or self.requests <= 0:
            return None
        return self.errors / self.requests


def _finite(value: str) -> float | None:
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


def delta(selector: str, window_ms: int) -> str:
    """PromQL: how much the counters of ``selector`` grew in the last ``window_ms``."""
    return f"({selector} - ({selector} offset {window_ms}ms or {selector} * 0))"


def _by_service(url: str, expr: str, at: float) -> dict[str, float | None]:
    return {r["metric"].get("service", "?"): _finite(r["value"][1]) for r in query(url, expr, at)}


def measure_hops(url: str, window_ms: int, at: float) -> list[Measured]:
    """Every usvc service that served requests in the ``window_ms`` before ``at``."""

    def per_service(selector: str) -> str:
        return f"sum by (service) ({delta(selector, window_ms)} {SERVICE_JOIN})"

    requests = _by_service(url, per_service("http_server_requests_total"), at)
    errors = _by_service(url, per_service('http_server_requests_total{code=~"5.."}'), at)
    buckets = delta("http_server_request_duration_seconds_bucket", window_ms)
    quantiles = {
        q: _by_service(
            url,
            f"histogram_quantile({q}, sum by (service, le) ({buckets} {SERVICE_JOIN}))",
            at,
        )
        for q in QUANTILES
    }
    return [
        Measured(
            service,
            count,
            errors.get(service) or 0.0,
            {q: quantiles[q].get(service) for q in QUANTILES},
        )
        for service, count in sorted(requests.items())
        if count
    ]


def measure_gateway(url: str, queries: GatewayQueries, window_ms: int, at: float) -> Measured:
    def one(expr: str) -> float | None:
        found = query(url, expr, at)
        return _finite(found[0]["value"][1]) if found else None

    requests = one(f"sum({delta(queries.requests, window_ms)})")
    errors = one(f"sum({delta(queries.errors, window_ms)})")
    buckets = delta(queries.duration_ms_bucket, window_ms)
    quantiles = {
        q: one(f"histogram_quantile({q}, sum by (le) ({buckets})) / 1000") for q in QUANTILES
    }
    # No 5xx series at all is no 5xx, when the gateway answered anything.
    return Measured("gateway", requests, 0.0 if errors is None and requests else errors, quantiles)


def _percentile(times: Mapping[float, int], q: float) -> float | None:
    """The ``q`` quantile (seconds) of Locust's histogram of rounded milliseconds."""
    total = sum(times.values())
    if total == 0:
        return None
    seen = 0
    for ms, count in sorted(times.items()):
        seen += count
        if seen >= q * total:
            return ms / 1000
    return max(times) / 1000


def read_locust(stats_json: Path) -> list[Measured]:
    """Locust's final stats (``--json-file``): one row per request name, then the total.

    Its CSV files are rewritten once a second while it runs and can miss the
    last requests; the JSON file is written once, after every user stopped.
    """
    entries = json.loads(stats_json.read_text())
    rows, merged = [], Counter[float]()
    requests = failures = 0
    for entry in sorted(entries, key=lambda e: str(e["name"])):
        times = {float(ms): int(count) for ms, count in entry["response_times"].items()}
        merged.update(times)
        requests += entry["num_requests"]
        failures += entry["num_failures"]
        rows.append(
            Measured(
                f"locust {entry['name']}",
                float(entry["num_requests"]),
                float(entry["num_failures"]),
                {q: _percentile(times, q) for q in QUANTILES},
            )
        )
    total = Measured(
        "locust total",
        float(requests),
        float(failures),
        {q: _percentile(merged, q) for q in QUANTILES},
    )
    return [*rows, total]


@dataclass(frozen=True)
class Check:
    what: str
    measured: str
    level: str
    passed: bool


def _ratio_check(what: str, row: Measured | None, limit: float) -> Check:
    ratio = row.error_ratio if row is not None else None
    if ratio is None:
        return Check(what, "no data", f"<= {limit:.2%}", False)
    return Check(what, f"{ratio:.2%}", f"<= {limit:.2%}", ratio <= limit)


def _latency_check(what: str, row: Measured | None, q: float, limit_ms: float) -> Check:
    value = row.quantiles.get(q) if row is not None else None
    if value is None:
        return Check(what, "no data", f"< {limit_ms:g} ms", False)
    return Check(what, f"{value * 1000:.1f} ms", f"< {limit_ms:g} ms", value * 1000 < limit_ms)


def _limit_checks(name: str, row: Measured | None, limits: Limits) -> list[Check]:
    checks = []
    if limits.max_5xx_ratio is not None:
        checks.append(_ratio_check(f"{name} 5xx", row, limits.max_5xx_ratio))
    if limits.p95_ms is not None:
        checks.append(_latency_check(f"{name} p95", row, 0.95, limits.p95_ms))
    if limits.p99_ms is not None:
        checks.append(_latency_check(f"{name} p99", row, 0.99, limits.p99_ms))
    return checks


def judge(
    slo: Slo, locust: Measured | None, gateway: Measured | None, hops: list[Measured] | None
) -> list[Check]:
    """Every check of ``slo``; ``gateway``/``hops`` None: not measured (no Prometheus)."""
    checks = []
    if slo.locust_max_failure_ratio is not None:
        checks.append(_ratio_check("locust failures", locust, slo.locust_max_failure_ratio))
    if gateway is not None:
        checks.extend(_limit_checks("gateway", gateway, slo.gateway))
    if hops is not None:
        if not hops:
            checks.append(Check("hops", "no usvc service served a request", "some", False))
        for hop in hops:
            checks.extend(_limit_checks(hop.name, hop, slo.for_hop(hop.name)))
    return checks


def measured_table(rows: list[Measured]) -> list[str]:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f}"

    lines = [
        f"{'':<28} {'requests':>9} {'5xx/fail':>9} {'ratio':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    ]
    for row in rows:
        ratio = row.error_ratio
        lines.append(
            f"{row.name:<28} {_count(row.requests):>9} {_count(row.errors):>9} "
            f"{'-' if ratio is None else f'{ratio:.2%}':>8} "
            + " ".join(f"{ms(row.quantiles.get(q)):>8}" for q in QUANTILES)
        )
    return lines


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def checks_table(checks: list[Check]) -> list[str]:
    lines = [f"{'check':<28} {'measured':>12} {'SLO':>12}  result"]
    for check in checks:
        lines.append(
            f"{check.what:<28} {check.measured:>12} {check.level:>12}  "
            f"{'PASS' if check.passed else 'FAIL'}"
        )
    return lines
