"""``usvc up`` and ``usvc mesh …``: the local mesh from the command line.

Installed with the usvc framework, these are sub-commands of ``usvc`` (the
``usvc.commands`` entry point); alone, the same commands are ``usvc-mesh up``,
``usvc-mesh mesh use …``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .manifests import Layout, MeshError, load_documents
from .supervisor import LocalMesh
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
    mesh = LocalMesh(
        Layout(root),
        scenario=args.scenario,
        gateway_host=host,
        gateway_port=port,
        run_dir=run_dir,
        env_overrides=parse_env_overrides(args.env or []),
        base_env={**_inherited_env(), **(telemetry.env if telemetry else {})},
        zipkin=telemetry.zipkin if telemetry else args.zipkin,
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
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
    print(f"envoy admin: http://127.0.0.1:{mesh.ports.admin}/   logs: {mesh.run_dir}")
    for line in telemetry.describe() if telemetry else []:
        print(line)
    choices = "|".join(mesh.layout.scenarios())
    print(f"scenario {mesh.scenario}; switch with: usvc mesh use <{choices}>")
    print(f"ready in {took:.1f}s: curl {gateway}   (or -H 'x-dev-user: betaUser')", flush=True)
    reported: set[str] = set()
    try:
        while not stopping:
            time.sleep(0.25)
            for workload in mesh.workloads.values():
                if not workload.running() and workload.name not in reported:
                    reported.add(workload.name)
                    code = workload.process.returncode if workload.process else "?"
                    print(
                        f"usvc up: {workload.name} exited ({code}); last log lines:",
                        file=sys.stderr,
                    )
                    for line in workload.last_lines():
                        print(f"    {line}", file=sys.stderr)
            if mesh.proxy is not None and mesh.proxy.poll() is not None:
                print("usvc up: envoy exited; stopping", file=sys.stderr)
                break
    finally:
        print("stopping…", flush=True)
        mesh.stop()
        if telemetry is not None:  # last: it receives the spans flushed on the way out
            telemetry.stop()
    return 0


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


def cmd_use(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(root)
    try:
        mesh = LocalMesh.attach(run_dir)
        findings = check_manifests(mesh.layout, args.scenario)
        for finding in findings:
            print(f"usvc mesh use: {finding}", file=sys.stderr)
        if any(f.level == ERROR for f in findings):
            print("usvc mesh use: errors in the Istio objects; nothing changed", file=sys.stderr)
            return 1
        mesh.use(args.scenario)
    except (MeshError, ValueError) as exc:
        print(f"usvc mesh use: {exc}", file=sys.stderr)
        return 1
    print(f"scenario {args.scenario} applied")
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
    up.add_argument(
        "--zipkin",
        type=parse_gateway,
        default=None,
        metavar="HOST:PORT",
        help="send Envoy's spans to a Zipkin-compatible collector (Jaeger: 9411)",
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
    up.set_defaults(func=cmd_up)
    add_trace_command(sub, default_run_dir)
    mesh = sub.add_parser("mesh", help="control a running local mesh")
    mesh_sub = mesh.add_subparsers(dest="mesh_command", required=True)
    use = mesh_sub.add_parser("use", help="switch the running mesh to another scenario")
    use.add_argument("scenario", help="a file of k8s/mesh/scenarios/")
    use.add_argument("--root", default=".")
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
