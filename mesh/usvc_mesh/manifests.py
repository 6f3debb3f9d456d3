"""What the local mesh reads from a directory of manifests, and nothing else.

The mesh knows no service by name. Everything it runs comes from the
manifests a cluster would apply:

- ``workloads/*.yaml``: Deployments (and their Services). A Deployment runs as
  the command of its first container (``command`` + ``args``, as Kubernetes
  runs it), with a leading ``python``/``python3`` replaced by the interpreter
  running the mesh, so the workload sees the same virtualenv. The annotation
  ``usvc.dev/local-command`` on the pod template (a shell-quoted command
  line) overrides it for local runs only. A workload is ready when the path of
  its ``readinessProbe`` (``httpGet``) answers 200 (``/`` without a probe).
- ``mesh/scenarios/<name>.yaml``: one Istio rule set per scenario, found by
  listing the directory; ``<name>.env.yaml`` beside it, if present, maps a
  Deployment name to extra environment for that scenario.
- ServiceEntry hosts that the machine cannot reach are served by a local
  stand-in when the ServiceEntry carries ``usvc.dev/local-stand-in`` (the
  command line) and optionally ``usvc.dev/local-stand-in-ready`` (the path that
  answers 200 once it is up; default ``/``).

docs/local-mesh.md describes the layout for a project of one's own.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LOCAL_COMMAND = "usvc.dev/local-command"
STAND_IN = "usvc.dev/local-stand-in"
STAND_IN_READY = "usvc.dev/local-stand-in-ready"
_PYTHONS = frozenset({"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"})


class MeshError(RuntimeError):
    """The local mesh cannot start or switch; the message says why."""


class ManifestError(MeshError):
    """The manifests cannot be run locally; the message names the object."""


@dataclass(frozen=True)
class StandIn:
    """A local process answering for one ServiceEntry host."""

    host: str
    argv: tuple[str, ...]
    ready_path: str = "/"


@dataclass(frozen=True)
class Layout:
    """Where the manifests live, and the directory workloads start in."""

    root: Path  # workloads' working directory (their commands are relative to it)
    manifests_dir: Path | None = None  # default: root/k8s
    namespace: str = "usvc"  # the namespace the manifests were rendered for

    @property
    def manifests(self) -> Path:
        return self.manifests_dir or self.root / "k8s"

    @property
    def scenarios_dir(self) -> Path:
        return self.manifests / "mesh" / "scenarios"

    def workload_files(self) -> list[Path]:
        files = sorted((self.manifests / "workloads").glob("*.yaml"))
        if not files:
            raise ManifestError(f"no workload manifests in {self.manifests / 'workloads'}")
        return files

    def scenarios(self) -> list[str]:
        """Every scenario in ``mesh/scenarios/``, by file name."""
        return sorted(p.stem for p in self.scenarios_dir.glob("*.yaml") if "." not in p.stem)

    def scenario_file(self, scenario: str) -> Path:
        path = self.scenarios_dir / f"{scenario}.yaml"
        if not path.is_file():
            known = ", ".join(self.scenarios()) or "none"
            raise ManifestError(f"unknown scenario {scenario!r}; known: {known}")
        return path

    def scenario_env(self, scenario: str) -> dict[str, dict[str, str]]:
        """Extra environment per Deployment that a scenario needs (e.g. fault injection)."""
        path = self.scenarios_dir / f"{scenario}.env.yaml"
        if not path.is_file():
            return {}
        data = yaml.safe_load(path.read_text()) or {}
        return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in data.items()}

    def mesh_files(self) -> list[Path]:
        """The mesh-wide objects of every scenario: ``mesh/*.yaml`` (the chart's security).

        AuthorizationPolicy and PeerAuthentication, enforced by the sidecars'
        inbound listeners (usvc_mesh.authz); not the Kustomization.
        """
        return sorted(
            p for p in (self.manifests / "mesh").glob("*.yaml") if p.name != "kustomization.yaml"
        )

    def documents(self, scenario: str) -> list[dict[str, Any]]:
        return load_documents(
            [*self.workload_files(), *self.mesh_files(), self.scenario_file(scenario)]
        )


def load_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        with path.open() as handle:
            docs.extend(d for d in yaml.safe_load_all(handle) if isinstance(d, dict))
    return docs


def _container(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0]  # type: ignore[no-any-return]


def container_env(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The literal ``env`` values of the first container (``valueFrom`` needs a cluster)."""
    return {
        item["name"]: str(item["value"])
        for item in _container(deployment).get("env", [])
        if "value" in item
    }


def pod_labels(deployment: Mapping[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"].get("labels", {}))


def replicas(deployment: Mapping[str, Any]) -> int:
    return int(deployment["spec"].get("replicas", 1))


def ready_path(deployment: Mapping[str, Any]) -> str:
    """The path of the container's HTTP readiness probe, as the kubelet would poll it."""
    probe = _container(deployment).get("readinessProbe") or {}
    return str((probe.get("httpGet") or {}).get("path", "/"))


def workload_command(deployment: Mapping[str, Any]) -> list[str]:
    """The argv a Deployment's container runs, adapted to this machine."""
    name = deployment["metadata"]["name"]
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    if LOCAL_COMMAND in annotations:
        argv = shlex.split(annotations[LOCAL_COMMAND])
    else:
        container = _container(deployment)
        argv = [str(a) for a in [*container.get("command", []), *container.get("args", [])]]
    if not argv:
        raise ManifestError(
            f"Deployment {name}: its container has no command; set "
            f"spec.template.spec.containers[0].command (the image's entrypoint is not "
            f"known locally) or the {LOCAL_COMMAND} annotation"
        )
    return _local_python(argv)


def stand_ins(docs: Iterable[Mapping[str, Any]]) -> list[StandIn]:
    """The stand-ins the ServiceEntries ask for, one per host."""
    found: dict[str, StandIn] = {}
    for doc in docs:
        if doc.get("kind") != "ServiceEntry":
            continue
        annotations = doc.get("metadata", {}).get("annotations") or {}
        if STAND_IN not in annotations:
            continue
        argv = tuple(_local_python(shlex.split(annotations[STAND_IN])))
        ready = annotations.get(STAND_IN_READY, "/")
        for host in doc["spec"].get("hosts", []):
            found.setdefault(host, StandIn(host, argv, ready))
    return list(found.values())


def _local_python(argv: list[str]) -> list[str]:
    if argv and argv[0] in _PYTHONS:
        return [sys.executable, *argv[1:]]
    return argv
