"""Validating k8s/ offline: Kubernetes objects against kubernetes-validate's strict
schemas, Istio objects through the local mesh's one Istio validator
(usvc_mesh.validation: Istio's schema, its CEL and webhook rules, the translator's
support checks), once per scenario; and helm lint of the chart."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python

from usvc_mesh import validation
from usvc_mesh.spec import parse_duration

from .render import CHART, K8S, NAMESPACE, SCENARIOS, load_objects, scenario_values

KUBE_VERSIONS = ("1.29.0", "1.33.0")


def validate_kubernetes(obj: Mapping[str, Any], version: str) -> list[str]:
    """Strict schema errors of a core Kubernetes object for one Kubernetes version."""
    import kubernetes_validate  # slow import: only when validating

    try:
        kubernetes_validate.validate(dict(obj), version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return [f"{validation.describe(obj)} @ {version}: {where}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{validation.describe(obj)} @ {version}: {error.message}"]
    return []


def is_kubernetes(obj: Mapping[str, Any]) -> bool:
    return not validation.is_istio(obj) and obj.get("apiVersion") != (
        "kustomize.config.k8s.io/v1beta1"
    )


def validate_objects(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    """Errors of one set of objects as a cluster would apply them together.

    Kubernetes objects per Kubernetes version; Istio objects, and the set as the
    local mesh would translate it, by usvc_mesh.validation. Objects the local mesh
    does not apply are not errors here (``usvc up`` reports them).
    """
    objects = list(objects)
    errors = [
        error
        for obj in objects
        if is_kubernetes(obj)
        for version in KUBE_VERSIONS
        for error in validate_kubernetes(obj, version)
    ]
    findings = validation.validate_objects(objects, namespace=NAMESPACE)
    return errors + [str(f) for f in findings if f.level == validation.ERROR]


def k8s_objects(target: Path = K8S) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every applicable object under k8s/ (not kustomize files, patches or env maps)."""
    for path in sorted(target.rglob("*.yaml")):
        if (
            path.name == "kustomization.yaml"
            or path.name.endswith(".env.yaml")
            or "overlays" in path.relative_to(target).parts
        ):
            continue
        for obj in load_objects(path.read_text()):
            yield path, obj


def scenario_files(target: Path = K8S) -> list[Path]:
    """The scenarios of k8s/, as the local mesh finds them: mesh/scenarios/<name>.yaml."""
    directory = target / "mesh" / "scenarios"
    return sorted(p for p in directory.glob("*.yaml") if "." not in p.stem)


def validate_k8s(target: Path = K8S) -> list[str]:
    """Errors of k8s/: everything but the rules once, then each scenario's rules with it."""
    scenarios = {path.resolve() for path in scenario_files(target)}
    shared = [obj for path, obj in k8s_objects(target) if path.resolve() not in scenarios]
    errors = validate_objects(shared)
    for path in scenario_files(target):
        rules = load_objects(path.read_text())
        findings = validation.validate_objects([*shared, *rules], namespace=NAMESPACE)
        errors += [
            f"{path.relative_to(target)}: {f}" for f in findings if f.level == validation.ERROR
        ]
    return errors


def duration_seconds(text: str) -> float | None:
    """Seconds of a Go-style duration ("1m30s", "250ms"), None when malformed.

    The local mesh's own parser: what passes here is what the translator takes.
    """
    nanos = parse_duration(text)
    return None if nanos is None else nanos / 1e9


def lint() -> list[str]:
    """Findings of `helm lint --strict` that are warnings or errors."""
    problems = []
    for scenario in (None, *SCENARIOS):
        values = None if scenario is None else scenario_values(scenario)
        for version in KUBE_VERSIONS:
            report = helm_python.lint(
                CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{version}"
            )
            label = f"{scenario or 'defaults'} @ {version}"
            problems += [f"{label}: {e}" for e in report.get("errors") or []]
            problems += [
                f"{label}: {m['path']}: {m['error']}"
                for m in report.get("messages") or []
                if m["severity"] >= 2
            ]
    return problems
