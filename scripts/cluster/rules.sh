#!/usr/bin/env bash
# Switch the routing scenario of the installed demo.
# NEEDS A REAL CLUSTER with the demo installed (make demo-install).
#
#   scripts/cluster/rules.sh canary
#   USVC_MODE=kubectl scripts/cluster/rules.sh retry
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -eq 1 ]] || die "usage: ${0##*/} <scenario> (one of: ${SCENARIOS[*]})"
scenario=$1
check_scenario "$scenario"
check_mode
need_cluster

if [[ "$USVC_MODE" == helm ]]; then
  need helm
  helm upgrade "$USVC_RELEASE" "$CHART_DIR" --namespace "$USVC_NAMESPACE" \
    --reuse-values --set "routing.scenario=$scenario" --wait --timeout 5m
else
  # Every scenario file holds the same objects, so applying one replaces the
  # last; the workloads go back to (or away from) a scenario's env overlay.
  kubectl_apply_scenario "$scenario"
  kubectl -n "$USVC_NAMESPACE" rollout status deployment --timeout=5m
fi

say "routing scenario is now $scenario"
