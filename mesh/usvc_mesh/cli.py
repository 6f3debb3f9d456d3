"""``usvc up`` and ``usvc mesh …``: the local mesh from the command line.

Installed with the usvc framework, these are sub-commands of ``usvc`` (the
``usvc.commands`` entry point); alone, the same commands are ``usvc-mesh up``,
``usvc-mesh mesh use …``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .envoy import DEFAULT_REQUEST_HEADERS_TIMEOUT, OPENTELEMETRY, ZIPKIN
from .manifests import Layout, MeshError, load_documents
from .supervisor import LocalMesh, find_run_dir, read_state, send_command
from .telemetry import Telemetry
from .telemetry.cli import add_trace_command
from .validation import ERROR, Finding, validate_objects


def default_run_dir(root: Path) -> Path:
    return root / ".run" / "mesh"


def parse_env_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for item in items:
        workload, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or not workload or not key:
            raise SystemExit(f"usvc up: --env {item!r} is not WORKLOAD:NAME=VALUE")
        overrides.setdefault(workload, {})[key] = value
    return overrides


def parse_gateway(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)


def cmd_up(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    host, port = args.gateway
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(root)
    telemetry = Telemetry(root, run_dir) if args.telemetry else None

    def say(line: str) -> None:
        print(f"usvc up: {line}", flush=True)

    mesh = LocalMesh(
        Layout(root),
        scenario=args.scenario,
        gateway_host=host,
        gateway_port=port,
        run_dir=run_dir,
        env_overrides=parse_env_overrides(args.env or []),
        base_env={**_inherited_env(), **(telemetry.env if telemetry else {})},
        collector=telemetry.otlp_address if telemetry else (args.otlp or args.zipkin),
        tracer=ZIPKIN if args.zipkin and not telemetry else OPENTELEMETRY,
        request_headers_timeout=args.request_headers_timeout,
        report=say,
    )
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    try:
        findings = check_manifests(mesh.layout, mesh.scenario)
    except MeshError as exc:
        print(f"usvc up: {exc}", file=sys.stderr)
        return 1
    for finding in findings:
        print(f"usvc up: {finding}", file=sys.stderr)
    errors = [f for f in findings if f.level == ERROR]
    if errors:
        print(
            f"usvc up: {len(errors)} error(s) in the Istio objects; nothing started",
            file=sys.stderr,
        )
        return 1
    if findings and args.strict:
        print(
            f"usvc up: --strict: {len(findings)} Istio object(s) would not be applied locally",
            file=sys.stderr,
        )
        return 1
    # SIGHUP: the terminal closed; stop everything as Ctrl-C does.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        took = mesh.start()
        if telemetry is not None:
            telemetry.start(mesh)
    except (MeshError, ValueError) as exc:
        # ValueError: the translator's one-line error naming the object and field
        mesh.stop()
        print(f"usvc up: {exc}", file=sys.stderr)
        return 1
    for warning in mesh.warnings:
        print(f"usvc up: warning: {warning}", file=sys.stderr)
    print(f"{'workload':<24} {'listens on':<24} labels")
    for name, url, labels in mesh.describe():
        print(f"{name:<24} {url:<24} {labels}")
    assert mesh.ports is not None
    gateway = f"http://{mesh.ports.gateway_host}:{mesh.ports.gateway}/"
    if mesh.gateway is not None and mesh.gateway.listeners:
        gateway = mesh.gateway.listeners[0].url  # https:// when the first port is HTTPS
    print(f"envoy admin: http://127.0.0.1:{mesh.ports.admin}/   logs: {mesh.run_dir}")
    for line in describe_gateway(mesh):
        print(line)
    for line in telemetry.describe() if telemetry else []:
        print(line)
    choices = "|".join(mesh.layout.scenarios())
    print(f"scenario {mesh.scenario}; switch with: usvc mesh use <{choices}>")
    print(f"crashed workloads restart after {mesh.backoff.describe()}")
    print(f"ready in {took:.1f}s: curl {gateway}   (or -H 'x-dev-user: betaUser')", flush=True)
    status = 0
    try:
        mesh.run(lambda: stopping)
    except MeshError as exc:
        print(f"usvc up: {exc}; stopping", file=sys.stderr, flush=True)
        status = 1
    finally:
        print("stopping…", flush=True)
        mesh.stop()
        if telemetry is not None:  # last: it receives the spans flushed on the way out
            telemetry.stop()
    return status


def describe_gateway(mesh: LocalMesh) -> list[str]:
    """The gateway's listeners when the Gateways have more than one port or TLS."""
    made = mesh.gateway
    if made is None or (len(made.listeners) < 2 and not any(g.https for g in made.listeners)):
        return []
    lines = [
        f"gateway {listener.url:<26} Gateway port {listener.server_port}"
        + (" (HTTPS)" if listener.https else "")
        for listener in made.listeners
    ]
    if made.ca is not None:
        https = next((g.url for g in made.listeners if g.https), "https://127.0.0.1/")
        lines.append(f"gateway CA (made locally): {made.ca}   curl --cacert {made.ca} {https}")
    if made.client is not None:
        cert, key = made.client
        lines.append(f"client certificate for MUTUAL servers: --cert {cert} --key {key}")
    return lines


