"""bench/report.py on made-up runs: same-round ratios, target verdicts, markers, shape."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report
from bench.builds import listener_requests

from .checks import check_one_run, check_suite


def sample(round_no: int, rps: float, p50: float = 1.0, envoy: float = 0.0) -> dict[str, Any]:
    requests = int(rps * 10)
    cpu = {"server": 0.5} | ({"envoy": envoy * requests / 1e6} if envoy else {})
    return {
        "round": round_no,
        "started": 100.0 + round_no,
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p50 * 2,
        "requests": requests,
        "errors": 0,
        "cpu_s": cpu,
        "wrk_cpu_s": 0.1,
        "other_cores": 0.0,
    }


def row(build: str, *rps: float, pending: str | None = None) -> dict[str, Any]:
    samples = [] if pending else [sample(i + 1, v) for i, v in enumerate(rps)]
    return {"build": build, "description": build, "pending": pending, "samples": samples}


RUN: dict[str, Any] = {
    "command": "python -m bench",
    "commit": "abc1234",
    "started_unix": 100.0,
    "finished_unix": 200.0,
    "started": "2026-12-01 20:00:00",
    "finished": "2026-12-01 20:01:40",
    "cores": 2,
    "cpu_model": "test",
    "python": "3.11",
    "aiohttp": "3",
    "loop": "uvloop",
    "load_before": [0.1, 0.2, 0.3],
    "load_after": [0.4, 0.5, 0.6],
    "wrk": {
        "threads": 1,
        "connections": 32,
        "duration_s": 10,
        "warmup_s": 3.0,
        "rounds": 3,
        "probe_connections": 1,
    },
}


def single(usvc_100: tuple[float, ...], usvc_1: tuple[float, ...]) -> dict[str, Any]:
    return {
        "suite": "single",
        "rows": [
            row("bare", 1000, 2000, 1000),
            row("otel", 100, 400, 100),
            row("usvc-100", *usvc_100),
            row("usvc-100-batch", 300, 300, 300),
            row("usvc-1", *usvc_1),
        ],
    }


def test_ratios_are_medians_of_same_round_ratios_not_ratios_of_medians() -> None:
    suite = single((100, 200, 300), (700, 700, 700))
    suite["rows"][0] = row("bare", 300, 100, 200)
    # usvc-100 over bare by round: 0.33, 2.0, 1.5 -> 1.5 (the medians' ratio: 200 / 200 = 1.0);
    # over otel (100, 400, 100): 1.0, 0.5, 3.0 -> 1.0 (medians: 200 / 100 = 2.0).
    text = report.render_suite(suite, RUN)
    main = next(t for t in report.tables(text) if t.columns[0] == "build")
    assert main.column("× bare")["usvc-100"] == "1.50"
    assert main.column("× otel")["usvc-100"] == "1.00"
    targets = next(t for t in report.tables(text) if t.columns[0] == "target (issue 13)")
    assert targets.column("measured")["usvc-100 req/s ÷ otel"] == "1.00×"
    assert targets.column("per round")["usvc-100 req/s ÷ otel"] == "1.00 0.50 3.00"
    assert targets.column("result")["usvc-100 req/s ÷ otel"] == "**not met**"
    check_suite(suite, text)


def test_a_ratio_pairs_rounds_by_number_not_position() -> None:
    suite = single((250, 250, 250), (700, 700, 700))
    bare = suite["rows"][0]["samples"]
    bare.reverse()  # stored out of order: round 3, 2, 1
    bare[0]["rps"] = 700  # round 3 of bare
    measured = report.ratio(suite, "usvc-1", "bare")
    assert measured is not None
    assert measured.per_round == (0.7, 0.35, 1.0)
    assert measured.value == 0.7


@pytest.mark.parametrize(
    ("usvc_1", "verdict"),
    [((700, 1400, 700), "met"), ((699, 1398, 699), "**not met**")],
)
def test_a_target_at_its_goal_is_met_and_just_under_is_not(
    usvc_1: tuple[float, ...], verdict: str
) -> None:
    text = report.render_suite(single((250, 800, 250), usvc_1), RUN)
    targets = next(t for t in report.tables(text) if t.columns[0] == "target (issue 13)")
    assert targets.column("result")["usvc-1 req/s ÷ bare"] == verdict
    assert targets.column("goal")["usvc-1 req/s ÷ bare"] == "≥ 0.70×"
    assert targets.column("result")["usvc-100 req/s ÷ otel"] == "met"
    check_suite(single((250, 800, 250), usvc_1), text)


def test_a_pending_build_leaves_its_targets_not_measured() -> None:
    suite = single((250, 800, 250), (700, 1400, 700))
    suite["rows"][1] = row("otel", pending="opentelemetry-instrumentation is not installed")
    text = report.render_suite(suite, RUN)
    targets = next(t for t in report.tables(text) if t.columns[0] == "target (issue 13)")
    assert targets.column("result")["usvc-100 req/s ÷ otel"] == "not measured"
    assert "otel did not run: opentelemetry-instrumentation is not installed" in text
    check_suite(suite, text)


def chain() -> dict[str, Any]:
    rows = [row(b, 1000, 1000, 1000) for b in ("bare", "otel", "usvc", "usvc-batch")]
    rows[1] = row("otel", 400, 400, 400)
    mesh = {
        "build": "usvc+envoy",
        "description": "",
        "pending": None,
        "samples": [sample(r, 500, envoy=560.0 + r) for r in (1, 2, 3)],
        "probes": [sample(r, 200, p50=2.0 + 0.8 * r, envoy=500.0) for r in (1, 2, 3)],
    }
    rows[2]["probes"] = [sample(r, 400, p50=1.0) for r in (1, 2, 3)]
    return {"suite": "chain", "rows": [*rows, mesh]}


def test_chain_states_envoy_cost_and_every_chain_target() -> None:
    suite = chain()
    text = report.render_suite(suite, RUN)
    envoy = next(t for t in report.tables(text) if t.columns[0].startswith("Envoy"))
    # p50 added at 1 connection by round: 1.8, 2.6, 3.4 -> 2.6 ms, 0.65 per traversal
    assert envoy.column("1 connection")["p50 added"] == "+2.60 ms"
    assert envoy.column("1 connection")["p50 added per traversal"] == "+0.65 ms"
    assert envoy.column("32 connections")["Envoy CPU per request"] == "562 µs"
    targets = next(t for t in report.tables(text) if t.columns[0] == "target (issue 13)")
    assert targets.column("result") == {
        "usvc req/s ÷ otel": "met",  # 2.5
        "usvc req/s ÷ bare": "met",  # 1.0
        "Envoy CPU per traversal": "met",  # 562 / 4 = 140.5 µs
        "p50 added per traversal, 1 connection": "**not met**",  # 0.65 ms
    }
    check_suite(suite, text)


def test_per_traversal_divides_by_the_listener_passes_the_run_counted() -> None:
    # With a per-workload outbound and a per-replica inbound listener a hop crosses two:
    # Envoy counted 8 listener requests per wrk request, the chain still has 4 hops.
    suite = chain()
    mesh = suite["rows"][-1]
    for s in [*mesh["samples"], *mesh["probes"]]:
        s["listener_requests"] = 8 * s["requests"]
    text = report.render_suite(suite, RUN)
    envoy = next(t for t in report.tables(text) if t.columns[0].startswith("Envoy"))
    assert envoy.columns[0] == (
        "Envoy: usvc+envoy over usvc (4 hops, 8.00 listener traversals per request)"
    )
    loaded = envoy.column("32 connections")
    assert loaded["Envoy CPU per request"] == "562 µs"
    assert loaded["Envoy CPU per traversal"] == "70 µs"  # 562 / 8
    assert loaded["Envoy CPU per hop"] == "140 µs"  # 562 / 4
    assert envoy.column("1 connection")["p50 added per hop"] == "+0.65 ms"
    assert envoy.column("1 connection")["p50 added per traversal"] == "+0.33 ms"
    targets = next(t for t in report.tables(text) if t.columns[0] == "target (issue 13)")
    assert targets.column("measured")["Envoy CPU per traversal"] == "70 µs"
    check_suite(suite, text)


def test_results_without_the_listener_count_keep_four_traversals_and_no_hop_rows() -> None:
    text = report.render_suite(chain(), RUN)
    envoy = next(t for t in report.tables(text) if t.columns[0].startswith("Envoy"))
    assert envoy.columns[0] == "Envoy: usvc+envoy over usvc (4 traversals)"
    assert "Envoy CPU per hop" not in envoy.column("32 connections")


def test_one_run_check_rejects_a_sample_from_another_run() -> None:
    results: dict[str, Any] = {"format": 1, "run": RUN, "suites": [single((250,) * 3, (700,) * 3)]}
    check_one_run(results)
    results["suites"][0]["rows"][2]["samples"][1]["started"] = 50.0  # before the run began
    with pytest.raises(AssertionError, match="outside the run"):
        check_one_run(results)


def test_fill_replaces_only_between_markers_and_needs_them() -> None:
    text = "intro\n<!-- bench:single:start -->\nold\n<!-- bench:single:end -->\nafter\n"
    filled = report.fill(text, "single", "| a |\n|---|\n| 1 |")
    assert filled.startswith("intro\n") and filled.endswith("\nafter\n")
    assert report.extract(filled, "single") == "| a |\n|---|\n| 1 |"
    with pytest.raises(report.ReportError):
        report.fill(text, "chain", "x")


def test_shape_ignores_numbers_but_not_builds_or_columns() -> None:
    suite = single((250, 250, 250), (700, 700, 700))
    a = report.render_suite(suite, RUN)
    suite["rows"][2]["samples"][0]["rps"] = 9999
    assert report.shape(report.render_suite(suite, RUN)) == report.shape(a)
    del suite["rows"][3]
    assert report.shape(report.render_suite(suite, RUN)) != report.shape(a)


def test_listener_requests_sum_every_connection_manager_but_the_admins() -> None:
    stats = {
        "http.admin.downstream_rq_completed": "7",
        "http.gateway.downstream_rq_completed": "10",
        "http.outbound.downstream_rq_completed": "30",
        "http.inbound_front.v1.downstream_rq_completed": "10",
        "http.outbound.downstream_rq_2xx": "30",
        "listener.127.0.0.1_8080.http.gateway.downstream_rq_completed": "10",
    }
    assert listener_requests(stats) == 50
