# Every workflow the README mentions. `./dev` does the set-up; these are shorthands.
.PHONY: up test lint bench
up:
	./dev up
test:
	./dev test
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy framework/usvc mesh/usvc_mesh services bench load
bench:
	./dev bench

-include mk/*.mk
