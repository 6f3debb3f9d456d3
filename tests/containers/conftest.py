"""The container tier: a private Docker engine, images built offline, then the tests.

Needs root and Debian's docker.io, mmdebstrap (and eatmydata) — `.ci/run`
installs them; without them the tier says what is missing and skips. The base
image's root filesystem is cached under ~/.cache/usvc between local runs; the
engine, its data and every container, network and volume are removed by id
at the end, and dockerd is stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import ROOT
from usvc_mesh.containers import images

from .engine import DOCKER_CLI, DOCKERD, Engine, start_engine

TIMINGS: dict[str, float] = {}
SIZES: dict[str, int] = {}
FIGURES: dict[str, str] = {}  # measured, printed with the timings
_HERE = Path(__file__).parent


def missing_tools() -> list[str]:
    missing = [
        tool
        for tool in (DOCKERD, DOCKER_CLI, "/usr/bin/docker-compose", "mmdebstrap", "unshare")
        if shutil.which(tool) is None
    ]
    if os.geteuid() != 0:
        missing.append("root (dockerd)")
    return missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(_HERE):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.containers)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS and not SIZES:
        return
    terminalreporter.section("container tier")
    for name, took in TIMINGS.items():
        terminalreporter.write_line(f"{name:<40} {took:6.1f} s")
    for name, value in FIGURES.items():
        terminalreporter.write_line(f"{name:<40} {value}")
    for reference, size in SIZES.items():
        terminalreporter.write_line(f"{reference:<48} {images.megabytes(size):>7}")


class timed:
    """``with timed("build"):`` records how long the block took for the summary."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        TIMINGS[self.name] = time.monotonic() - self.started


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"container tier needs {', '.join(missing)} (see .ci/run)")
    with timed("dockerd start"):
        started = start_engine()
    try:
        yield started
    finally:
        with timed("teardown (engine)"):
            started.stop()


@pytest.fixture(scope="session")
def project() -> images.Project:
    return images.Project(ROOT)


@pytest.fixture(scope="session")
def built(engine: Engine, project: images.Project) -> dict[str, str]:
    """Every image of the project, on a Debian base made by mmdebstrap: ``{name: reference}``."""
    client = engine.client()
    out = print
    with timed("base (mmdebstrap, cached) + import"):
        base = images.debian_base(client, images.default_cache(), out=out)
    with timed("build base + every service"):
        references = images.build(client, project, base_image=base, out=out)
    with timed("build envoy (from the wheel)"):
        references["envoy"] = images.build_envoy(client, project, base_image=base, out=out)
    for reference in references.values():
        SIZES[reference] = images.size_of(client, reference)
    return references
