"""bench/cpu_split.py: user and system CPU per request of each build, under wrk."""

from __future__ import annotations

import os
import shutil

import pytest

from bench import cpu_split
from bench.procs import cpu_seconds, cpu_times

from .checks import run_bench


def test_the_table_gives_medians_and_each_over_the_first_build() -> None:
    splits = [
        cpu_split.Split("bare", user_us=[30, 20, 40], system_us=[10, 12, 11], rps=[9, 8, 7]),
        cpu_split.Split("usvc-1", user_us=[45, 60, 50], system_us=[11, 22, 13], rps=[5, 6, 4]),
    ]
    rows = cpu_split.table(splits).splitlines()[2:]
    assert rows == [
        "| bare | 8 | 30.0 | 11.0 | 1.00 | 1.00 |",
        "| usvc-1 | 5 | 50.0 | 13.0 | 1.67 | 1.18 |",
    ]


def test_user_and_system_times_are_the_kernels_for_the_process() -> None:
    sum(range(2_000_000))  # some user time to read
    user, system = cpu_times(os.getpid())
    # The kernel's own split of this process's time, as os.times() reads it (ticks apart).
    own = os.times()
    assert user == pytest.approx(own.user, abs=0.05) and user > 0
    assert system == pytest.approx(own.system, abs=0.05)
    assert cpu_seconds(os.getpid()) >= user + system


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_a_short_run_splits_a_real_servers_cpu_per_request() -> None:
    argv = ["--build", "bare", "--rounds", "1", "--duration", "1", "--connections", "4"]
    done = run_bench(*argv, module="bench.cpu_split", timeout=120)
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| bare |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    rps, user = float(cells[1]), float(cells[2])
    # It served requests, and serving them took user time; the first build is its own base.
    assert rps > 0 and user > 0
    assert cells[4:] == ["1.00", "1.00"]
