"""Fixtures of the manifest tests: the chart rendered offline, per scenario."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from .support import EVERYTHING_ON, KUBE_VERSIONS, SCENARIOS, tool


@pytest.fixture(scope="session")
def manifests() -> ModuleType:
    return tool


@pytest.fixture(params=SCENARIOS)
def scenario(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=KUBE_VERSIONS)
def kube_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def scenario_objects() -> dict[str, list[dict[str, Any]]]:
    """scenario -> every object the chart renders for it with default values."""
    return {s: tool.render_objects(tool.scenario_values(s)) for s in SCENARIOS}


@pytest.fixture(scope="session")
def default_objects(scenario_objects: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return scenario_objects[tool.DEFAULT_SCENARIO]


@pytest.fixture(scope="session")
def everything_on_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = tool.render_objects(EVERYTHING_ON)
    return objects
