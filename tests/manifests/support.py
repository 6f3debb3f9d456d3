"""Shared by the manifest tests: the tools.manifests package, the scenarios, and
small lookups over rendered objects."""

from __future__ import annotations

from typing import Any

from tools import manifests

tool = manifests  # what the manifest tests import (a plain name is exported; mypy strict)

REPO = tool.REPO
SCENARIOS: tuple[str, ...] = tool.SCENARIOS
KUBE_VERSIONS: tuple[str, ...] = tool.KUBE_VERSIONS

# Every optional part of the chart switched on, so its templates are checked too.
EVERYTHING_ON: dict[str, Any] = {
    "imagePullSecrets": [{"name": "regcred"}],
    "lifecycle": {"preStopSleepSeconds": 3},
    "addons": {"expose": True},
    "telemetry": {
        "tracing": {
            "otlpEndpoint": "http://jaeger-collector.istio-system:4318",
            "providers": ["jaeger"],
        }
    },
}


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(Deployment name, container) of every container of every Deployment."""
    return [
        (d["metadata"]["name"], c)
        for d in of_kind(objects, "Deployment")
        for c in d["spec"]["template"]["spec"].get("initContainers", [])
        + d["spec"]["template"]["spec"]["containers"]
    ]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}