def check_manifests(layout: Layout, scenario: str) -> list[Finding]:
    """What ``usvc up`` says before it starts anything, one line per object.

    The manifests a cluster would get (the workloads, every file of ``mesh/`` such as
    security.yaml, the scenario's rules) through the one Istio validator: what Istio
    would reject (level ERROR), then each Istio object the local mesh does not apply
    (level NOT_APPLIED). The translator's own checks follow when the mesh starts.
    """
    mesh_files = sorted(
        p for p in (layout.manifests / "mesh").glob("*.yaml") if p.name != "kustomization.yaml"
    )
    paths = [*layout.workload_files(), *mesh_files, layout.scenario_file(scenario)]
    return validate_objects(load_documents(paths), namespace=layout.namespace, translate=False)


def _inherited_env() -> dict[str, str]:
    import os

    # Workloads need PATH/HOME and the OTEL_* the user set; not everything else.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k in keep or k.startswith("OTEL_")}


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    return find_run_dir(Path(args.root).resolve())


def cmd_use(args: argparse.Namespace) -> int:
    try:
        run_dir = _run_dir(args)
        state = read_state(run_dir)
        layout = Layout(
            Path(state["root"]),
            manifests_dir=Path(state["manifests"]),
            namespace=state.get("namespace", "usvc"),
        )
        findings = check_manifests(layout, args.scenario)
        for finding in findings:
            print(f"usvc mesh use: {finding}", file=sys.stderr)
        if any(f.level == ERROR for f in findings):
            print("usvc mesh use: errors in the Istio objects; nothing changed", file=sys.stderr)
            return 1
        done = send_command(run_dir, {"use": args.scenario}, print)
    except (MeshError, ValueError) as exc:
        print(f"usvc mesh use: {exc}", file=sys.stderr)
        return 1
    print(done)
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    if args.all == bool(args.workloads):
        print("usvc restart: name the workloads to restart, or --all", file=sys.stderr)
        return 2
    request = {"restart": "--all" if args.all else list(args.workloads)}
    try:
        done = send_command(_run_dir(args), request, print)
    except MeshError as exc:
        print(f"usvc restart: {exc}", file=sys.stderr)
        return 1
    print(done)
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    for name in Layout(Path(args.root).resolve()).scenarios():
        print(name)
    return 0


def add_commands(sub: Any) -> None:
    up = sub.add_parser("up", help="run the demo chain locally behind Envoy")
    up.add_argument("--scenario", default="current", help="a file of k8s/mesh/scenarios/")
    up.add_argument(
        "--gateway",
        type=parse_gateway,
        default=("127.0.0.1", 8080),
        help="HOST:PORT of the gateway listener (default 127.0.0.1:8080)",
    )
    up.add_argument(
        "--root", default=".", help="the workloads' working directory, holding k8s/ (default .)"
    )
    up.add_argument("--run-dir", default=None, help="logs and Envoy config (default .run/mesh)")
    reporting = up.add_mutually_exclusive_group()
    reporting.add_argument(
        "--otlp",
        type=parse_gateway,
        default=None,
        metavar="HOST:PORT",
        help="send Envoy's spans to an OTLP/HTTP collector's /v1/traces (Jaeger: 4318)",
    )
    reporting.add_argument(
        "--zipkin",
        type=parse_gateway,
        default=None,
        metavar="HOST:PORT",
        help="trace with Envoy's Zipkin tracer (B3 headers, Istio's zipkin provider) instead,"
        " to a Zipkin-compatible collector (Jaeger: 9411)",
    )
    up.add_argument(
        "--strict",
        action="store_true",
        help="refuse to start when an Istio object would not be applied locally",
    )
    up.add_argument(
        "--telemetry",
        action="store_true",
        help="also run Prometheus and a trace collector (see `usvc trace`)",
    )
    up.add_argument(
        "--env",
        action="append",
        metavar="WORKLOAD:NAME=VALUE",
        help="extra environment for one workload (repeatable)",
    )
    up.add_argument(
        "--request-headers-timeout",
        type=float,
        default=DEFAULT_REQUEST_HEADERS_TIMEOUT,
        metavar="SECONDS",
        help="the gateway closes a connection whose request head takes longer "
        f"(default {DEFAULT_REQUEST_HEADERS_TIMEOUT:g}; 0: no limit)",
    )
    up.set_defaults(func=cmd_up)
    add_trace_command(sub, default_run_dir)
    restart = sub.add_parser(
        "restart", help="rolling restart of workloads of the running mesh, losing no request"
    )
    restart.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="Deployment names")
    restart.add_argument("--all", action="store_true", help="every workload, one after another")
    restart.add_argument("--root", default=".", help="where to look for .run/mesh (and above)")
    restart.add_argument("--run-dir", default=None)
    restart.set_defaults(func=cmd_restart)
    mesh = sub.add_parser("mesh", help="control a running local mesh")
    mesh_sub = mesh.add_subparsers(dest="mesh_command", required=True)
    use = mesh_sub.add_parser("use", help="switch the running mesh to another scenario")
    use.add_argument("scenario", help="a file of k8s/mesh/scenarios/")
    use.add_argument("--root", default=".", help="where to look for .run/mesh (and above)")
    use.add_argument("--run-dir", default=None)
    use.set_defaults(func=cmd_use)
    scenarios = mesh_sub.add_parser("scenarios", help="list the scenarios")
    scenarios.add_argument("--root", default=".")
    scenarios.set_defaults(func=cmd_scenarios)


def main(argv: Sequence[str] | None = None) -> int:
    """``usvc-mesh``: the same commands without the usvc framework installed."""
    parser = argparse.ArgumentParser(prog="usvc-mesh", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
