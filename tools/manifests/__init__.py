"""k8s/ is generated from the Helm chart helm/usvc; this package writes and checks it.

    python -m tools.manifests write      # regenerate k8s/ (make manifests)
    python -m tools.manifests check      # exit 1, naming each stale file, when k8s/ differs
    python -m tools.manifests validate   # validate k8s/ offline, each scenario (Kubernetes, Istio)
    python -m tools.manifests lint       # helm lint --strict, default values and every scenario

Modules: render (the chart, offline, through helm-python-sdk), layout (where each
rendered object lands in k8s/, write and the drift check), check (Kubernetes schemas
from kubernetes-validate; Istio objects through usvc_mesh.validation, the local
mesh's one Istio validator; helm lint). The scenarios are the chart's: the enum of
routing.scenario in helm/usvc/values.schema.json.
"""

from .check import (
    KUBE_VERSIONS,
    duration_seconds,
    is_kubernetes,
    k8s_objects,
    lint,
    scenario_files,
    validate_k8s,
    validate_kubernetes,
    validate_objects,
)
from .layout import (
    EXAMPLE_PULL_SECRET,
    EXAMPLE_REGISTRY,
    check,
    dump,
    env_patches,
    expected_files,
    namespace_manifest,
    write,
)
from .render import (
    CHART,
    DEFAULT_SCENARIO,
    K8S,
    NAMESPACE,
    RELEASE,
    REPO,
    SCENARIOS,
    chart_scenarios,
    helm_values,
    load_objects,
    render,
    render_objects,
    scenario_values,
    split_documents,
)

__all__ = [
    "CHART",
    "DEFAULT_SCENARIO",
    "EXAMPLE_PULL_SECRET",
    "EXAMPLE_REGISTRY",
    "K8S",
    "KUBE_VERSIONS",
    "NAMESPACE",
    "RELEASE",
    "REPO",
    "SCENARIOS",
    "chart_scenarios",
    "check",
    "dump",
    "duration_seconds",
    "env_patches",
    "expected_files",
    "helm_values",
    "is_kubernetes",
    "k8s_objects",
    "lint",
    "load_objects",
    "namespace_manifest",
    "render",
    "render_objects",
    "scenario_files",
    "scenario_values",
    "split_documents",
    "validate_k8s",
    "validate_kubernetes",
    "validate_objects",
    "write",
]
