# Every workflow the README mentions. `./dev` does the set-up; these are shorthands.
# Each target has a `## name: text` line above it; `make help` lists them.
.DEFAULT_GOAL := help
.PHONY: help up test test-fast lint bench lock

## help: list the targets
help:
	@sed -n 's/^## \([^:]*\): \(.*\)/\1\t\2/p' $(MAKEFILE_LIST) | awk -F'\t' '{printf "  %-18s %s\n", $$1, $$2}'

## up: run the demo chain behind a real Envoy on 127.0.0.1:8080
up:
	./dev up

## test: lint, type-check and run every test (what CI runs)
test:
	./dev test

## test-fast: lint, type-check and the tests not marked slow (under a minute)
test-fast:
	./dev test -m "not slow"

## lint: ruff, ruff format --check and mypy (strict) only
lint:
	./dev lint

## bench: the benchmarks against bare aiohttp (not part of the tests)
bench:
	./dev bench

## lock: re-resolve requirements/*.txt after a change to setup.cfg or mesh/setup.cfg
lock:
	./dev lock

-include mk/*.mk
