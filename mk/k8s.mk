# Kubernetes + Istio (docs/kubernetes.md). Offline: manifests, manifests-check,
# helm-lint. The rest acts on a REAL cluster, the current kubectl context:
# istio-install, demo-install, rules-<scenario>, call, reset, istio-uninstall.
# Settings: USVC_MODE=helm|kubectl, USVC_REGISTRY, USVC_NAMESPACE, ISTIO_VERSION,
# SCENARIO (for demo-install); see scripts/cluster/common.sh.

PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
SCENARIO ?= current
# The scenarios are the files of k8s/mesh/scenarios/ (the chart's list, rendered).
K8S_SCENARIOS := $(filter-out %.env,$(basename $(notdir $(wildcard k8s/mesh/scenarios/*.yaml))))

.PHONY: manifests manifests-check helm-lint istio-install demo-install call reset \
	istio-uninstall $(addprefix rules-,$(K8S_SCENARIOS))

## manifests: regenerate k8s/ from the Helm chart helm/usvc
manifests:
	$(PYTHON) -m tools.manifests write

## manifests-check: fail when k8s/ differs from the chart; validate k8s/ offline
manifests-check:
	$(PYTHON) -m tools.manifests check
	$(PYTHON) -m tools.manifests validate

## helm-lint: helm lint --strict of the chart, default values and every scenario
helm-lint:
	$(PYTHON) -m tools.manifests lint

## istio-install: Istio (base, istiod, gateway) + Jaeger, Prometheus, Grafana, Kiali
istio-install:
	scripts/cluster/istio-install.sh

## demo-install: install the demo (SCENARIO=current, USVC_MODE=helm|kubectl)
demo-install:
	scripts/cluster/demo-install.sh $(SCENARIO)

## rules-<scenario>: switch the routing scenario (each file of k8s/mesh/scenarios/)
$(addprefix rules-,$(K8S_SCENARIOS)): rules-%:
	scripts/cluster/rules.sh $*

## call: curl the gateway without and with x-dev-user
call:
	scripts/cluster/call.sh

## reset: remove the demo and its namespace
reset:
	scripts/cluster/reset.sh

## istio-uninstall: remove the demo, Istio and its add-ons
istio-uninstall:
	scripts/cluster/reset.sh --istio
