"""`usvc up --telemetry` for real: the collector keeps every hop's spans, `usvc trace` draws them.

One `usvc up --telemetry` (the command, as a user runs it) with core prod's
time source pointed at a zone the worldtimeapi stand-in does not know, so that
core answers from its fallback; then one betaUser request (front, middle dev,
core test, clock) and one plain request (core prod falls back to clock).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import ROOT, free_port, http_ok
from usvc_mesh.procs import terminate
from usvc_mesh.telemetry.waterfall import Span, read_spans, spans_files, trace

from .conftest import MISSING, PROMETHEUS

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop

USVC = str(Path(sys.executable).with_name("usvc"))
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MISSING_ZONE = "http://worldtimeapi.org/api/timezone/Nowhere/Atlantis"
# Envoy's spans name the sidecar, as istiod's node.cluster would: <app>.<namespace>.
GATEWAY = "istio-ingressgateway.istio-ingress"
SIDECARS = {f"{app}.usvc" for app in ("front", "middle", "core", "clock")}
ENVOYS = {GATEWAY, *SIDECARS}


@dataclass(frozen=True)
class Run:
    run_dir: Path
    collector: str
    beta_trace: str
    plain_trace: str

    def usvc_trace(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [USVC, "trace", "--run-dir", str(self.run_dir), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def spans(self, trace_id: str) -> list[Span]:
        return trace(spans_files(self.run_dir / "telemetry"), trace_id)


def get_json(url: str, headers: dict[str, str]) -> dict[str, str]:
    request = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    with DIRECT.open(request, timeout=10) as resp:
        body: dict[str, str] = json.load(resp)
    return body


def wait_for_spans(run_dir: Path, trace_id: str, envoy_spans: int, timeout: float = 20) -> None:
    """Until Envoy's spans of the trace are in too (its Zipkin tracer flushes every 5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = spans_files(run_dir / "telemetry")
        spans = [s for s in read_spans(files) if s.trace_id == trace_id] if files else []
        if sum(s.service in ENVOYS for s in spans) >= envoy_spans:
            return
        time.sleep(0.25)
    raise AssertionError(f"Envoy's spans of {trace_id} did not arrive in {timeout:g}s")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if PROMETHEUS is None:  # `usvc up --telemetry` starts one
        pytest.skip(MISSING)
    tmp = tmp_path_factory.mktemp("traces")
    gateway = free_port()
    out = tmp / "usvc-up.out"
    with out.open("w") as stdout:
        process = subprocess.Popen(
            [
                USVC,
                "up",
                "--telemetry",
                f"--gateway=127.0.0.1:{gateway}",
                f"--run-dir={tmp / 'run'}",
                f"--env=core-prod:UPSTREAM_URI={MISSING_ZONE}",
            ],
            cwd=ROOT,
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "ready in" not in out.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"usvc up --telemetry did not start:\n{out.read_text()}")
            time.sleep(0.1)
        printed = out.read_text()
        (traces_line,) = [line for line in printed.splitlines() if line.startswith("traces:")]
        collector = traces_line.split()[1].removesuffix("/v1/traces")
        url = f"http://127.0.0.1:{gateway}/"
        beta = get_json(url, {"x-dev-user": "betaUser"})["trace_id"]
        plain = get_json(url, {})["trace_id"]
        # The gateway, then an outbound and an inbound sidecar span per hop.
        wait_for_spans(tmp / "run", beta, envoy_spans=8)
        wait_for_spans(tmp / "run", plain, envoy_spans=9)  # worldtimeapi: no inbound
        yield Run(tmp / "run", collector, beta, plain)
    finally:
        terminate(process, timeout=30)


def test_usvc_up_prints_where_traces_and_prometheus_are(run: Run) -> None:
    assert http_ok(f"{run.collector}/healthz")
    printed = (run.run_dir.parent / "usvc-up.out").read_text()
    assert "prometheus: http://127.0.0.1:" in printed
    assert "rules: telemetry/prometheus/rules.yml" in printed


def test_trace_last_draws_every_hop_of_the_last_request(run: Run) -> None:
    shown = run.usvc_trace("--last")
    assert shown.returncode == 0, shown.stderr
    head, columns, *rows = shown.stdout.splitlines()
    assert head.startswith(f"trace {run.plain_trace}:")
    assert columns.split() == ["service", "span", "start", "ms", "dur", "ms", "status"]
    services = [row.split()[0] for row in rows]
    # gateway -> front -> middle -> core -> worldtimeapi (404) -> clock (fallback)
    for service in ("front", "middle", "core", "clock"):
        assert services.count(service) >= 1, shown.stdout
    assert services.count(GATEWAY) == 1, shown.stdout
    # front, middle, core inbound; front, middle, core out, core out again; clock inbound
    assert sum(services.count(name) for name in SIDECARS) == 8, shown.stdout
    assert all(row.rstrip().endswith("|") for row in rows)


