# The load test (docs/load.md): Locust against the gateway, gated on the SLOs
# of load/slo.yaml read from Prometheus. Against the local mesh, start it first
# with `./dev up` in another shell.
#   make load [LOAD_SCENARIO=stress|mixed] [DURATION=60s] [URL=http://…] [LOAD_ARGS=…]
#   make tes      the original demo's stress test: stressTest users, 50/s, 600 s
#   make soak     5 minutes, gated on every process's RSS too
# (LOAD_SCENARIO, not SCENARIO: that one is the routing scenario of mk/k8s.mk.)

LOAD_SCENARIO ?= stress
DURATION ?=
URL ?=
LOAD_ARGS ?=
_load_url = $(if $(URL),--url $(URL))

.PHONY: load tes soak

## load: one load run (LOAD_SCENARIO=stress|mixed, DURATION, URL, LOAD_ARGS)
load:
	./dev load --scenario $(LOAD_SCENARIO) $(if $(DURATION),--duration $(DURATION)) \
		$(_load_url) $(LOAD_ARGS)

## tes: the original demo's stress test (x-dev-user: stressTest, 50 users/s, 600 s)
tes:
	./dev load --scenario stress --duration 600s $(_load_url) $(LOAD_ARGS)

## soak: 5 minutes of the stress scenario; every process's RSS within 10 % after warm-up
soak:
	./dev load --soak --scenario stress $(_load_url) $(LOAD_ARGS)
