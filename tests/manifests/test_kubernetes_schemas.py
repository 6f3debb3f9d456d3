"""Core Kubernetes objects against kubernetes-validate's strict schemas (1.29, 1.33)."""

from __future__ import annotations

import copy
import functools
import json
from types import ModuleType
from typing import Any

import pytest

from .support import named, tool


def core_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if tool.is_kubernetes(o)]


@functools.cache
def _errors(serialized: str, kube_version: str) -> tuple[str, ...]:
    return tuple(tool.validate_kubernetes(json.loads(serialized), kube_version))


def schema_errors(objects: list[dict[str, Any]], kube_version: str) -> list[str]:
    # Most objects are the same in every scenario: validate each distinct one once.
    return [e for o in objects for e in _errors(json.dumps(o, sort_keys=True), kube_version)]


def test_every_core_object_passes_strict_validation(
    scenario_objects: dict[str, list[dict[str, Any]]], scenario: str, kube_version: str
) -> None:
    objects = core_objects(scenario_objects[scenario])
    assert {o["kind"] for o in objects} >= {
        "ServiceAccount",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    }
    assert schema_errors(objects, kube_version) == []


def test_optional_parts_pass_strict_validation_too(
    everything_on_objects: list[dict[str, Any]], kube_version: str
) -> None:
    objects = core_objects(everything_on_objects)
    assert schema_errors(objects, kube_version) == []


def test_generated_namespace_passes_strict_validation(
    manifests: ModuleType, kube_version: str
) -> None:
    (namespace,) = manifests.load_objects(manifests.namespace_manifest())
    assert manifests.validate_kubernetes(namespace, kube_version) == []


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("spec",), "replica"),
        (("spec", "template", "spec"), "serviceAcountName"),
        (("metadata",), "lables"),
    ],
)
def test_strict_validation_rejects_a_misspelt_field(
    default_objects: list[dict[str, Any]], kube_version: str, path: tuple[str, ...], field: str
) -> None:
    deployment = copy.deepcopy(named(default_objects, "Deployment", "front"))
    node = deployment
    for key in path:
        node = node[key]
    node[field] = 1
    (error,) = tool.validate_kubernetes(deployment, kube_version)
    assert field in error and error.startswith("Deployment front @ ")