def test_trace_by_id_draws_the_betauser_path_with_one_server_span_per_hop(run: Run) -> None:
    shown = run.usvc_trace(run.beta_trace)
    assert shown.returncode == 0, shown.stderr
    spans = run.spans(run.beta_trace)
    servers = {
        (s.service, s.resource.get("deployment.environment"))
        for s in spans
        if s.kind == "server" and s.service not in ENVOYS
    }
    assert servers == {("front", "prod"), ("middle", "dev"), ("core", "test"), ("clock", "prod")}
    assert len(shown.stdout.splitlines()) == 2 + len(spans)


def test_the_waterfall_nests_each_hop_under_its_caller(run: Run) -> None:
    """Each hop: the caller's client span, its sidecar's outbound span, the callee's inbound.

    istio.io Distributed Tracing overview: the sidecars "automatically send"
    spans; each sidecar Envoy reports a client span for the call out of its
    pod and a server span for the call into it (Envoy's HCM span kind follows
    the listener's traffic_direction), named ``<app>.<namespace>`` after
    istiod's node.cluster.
    """
    spans = {s.span_id: s for s in run.spans(run.beta_trace)}
    clock = next(s for s in spans.values() if s.service == "clock" and s.kind == "server")
    chain = []
    span: Span | None = clock
    while span is not None:
        chain.append((span.service, span.kind))
        span = spans.get(span.parent_id)
    assert chain == [
        ("clock", "server"),
        ("clock.usvc", "server"),
        ("core.usvc", "client"),
        ("core", "client"),
        ("core", "server"),
        ("core.usvc", "server"),
        ("middle.usvc", "client"),
        ("middle", "client"),
        ("middle", "server"),
        ("middle.usvc", "server"),
        ("front.usvc", "client"),
        ("front", "client"),
        ("front", "server"),
        ("front.usvc", "server"),
        (GATEWAY, "client"),
    ]


def test_sidecar_spans_carry_istios_workload_tags(run: Run) -> None:
    """istiod tags each sidecar span with the workload's canonical service and namespace.

    pilot/pkg/networking/core/tracing.go (istio.canonical_service, istio.namespace).
    """
    for span in run.spans(run.beta_trace):
        if span.service in SIDECARS:
            app = span.service.removesuffix(".usvc")
            assert span.attributes["istio.canonical_service"] == app
            assert span.attributes["istio.namespace"] == "usvc"


def test_server_spans_carry_the_dev_user_the_scenario_and_the_variant(run: Run) -> None:
    for span in run.spans(run.beta_trace):
        if span.kind == "server" and span.service not in ENVOYS:
            assert span.attributes["usvc.dev_user"] == "betaUser", span.service
            assert span.attributes["usvc.scenario"] == "current"
            assert span.resource["service.version"].startswith("v")


def test_the_time_source_span_marks_the_failure_and_the_fallback(run: Run) -> None:
    spans = run.spans(run.plain_trace)
    (source,) = [s for s in spans if s.name == "GET worldtimeapi.org"]
    assert (source.service, source.kind, source.status) == ("core", "client", "ERROR")
    assert source.attributes["usvc.outcome"] == "http_404"
    assert source.attributes["usvc.fallback"] is True
    (core,) = [s for s in spans if s.service == "core" and s.kind == "server"]
    assert core.attributes["usvc.fallback"] is True


def test_the_trace_id_of_an_access_log_line_leads_to_its_waterfall(run: Run) -> None:
    lines = [  # one log per replica: front-1.log, front-2.log, ...
        json.loads(line)
        for path in run.run_dir.glob("front-*.log")
        for line in path.read_text().splitlines()
    ]
    (access,) = [line for line in lines if line.get("trace_id") == run.beta_trace]
    shown = run.usvc_trace(access["trace_id"])
    assert shown.returncode == 0 and run.beta_trace in shown.stdout


def test_trace_names_the_trace_it_cannot_find(run: Run) -> None:
    shown = run.usvc_trace("0123456789abcdef0123456789abcdef")
    assert shown.returncode == 1
    assert "no span of trace 0123456789abcdef0123456789abcdef" in shown.stderr


def test_the_collector_takes_otlp_json_as_well_as_protobuf(run: Run) -> None:
    trace_id = "5b8efff798038103d269b633813fc60c"
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "x"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": "eee19b7ec3c1b174",
                                "name": "by hand",
                                "kind": 2,
                                "startTimeUnixNano": "1000000000",
                                "endTimeUnixNano": "1002000000",
                            }
                        ]
                    }
                ],
            }
        ]
    }
    request = urllib.request.Request(
        f"{run.collector}/v1/traces",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with DIRECT.open(request, timeout=5) as resp:
        assert resp.status == 200
    shown = run.usvc_trace(trace_id)
    assert "by hand" in shown.stdout and "2.0" in shown.stdout


def test_the_collector_answers_400_to_a_body_that_is_not_otlp(run: Run) -> None:
    request = urllib.request.Request(
        f"{run.collector}/v1/traces",
        data=b"\xff\xff not protobuf",
        headers={"Content-Type": "application/x-protobuf"},
    )
    with pytest.raises(urllib.error.HTTPError) as failed:
        DIRECT.open(request, timeout=5)
    assert failed.value.code == 400
    failed.value.close()  # an HTTPError holds the response, and its socket, open
