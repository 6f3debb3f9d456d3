"""``python -m bench._profiled KIND``: ``python -m bench.server KIND`` under a cProfile that
signals switch on and off (what bench/calls.py measures a hop with).

The profiler starts off. SIGUSR1 switches it on; SIGUSR2 switches it off and writes its
statistics (pstats' marshal format) to ``$BENCH_PROFILE_OUT``. Each switch is acknowledged by a
file beside it, so the caller knows when to send the counted requests and when to read:
``$BENCH_PROFILE_OUT.on`` once the profiler is on, then ``$BENCH_PROFILE_OUT`` itself, written
under another name and renamed into place once complete. The acknowledgement is written before
the profiler goes on and the profiler is off before the statistics are written, so neither is
counted. Python runs the handlers in the main thread between two bytecodes, never inside a
request's synchronous step; the caller sends them while no request is in flight.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from . import server

OUT_ENV = "BENCH_PROFILE_OUT"


def on_ack(out: Path) -> Path:
    """The file that says the profiler is on."""
    return out.with_name(out.name + ".on")


def install(out: Path) -> cProfile.Profile:
    """A profiler, off, that SIGUSR1 switches on and SIGUSR2 off (writing ``out``)."""
    profile = cProfile.Profile()

    def switch_on(signum: int, frame: FrameType | None) -> None:
        on_ack(out).touch()
        profile.enable()

    def switch_off(signum: int, frame: FrameType | None) -> None:
        profile.disable()
        partial = out.with_name(out.name + ".partial")
        profile.dump_stats(partial)
        partial.rename(out)

    signal.signal(signal.SIGUSR1, switch_on)
    signal.signal(signal.SIGUSR2, switch_off)
    return profile


def main(argv: list[str]) -> None:
    out = os.environ.get(OUT_ENV)
    if not out:
        raise SystemExit(f"bench._profiled: set {OUT_ENV} to the statistics file to write")
    install(Path(out))
    server.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
