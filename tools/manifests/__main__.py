"""``python -m tools.manifests write|check|validate|lint`` (see the package docstring)."""

from __future__ import annotations

import argparse
import sys

from . import __doc__ as usage
from .check import lint, validate_k8s
from .layout import check, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.manifests",
        description=usage,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["write", "check", "validate", "lint"])
    args = parser.parse_args(argv)
    if args.command == "write":
        for line in write():
            print(f"k8s/{line}")
        return 0
    if args.command == "check":
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("k8s/ is stale: run `make manifests` and commit k8s/", file=sys.stderr)
        return 1 if problems else 0
    problems = validate_k8s() if args.command == "validate" else lint()
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
