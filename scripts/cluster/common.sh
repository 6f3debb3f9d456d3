# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for the scripts that source this file
# Sourced by every scripts/cluster/*.sh. These scripts act on a REAL Kubernetes
# cluster, the current kubectl context; none of them does anything offline.
# Settings come from the environment (defaults below), so make targets and
# humans call them the same way.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART_DIR="$REPO_ROOT/helm/usvc"
K8S_DIR="$REPO_ROOT/k8s"

USVC_NAMESPACE=${USVC_NAMESPACE:-usvc}
USVC_RELEASE=${USVC_RELEASE:-usvc}
# helm: install the chart; kubectl: apply the plain manifests of k8s/.
USVC_MODE=${USVC_MODE:-helm}
# Registry to pull the images from; empty keeps the chart's default
# (DEFAULT_REGISTRY, the same as image.registry in helm/usvc/values.yaml).
USVC_REGISTRY=${USVC_REGISTRY:-}
DEFAULT_REGISTRY=localhost:5000

ISTIO_VERSION=${ISTIO_VERSION:-1.30.4}
ISTIO_NAMESPACE=${ISTIO_NAMESPACE:-istio-system}
# The chart's AuthorizationPolicy lets exactly this gateway call front
# (mesh.ingressGateway in values.yaml): keep the two in step.
GATEWAY_NAMESPACE=${GATEWAY_NAMESPACE:-istio-ingress}
GATEWAY_RELEASE=${GATEWAY_RELEASE:-istio-ingressgateway}

SCENARIOS=(current prod dev canary beta retry stress)

say() { printf '==> %s\n' "$*"; }
die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

need() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || die "needs '$cmd' on PATH"
  done
}

# Stop early, and say why, when there is no cluster to talk to. Without a
# context kubectl would fall back to localhost:8080, where the local mode's
# gateway may be listening, so a context is required first.
need_cluster() {
  need kubectl
  local context
  context=$(kubectl config current-context 2>/dev/null) ||
    die "needs a real Kubernetes cluster and a kubectl context for it (none is set; e.g. 'kind create cluster', or set KUBECONFIG)"
  kubectl get --raw /readyz --request-timeout=5s >/dev/null 2>&1 ||
    die "needs a real Kubernetes cluster: kubectl context '$context' does not answer"
}

check_scenario() {
  local s
  for s in "${SCENARIOS[@]}"; do
    [[ "$1" == "$s" ]] && return 0
  done
  die "unknown scenario '$1' (one of: ${SCENARIOS[*]})"
}

check_mode() {
  [[ "$USVC_MODE" == helm || "$USVC_MODE" == kubectl ]] ||
    die "USVC_MODE must be helm or kubectl, not '$USVC_MODE'"
}

# The kustomize directory of a scenario's workloads: an overlay when the
# scenario changes workload env (retry), else the base.
workloads_dir() {
  if [[ -d "$K8S_DIR/overlays/$1" ]]; then
    printf '%s\n' "$K8S_DIR/overlays/$1"
  else
    printf '%s\n' "$K8S_DIR"
  fi
}

# Apply a scenario with kubectl: its workloads (with the registry swapped in
# when asked), then its routing rules, which replace the previous scenario's.
kubectl_apply_scenario() {
  local scenario=$1
  if [[ -n "$USVC_REGISTRY" ]]; then
    kubectl kustomize "$(workloads_dir "$scenario")" |
      sed "s#image: $DEFAULT_REGISTRY/#image: $USVC_REGISTRY/#" |
      kubectl apply -f -
  else
    kubectl apply -k "$(workloads_dir "$scenario")"
  fi
  kubectl apply -f "$K8S_DIR/mesh/scenarios/$scenario.yaml"
}

helm_registry_args() {
  if [[ -n "$USVC_REGISTRY" ]]; then
    printf '%s\n' --set "image.registry=$USVC_REGISTRY"
  fi
}
