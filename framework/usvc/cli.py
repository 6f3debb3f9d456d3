"""The ``usvc`` command.

``usvc run module:attr``  serve a :class:`usvc.Service` (or ``web.Application``)
Other packages add commands through the ``usvc.commands`` entry point group:
usvc-mesh adds ``usvc up`` and ``usvc mesh …`` (the local mesh).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from .settings import SettingsError


def load_service(target: str) -> object:
    """Import ``module:attr`` (``attr`` defaults to ``svc``) from the current directory too."""
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr or "svc")
    except AttributeError:
        raise SystemExit(f"usvc: {module_name} has no attribute {attr or 'svc'!r}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .service import Service

    try:
        target = load_service(args.target)
    except SettingsError as exc:
        print(f"usvc: configuration error: {exc}", file=sys.stderr)
        return 2
    if isinstance(target, Service):
        target.run(host=args.host, port=args.port)
    elif isinstance(target, web.Application):
        web.run_app(target, host=args.host or "127.0.0.1", port=args.port or 8080)
    else:
        print(
            f"usvc: {args.target} is neither a usvc.Service nor a web.Application", file=sys.stderr
        )
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usvc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve a service: usvc run package.module:svc")
    run.add_argument("target", help="module:attribute of a usvc.Service")
    run.add_argument("--host", default=None, help="overrides HOST")
    run.add_argument("--port", type=int, default=None, help="overrides PORT")
    run.set_defaults(func=cmd_run)
    for plugin in entry_points(group="usvc.commands"):
        plugin.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
