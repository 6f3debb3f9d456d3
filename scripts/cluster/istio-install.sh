#!/usr/bin/env bash
# Install Istio with its Helm charts (base, istiod, gateway), tracing to Jaeger,
# and the Prometheus, Grafana, Kiali and Jaeger add-ons.
# NEEDS A REAL CLUSTER (the current kubectl context) and network access to
# Istio's chart repository and GitHub.
#
#   ISTIO_VERSION=1.30.4 scripts/cluster/istio-install.sh
#   ISTIO_ADDONS=0 ...          skip the add-ons
#   TRACE_SAMPLING=100          mesh-wide share of requests traced (percent)
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ISTIO_ADDONS=${ISTIO_ADDONS:-1}
TRACE_SAMPLING=${TRACE_SAMPLING:-100}
ISTIO_REPO=${ISTIO_REPO:-https://istio-release.storage.googleapis.com/charts}
ADDONS_URL=${ADDONS_URL:-https://raw.githubusercontent.com/istio/istio/release-${ISTIO_VERSION%.*}/samples/addons}

need helm
need_cluster

say "Istio $ISTIO_VERSION from $ISTIO_REPO"
helm repo add istio "$ISTIO_REPO" --force-update >/dev/null
helm repo update istio >/dev/null

helm upgrade --install istio-base istio/base --version "$ISTIO_VERSION" \
  --namespace "$ISTIO_NAMESPACE" --create-namespace --wait

# Sidecars send OTLP/HTTP spans (W3C traceparent) to jaeger-collector:4318; the
# app itself can export OTLP there too (telemetry.tracing.otlpEndpoint in the chart).
helm upgrade --install istiod istio/istiod --version "$ISTIO_VERSION" \
  --namespace "$ISTIO_NAMESPACE" --wait \
  -f "$REPO_ROOT/scripts/cluster/istiod-values.yaml"

helm upgrade --install "$GATEWAY_RELEASE" istio/gateway --version "$ISTIO_VERSION" \
  --namespace "$GATEWAY_NAMESPACE" --create-namespace --wait

if [[ "$ISTIO_ADDONS" != 0 ]]; then
  say "add-ons from $ADDONS_URL"
  for addon in prometheus grafana kiali jaeger; do
    kubectl apply -f "$ADDONS_URL/$addon.yaml"
  done

  # The usvc alert rules into the add-on Prometheus: its rule_files include
  # /etc/config/rules, the key "rules" of its ConfigMap (reloaded on change).
  rules_patch=$(mktemp)
  trap 'rm -f "$rules_patch"' EXIT
  { printf 'data:\n  rules: |\n'; sed 's/^/    /' "$REPO_ROOT/telemetry/prometheus/rules.yml"; } >"$rules_patch"
  kubectl -n "$ISTIO_NAMESPACE" patch configmap prometheus --type merge --patch-file "$rules_patch"

  # The usvc dashboards into the add-on Grafana, which has no dashboard
  # side-car: the chart's dashboard files in one ConfigMap beside it, and a
  # file provider of ours that reads them.
  kubectl -n "$ISTIO_NAMESPACE" create configmap usvc-grafana-dashboards \
    --from-file="$CHART_DIR/dashboards/" --dry-run=client -o yaml \
    | kubectl apply --server-side --force-conflicts -f -
  kubectl -n "$ISTIO_NAMESPACE" create configmap usvc-grafana-provider \
    --from-file=usvc.yaml="$REPO_ROOT/telemetry/grafana/provider.yaml" \
    --dry-run=client -o yaml | kubectl apply -f -
  volumes=$(kubectl -n "$ISTIO_NAMESPACE" get deployment grafana \
    -o jsonpath='{.spec.template.spec.volumes[*].name}')
  if [[ " $volumes " != *" usvc-dashboards "* ]]; then
    kubectl -n "$ISTIO_NAMESPACE" patch deployment grafana --type json \
      --patch-file "$REPO_ROOT/telemetry/grafana/addon-patch.json"
  fi
fi

# The gateway starts each trace, so the mesh-wide rate decides what is kept.
kubectl apply -f - <<YAML
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-default
  namespace: $ISTIO_NAMESPACE
spec:
  tracing:
    - randomSamplingPercentage: $TRACE_SAMPLING
YAML

say "Istio is ready; next: make demo-install"
