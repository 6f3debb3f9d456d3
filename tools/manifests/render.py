"""Rendering the chart helm/usvc offline (helm-python-sdk: Helm as a library, no binary)."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "usvc"
K8S = REPO / "k8s"
RELEASE = "usvc"
NAMESPACE = "usvc"
DEFAULT_SCENARIO = "current"
IGNORED_TEMPLATES = {"templates/NOTES.txt"}

# libyaml's loader is ten times faster; both build the same data.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def chart_scenarios(chart: Path = CHART) -> tuple[str, ...]:
    """The scenarios the chart knows: the enum of routing.scenario in its values schema."""
    schema = json.loads((chart / "values.schema.json").read_text())
    return tuple(schema["properties"]["routing"]["properties"]["scenario"]["enum"])


SCENARIOS = chart_scenarios()


def render(
    values: Mapping[str, Any] | None = None,
    *,
    chart: Path = CHART,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
) -> dict[str, str]:
    """Render the chart offline: template path (``templates/...``) -> YAML text.

    Templates that render nothing are left out; NOTES.txt too.
    """
    with helm_python.Chart.load(chart) as loaded:
        rendered = loaded.render(dict(values or {}), name=release, namespace=namespace)
    out: dict[str, str] = {}
    for path, text in rendered.items():
        template = path.split("/", 1)[1]  # drop the chart name
        if template in IGNORED_TEMPLATES:
            continue
        docs = split_documents(text)
        if docs:
            out[template] = "---\n".join(docs)
    return out


def split_documents(text: str) -> list[str]:
    """The YAML documents of a stream that hold more than comments, each ending
    in one newline."""
    docs = []
    for doc in re.split(r"^---[ \t]*$\n?", text, flags=re.MULTILINE):
        if any(line.strip() and not line.lstrip().startswith("#") for line in doc.splitlines()):
            docs.append(doc.strip("\n") + "\n")
    return docs


def load_objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=YAML_LOADER) if doc is not None]


def scenario_values(scenario: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    merged = copy.deepcopy(dict(values or {}))
    merged.setdefault("routing", {})["scenario"] = scenario
    return merged


def render_objects(values: Mapping[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values``, in template order."""
    return [obj for text in render(values, **kwargs).values() for obj in load_objects(text)]


@functools.cache
def _helm_values_cached() -> dict[str, Any]:
    with helm_python.Chart.load(CHART) as loaded:
        values: dict[str, Any] = loaded.values
        return values


def helm_values() -> dict[str, Any]:
    """The chart's default values (a copy)."""
    return copy.deepcopy(_helm_values_cached())
