"""The waterfall `usvc trace` prints, on spans written the way the collector writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from usvc_mesh.telemetry.collector import otlp_from_zipkin
from usvc_mesh.telemetry.waterfall import TraceNotFound, last_trace_id, render, trace

TRACE = "0af7651916cd43dd8448eb211c80319c"


def span(
    span_id: str, parent: str, name: str, start_ms: float, end_ms: float, **extra: object
) -> dict[str, object]:
    return {
        "traceId": TRACE,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": extra.get("kind", 2),
        "startTimeUnixNano": str(int(1_000_000_000_000 + start_ms * 1e6)),
        "endTimeUnixNano": str(int(1_000_000_000_000 + end_ms * 1e6)),
        "status": {"code": extra.get("status", 0)},
    }


def write(path: Path, service: str, *spans: dict[str, object]) -> None:
    request = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [{"spans": list(spans)}],
            }
        ]
    }
    with path.open("a") as out:
        out.write(json.dumps(request) + "\n")


@pytest.fixture
def spans_file(tmp_path: Path) -> Path:
    path = tmp_path / "spans-1.jsonl"
    # the child arrives before its parent, as batches from two processes do
    write(path, "core", span("b" * 16, "a" * 16, "GET /", 2.0, 6.0))
    write(path, "core", span("c" * 16, "b" * 16, "GET", 3.0, 5.0, kind=3, status=2))
    write(path, "front", span("a" * 16, "", "GET /", 0.0, 10.0))
    return path


def test_each_span_sits_under_its_parent_whatever_the_order_received(spans_file: Path) -> None:
    lines = render(trace([spans_file], TRACE), width=10).splitlines()
    assert lines[0] == f"trace {TRACE}: 3 spans, 10.0 ms, services core, front"
    assert [line.split()[0] for line in lines[2:]] == ["front", "core", "core"]
    assert "  GET /" in lines[3] and "    GET (client)" in lines[4]


def test_offsets_durations_status_and_bars_are_on_one_time_axis(spans_file: Path) -> None:
    rows = render(trace([spans_file], TRACE), width=10).splitlines()[2:]
    columns = [row.split("|")[0].split()[-3:] for row in rows]
    assert columns == [["0.0", "10.0", "unset"], ["2.0", "4.0", "unset"], ["3.0", "2.0", "ERROR"]]
    assert [row[row.index("|") :] for row in rows] == [
        "|██████████|",
        "|  ████    |",
        "|   ██     |",
    ]


def test_the_last_trace_is_the_one_that_began_last(spans_file: Path) -> None:
    later = "1" * 32
    write(spans_file, "x", {**span("d" * 16, "", "late", 50.0, 51.0), "traceId": later})
    assert last_trace_id([spans_file]) == later


def test_an_unknown_trace_is_named_in_the_error(spans_file: Path) -> None:
    with pytest.raises(TraceNotFound, match="no span of trace 42"):
        trace([spans_file], "42")


def test_envoys_zipkin_spans_become_otlp_spans_of_its_service() -> None:
    converted = otlp_from_zipkin(
        json.dumps(
            [
                {
                    "traceId": "463ac35c9f6413ad",
                    "id": "a2fb4a1d1a96d312",
                    "parentId": "0020000000000001",
                    "name": "front-svc:80/*",
                    "kind": "CLIENT",
                    "timestamp": 1_000_000,
                    "duration": 2500,
                    "localEndpoint": {"serviceName": "usvc-local-mesh"},
                    "tags": {"http.status_code": "503", "error": "true"},
                }
            ]
        ).encode()
    )
    (resource,) = converted["resourceSpans"]
    assert resource["resource"]["attributes"][0]["value"]["stringValue"] == "usvc-local-mesh"
    (otlp,) = resource["scopeSpans"][0]["spans"]
    assert otlp["traceId"] == "0000000000000000463ac35c9f6413ad"  # 64-bit ids padded
    assert (otlp["kind"], otlp["status"]["code"]) == (3, 2)
    assert int(otlp["endTimeUnixNano"]) - int(otlp["startTimeUnixNano"]) == 2_500_000
