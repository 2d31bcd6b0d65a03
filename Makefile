# The README's two set-up commands: `make demo` and `make test`. Both work on a fresh clone with only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: up down demo test test-exhaustive test-slow test-ui bench-transfer bench-recovery bench-inventory bench-cli bench-data lint typecheck pytest install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# The product on this machine: Prefect server (or PREFECT_API_URL), sandbox, blocks, deployments, automations and a
# worker, in the background; prints what to open. `make down` stops what `make up` started (deployments/up.py).
up: $(STAMP)
	$(BIN)/python -m deployments.up

down:
	$(BIN)/python -m deployments.up --down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Most tests wait on the sandbox (instances booting, SSM polls), not on the CPU: 6 workers fit 2 cores (measured:
# 281 s against 325 s with 4). One file per worker (loadfile) keeps module-scoped sandboxes single; each worker that
# runs flows starts one Prefect test server.
pytest: $(STAMP)
	$(BIN)/pytest -q -n 6 --dist loadfile

# The issues' full data sizes (1,000 files with a 100 MB file per transfer direction, ...): minutes, not in `make test`.
test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

test: lint typecheck pytest

# Every kill -9 point of the launch, spot-watch, teardown and sweep walks (make test runs one or two of each, the
# sweep one of each kind) and the rest of a few long walks: ~3 minutes.
test-exhaustive: $(STAMP)
	$(BIN)/pytest -q -n 4 --dist load -m exhaustive

# The browser tour of the Prefect UI (tests/ui/): a real Prefect server, the served deployments, a teardown dry run
# and a paused one, seen through Debian's headless chromium (installed here when missing and run as root); the
# screenshots land in docs/ui/ for the README. Not in `make test`.
test-ui: $(STAMP)
	test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && apt-get update -qq && apt-get install -y -qq chromium; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,ui]'
	$(BIN)/pytest -q -p no:xdist -m ui tests/ui

# Transfer throughput vs aws-cli (needs `aws` on PATH) and s5cmd at the issue's sizes, on SeaweedFS (the bench
# extra's `weed`: an S3 that keeps checksums; --endpoint rclone|sandbox otherwise), downloads of objects with each
# checksum kind (--checksums); minutes, prints a table of MB/s and ratios per case, e.g.
# make bench-transfer BENCH_ARGS="--big-mib 128 --small-count 1000 --checksums crc64nvme"
bench-transfer: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m bench.transfer $(BENCH_ARGS)

# Spot notice → training resumed in the sandbox (1 GB checkpoint, 2-minute window): a few minutes, prints targets.
bench-recovery: $(STAMP)
	$(BIN)/python -m bench.recovery $(BENCH_ARGS)

# One cost-watch pass over 1,000 managed resources in the sandbox: AWS calls per type and our CPU seconds (~20 s).
bench-inventory: $(STAMP)
	$(BIN)/python -m bench.inventory $(BENCH_ARGS)

# trainctl's commands as whole processes (--help, resources list, ebs attach/detach, train status, a teardown dry
# run), without a Prefect server and with one it starts on a free port: medians against issue 17's targets (~4 min).
bench-cli: $(STAMP)
	$(BIN)/python -m bench.cli $(BENCH_ARGS)

# Each data strategy's time to the first batch (200 files, 300 MB) in the sandbox, next to the advice's estimate
# (AWS figures; the sandbox's throughputs are not AWS's): five launches and a prewarm, ~2-3 minutes.
bench-data: $(STAMP)
	$(BIN)/python -m bench.data $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
