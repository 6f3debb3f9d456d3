"""Resident memory of the mesh's processes, read from /proc by pid while the load runs.

A sample is taken every few seconds into ``rss.csv``; the report compares each
process at three moments: before the load, at the end of the warm-up, and at
the end. The soak gate holds when every process ends within a tolerance of
its size after warm-up (a leak grows; a healthy heap levels off).
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, or None when the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


@dataclass
class RssSampler:
    """Samples ``processes`` (name -> pid) every ``interval`` seconds on a thread."""

    processes: Mapping[str, int]
    csv_path: Path
    interval: float = 5.0
    marks: dict[str, dict[str, int | None]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> dict[str, int | None]:
        return {name: rss_kib(pid) for name, pid in self.processes.items()}

    def mark(self, moment: str) -> None:
        """Remember a sample as ``moment`` ("before", "warm", "end")."""
        self.marks[moment] = self.sample()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with self.csv_path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["time", "process", "pid", "rss_kib"])
            started = time.time()
            while not self._stop.is_set():
                now = time.time()
                for name, rss in self.sample().items():
                    writer.writerow([f"{now - started:.1f}", name, self.processes[name], rss or ""])
                out.flush()
                self._stop.wait(self.interval)


@dataclass(frozen=True)
class RssRow:
    process: str
    before: int | None
    warm: int | None
    end: int | None

    @property
    def change(self) -> float | None:
        """End against after-warm-up (before the load, if no warm-up), as a fraction."""
        base = self.warm if self.warm is not None else self.before
        if base is None or self.end is None or base == 0:
            return None
        return (self.end - base) / base


def rss_rows(marks: Mapping[str, Mapping[str, int | None]]) -> list[RssRow]:
    names = sorted({name for sample in marks.values() for name in sample})
    return [
        RssRow(
            name,
            marks.get("before", {}).get(name),
            marks.get("warm", {}).get(name),
            marks.get("end", {}).get(name),
        )
        for name in names
    ]


def rss_table(rows: list[RssRow], tolerance: float | None) -> tuple[list[str], bool]:
    """Lines of the RSS report and whether every row is within ``tolerance`` (None: no gate).

    A process without a warm-up sample (a run shorter than the warm-up) is
    compared with its size before the load.
    """

    def mib(kib: int | None) -> str:
        return "-" if kib is None else f"{kib / 1024:.1f}"

    lines = [
        f"{'process':<24} {'before MiB':>10} {'warm MiB':>10} {'end MiB':>10} {'change':>8}  result"
    ]
    ok = True
    for row in rows:
        change = row.change
        if tolerance is None:
            verdict = ""
        elif row.warm is None or change is None or abs(change) > tolerance:
            verdict, ok = "FAIL", False
        else:
            verdict = "PASS"
        shown = "n/a" if change is None else f"{change:+.1%}"
        lines.append(
            f"{row.process:<24} {mib(row.before):>10} {mib(row.warm):>10} {mib(row.end):>10} "
            f"{shown:>8}  {verdict}".rstrip()
        )
    return lines, ok
