"""``python -m tools.istio_fields [--write | --check]``: docs/istio-fields.md from the code.

Without an option it prints the table; ``--write`` writes docs/istio-fields.md;
``--check`` exits 1 when the file differs from what the code says now
(tests/mesh/test_istio_fields.py does the same). See usvc_mesh.istio_fields.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from usvc_mesh.istio_fields import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "istio-fields.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.istio_fields", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {DOC.name}")
    group.add_argument("--check", action="store_true", help=f"fail when {DOC.name} differs")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC}")
    elif args.check:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(
                f"{DOC} is out of date: run python -m tools.istio_fields --write", file=sys.stderr
            )
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
