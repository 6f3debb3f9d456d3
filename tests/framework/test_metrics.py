"""The RED series: Prometheus-correct counters and cumulative histograms."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from usvc.metrics import LATENCY_BUCKETS, Metrics


def families(metrics: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    found: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        found[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return found


def test_observations_land_in_le_buckets_cumulatively_with_count_and_sum() -> None:
    metrics = Metrics("front", "v1", "prod", "0")
    for seconds in (0.0005, 0.001, 0.003, 0.2, 30.0):
        metrics.observe_request("GET", "/", 200, seconds)
    samples = families(metrics)["http_server_request_duration_seconds"]
    buckets = {s[1]["le"]: s[2] for s in samples if s[0].endswith("_bucket")}
    assert buckets["0.001"] == 2  # le is inclusive: 0.001 counts in the 0.001 bucket
    assert buckets["0.005"] == 3
    assert buckets["0.25"] == 4
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 5
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    values = [buckets[k] for k in [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]]
    assert values == sorted(values)
    (count,) = [s[2] for s in samples if s[0].endswith("_count")]
    (total,) = [s[2] for s in samples if s[0].endswith("_sum")]
    assert count == 5
    assert abs(total - 30.2045) < 1e-9


def test_the_request_counter_agrees_with_the_histogram_per_label_set() -> None:
    metrics = Metrics("front", "v1", "prod", "0")
    for status in (200, 200, 503):
        metrics.observe_request("GET", "/x/{id}", status, 0.01)
    metrics.observe_egress("clock-svc", "GET", "connect_error", 0.002)
    counters = families(metrics)["http_server_requests"]
    by_code = {s[1]["code"]: s[2] for s in counters if s[0] == "http_server_requests_total"}
    assert by_code == {"200": 2.0, "503": 1.0}
    egress = families(metrics)["http_client_requests"]
    assert (
        "http_client_requests_total",
        {"upstream": "clock-svc", "method": "GET", "outcome": "connect_error"},
        1.0,
    ) in egress


def test_build_info_names_the_instance_apart_from_prometheus_own_instance_label() -> None:
    metrics = Metrics("front", "v1", "prod", "0.1.0", instance="front-7d9f-abcde")
    ((_, labels, value),) = families(metrics)["usvc_build_info"]
    assert value == 1
    assert labels == {
        "service": "front",
        "version": "v1",
        "env": "prod",
        "usvc_version": "0.1.0",
        "service_instance": "front-7d9f-abcde",
    }


def test_a_method_outside_the_known_ones_counts_as_other() -> None:
    metrics = Metrics("front", "v1", "prod", "0")
    for method in ("GET", "BREW", "PROPFIND", "GET"):
        metrics.observe_request(method, "unmatched", 404, 0.01)
    counters = families(metrics)["http_server_requests"]
    by_method = {s[1]["method"]: s[2] for s in counters if s[0] == "http_server_requests_total"}
    assert by_method == {"GET": 2.0, "OTHER": 2.0}
