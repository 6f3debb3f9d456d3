"""A stand-in for Istio's sidecars: crafted istio_* series, in the shape Istio emits them.

No cluster here, so the cluster dashboard (helm/usvc/dashboards/usvc-istio.json)
is checked against this: ``istio_requests_total`` and
``istio_request_duration_milliseconds`` with Istio's standard labels and
default buckets (https://istio.io/latest/docs/reference/config/metrics/),
growing at fixed rates from start, for the demo's calls — gateway to front,
front to middle (20 % v2, 80 % v1), middle to core, core to worldtimeapi.org
(a ServiceEntry, a tenth of the calls unanswered: response_code 0) — each
reported by the destination's sidecar and by the source's.

``python -m tests.telemetry.istio_metrics PORT`` serves them on /metrics.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

from aiohttp import web

NAMESPACE = "usvc"
# Istio's default buckets for istio_request_duration_milliseconds.
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
# (source service, source version, destination service, destination version,
#  destination host, response code, requests per second, milliseconds each)
CALLS = [
    ("istio-ingressgateway", "unknown", "front", "v1", "front-svc", "200", 10.0, 12),
    ("front", "v1", "middle", "v1", "middleware-svc", "200", 7.8, 8),
    ("front", "v1", "middle", "v1", "middleware-svc", "503", 0.2, 3),
    ("front", "v1", "middle", "v2", "middleware-svc", "200", 2.0, 9),
    ("middle", "v1", "core", "v1", "core-svc", "200", 8.0, 4),
    ("middle", "v2", "core", "v1", "core-svc", "200", 2.0, 4),
    ("core", "v1", "worldtimeapi.org", "unknown", "worldtimeapi.org", "200", 9.0, 40),
    ("core", "v1", "worldtimeapi.org", "unknown", "worldtimeapi.org", "0", 1.0, 2000),
]


def labels(call: tuple[str, str, str, str, str, str, float, int], reporter: str) -> str:
    src, src_version, dst, dst_version, host, code, _, _ = call
    external = host == dst  # a ServiceEntry host: no workload behind it
    fqdn = host if external else f"{host}.{NAMESPACE}.svc.cluster.local"
    pairs = {
        "reporter": reporter,
        "source_workload": f"{src}-{src_version}" if src_version != "unknown" else src,
        "source_workload_namespace": NAMESPACE,
        "source_principal": f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{src}",
        "source_app": src,
        "source_version": src_version,
        "source_canonical_service": src,
        "source_canonical_revision": src_version,
        "source_cluster": "Kubernetes",
        "destination_workload": "unknown" if external else f"{dst}-{dst_version}",
        "destination_workload_namespace": "unknown" if external else NAMESPACE,
        "destination_principal": "unknown"
        if external
        else f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{dst}",
        "destination_app": "unknown" if external else dst,
        "destination_version": dst_version,
        "destination_service": fqdn,
        "destination_service_name": host,
        "destination_service_namespace": "unknown" if external else NAMESPACE,
        "destination_canonical_service": dst,
        "destination_canonical_revision": dst_version,
        "destination_cluster": "unknown" if external else "Kubernetes",
        "request_protocol": "http",
        "response_code": code,
        "grpc_response_status": "",
        "response_flags": "UF" if code == "0" else "-",
        "connection_security_policy": "unknown" if reporter == "source" else "mutual_tls",
    }
    return ",".join(f'{k}="{v}"' for k, v in pairs.items())


def exposition(elapsed: float) -> Iterator[str]:
    yield "# TYPE istio_requests_total counter"
    for call in CALLS:
        for reporter in ("source", "destination"):
            if reporter == "destination" and call[2] == call[4]:
                continue  # nothing on the far side of a ServiceEntry reports
            yield f"istio_requests_total{{{labels(call, reporter)}}} {int(call[6] * elapsed)}"
    yield "# TYPE istio_request_duration_milliseconds histogram"
    for call in CALLS:
        for reporter in ("source", "destination"):
            if reporter == "destination" and call[2] == call[4]:
                continue
            count = int(call[6] * elapsed)
            base = labels(call, reporter)
            for bound in BUCKETS:
                inside = count if call[7] <= bound else 0
                yield f'istio_request_duration_milliseconds_bucket{{{base},le="{bound}"}} {inside}'
            yield f'istio_request_duration_milliseconds_bucket{{{base},le="+Inf"}} {count}'
            yield f"istio_request_duration_milliseconds_sum{{{base}}} {count * call[7]}"
            yield f"istio_request_duration_milliseconds_count{{{base}}} {count}"


def app() -> web.Application:
    started = time.monotonic()

    async def metrics(request: web.Request) -> web.Response:
        text = "\n".join(exposition(time.monotonic() - started)) + "\n"
        return web.Response(text=text, content_type="text/plain")

    application = web.Application()
    application.router.add_get("/metrics", metrics)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
