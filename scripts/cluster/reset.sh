#!/usr/bin/env bash
# Remove the usvc demo (and with --istio, Istio and its add-ons too).
# NEEDS A REAL CLUSTER (the current kubectl context).
#
#   scripts/cluster/reset.sh            the demo and its namespace
#   scripts/cluster/reset.sh --istio    also the gateway, istiod, base and add-ons
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

with_istio=0
case "${1:-}" in
  "") ;;
  --istio) with_istio=1 ;;
  *) die "usage: ${0##*/} [--istio]" ;;
esac
check_mode
need_cluster

if [[ "$USVC_MODE" == helm ]] && command -v helm >/dev/null 2>&1 &&
  helm status "$USVC_RELEASE" --namespace "$USVC_NAMESPACE" >/dev/null 2>&1; then
  helm uninstall "$USVC_RELEASE" --namespace "$USVC_NAMESPACE" --wait
fi
# Whatever kubectl applied (or Helm left) goes with the namespace.
kubectl delete namespace "$USVC_NAMESPACE" --ignore-not-found --wait=true

if [[ "$with_istio" == 1 ]]; then
  need helm
  ADDONS_URL=${ADDONS_URL:-https://raw.githubusercontent.com/istio/istio/release-${ISTIO_VERSION%.*}/samples/addons}
  for addon in jaeger kiali grafana prometheus; do
    kubectl delete -f "$ADDONS_URL/$addon.yaml" --ignore-not-found
  done
  kubectl -n "$ISTIO_NAMESPACE" delete telemetry mesh-default --ignore-not-found
  helm uninstall "$GATEWAY_RELEASE" --namespace "$GATEWAY_NAMESPACE" --ignore-not-found
  helm uninstall istiod --namespace "$ISTIO_NAMESPACE" --ignore-not-found
  helm uninstall istio-base --namespace "$ISTIO_NAMESPACE" --ignore-not-found
  kubectl delete namespace "$GATEWAY_NAMESPACE" "$ISTIO_NAMESPACE" --ignore-not-found
fi

say "reset done"
