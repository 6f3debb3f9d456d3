# Containers (docs/containers.md): images, the private registry, compose.
#   make images                      base + every service image (BASE_IMAGE=python:3.11-slim)
#   make images-offline              the same on a Debian base made here by mmdebstrap, + Envoy
#   make registry / registry-down    the TLS + htpasswd registry on [::1]:5443
#   make compose                     regenerate compose/ from k8s/ (compose-check: fail on drift)
#   make compose-up / compose-down   the chain in containers, gateway on 127.0.0.1:8080
USVC ?= $(if $(wildcard .venv/bin/usvc),.venv/bin/usvc,usvc)
REGISTRY ?= localhost:5000
BASE_IMAGE ?= python:3.11-slim
# Debian's docker-compose (v1); `make COMPOSE="docker compose"` for v2.
COMPOSE ?= docker-compose
COMPOSE_PROFILES_ARGS ?= --profile stand-in

.PHONY: images images-offline registry registry-down compose compose-check compose-up compose-down

## images: build the base and every service image, tagged $(REGISTRY)/usvc/<name>:<version>
images:
	$(USVC) images build --registry $(REGISTRY) --base-image $(BASE_IMAGE)

## images-offline: no registry to pull from: Debian base by mmdebstrap (cached), and an Envoy image
images-offline:
	$(USVC) images build --registry $(REGISTRY) --debian-base --envoy

## registry: set up (once) and start the private registry; registry-down stops it
registry:
	$(USVC) registry up

registry-down:
	$(USVC) registry down

## compose: regenerate compose/envoy, compose/env, compose/prometheus from k8s/
compose:
	$(USVC) compose generate

## compose-check: fail when the committed compose files differ from k8s/
compose-check:
	$(USVC) compose check

## compose-up: the chain in containers (with the worldtimeapi stand-in)
compose-up:
	$(COMPOSE) $(COMPOSE_PROFILES_ARGS) up -d

compose-down:
	$(COMPOSE) $(COMPOSE_PROFILES_ARGS) down --volumes
