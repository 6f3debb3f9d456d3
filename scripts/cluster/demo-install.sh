#!/usr/bin/env bash
# Install the usvc demo into the cluster and wait until every workload is ready.
# NEEDS A REAL CLUSTER with Istio (make istio-install) and the four images in a
# registry the cluster can pull from.
#
#   scripts/cluster/demo-install.sh [scenario]       default: current
#   USVC_MODE=kubectl ...                            plain manifests instead of Helm
#   USVC_REGISTRY=registry.example.com:5000 ...      where the images are
#   USVC_HELM_ARGS='--set replicas...' ...           more Helm flags (word-split)
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

scenario=${1:-current}
check_scenario "$scenario"
check_mode
need_cluster

if [[ "$USVC_MODE" == helm ]]; then
  need helm
  mapfile -t registry_args < <(helm_registry_args)
  # shellcheck disable=SC2086 # USVC_HELM_ARGS is meant to be word-split
  helm upgrade --install "$USVC_RELEASE" "$CHART_DIR" \
    --namespace "$USVC_NAMESPACE" --create-namespace \
    --set "routing.scenario=$scenario" "${registry_args[@]}" ${USVC_HELM_ARGS:-} \
    --wait --timeout 5m
else
  kubectl_apply_scenario "$scenario"
  kubectl -n "$USVC_NAMESPACE" wait deployment --all --for=condition=Available --timeout=5m
fi

say "usvc is up in namespace $USVC_NAMESPACE (scenario $scenario); try: make call"
