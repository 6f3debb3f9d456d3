#!/usr/bin/env bash
# Call the demo through the Istio ingress gateway, without and with x-dev-user.
# NEEDS A REAL CLUSTER with Istio and the demo installed. Reaches the gateway by
# kubectl port-forward, which works on every cluster (no LoadBalancer needed).
#
#   scripts/cluster/call.sh            LOCAL_PORT=18080 by default
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LOCAL_PORT=${LOCAL_PORT:-18080}
need curl
need_cluster

kubectl -n "$GATEWAY_NAMESPACE" port-forward "svc/$GATEWAY_RELEASE" "$LOCAL_PORT:80" >/dev/null &
forward=$!
trap 'kill "$forward" 2>/dev/null || true' EXIT

url="http://127.0.0.1:$LOCAL_PORT/"
for _ in $(seq 50); do
  curl -s -o /dev/null "$url" && break
  sleep 0.2
done

for user in "" betaUser stressTest; do
  if [[ -z "$user" ]]; then
    say "curl $url"
    curl -sS "$url"
  else
    say "curl -H 'x-dev-user: $user' $url"
    curl -sS -H "x-dev-user: $user" "$url"
  fi
  echo
done
