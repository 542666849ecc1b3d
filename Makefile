# backorder — local development, demo and tests.
#
#   make demo       the whole pipeline on the local stack, with a report
#   make test       the whole test suite (starts what it needs)
#   make up/down    start/stop PostgreSQL, Tansu (Kafka) and moto (SES); `up` also
#                   installs what the Avro conformance tests run: Debian's
#                   libavro-java and a JDK (apt, when missing) and fastavro (.venv)
#   make services   start the six services in the background
#   make lint       rustfmt and clippy, as CI runs them
#   make chaos      2,400 orders, stock events, campaigns, offer clicks and cancellations
#                   through SIGKILLs and broker/database restarts, against a calm run
#                   (tests/chaos.rs; BACKORDER_CHAOS_SEED picks the seed)
#   make restart-broker / restart-db
#                   restart Tansu / PostgreSQL in place (same port, same data;
#                   Tansu's memory storage starts empty, its topics are re-created)
#   make bench      release build, then measure it on the local stack:
#                   bench/report.md and bench/report.png (not part of `test`)

SHELL := /bin/bash
CARGO ?= cargo
STACK := infra/local/stack.sh
SERVICES := infra/local/services.sh
CTL := target/debug/backorderctl

.PHONY: demo test up down services stop-services build lint fmt status clean-stack browser restart-broker restart-db chaos bench

up:
	@bash $(STACK) up

down:
	@bash $(SERVICES) stop || true
	@bash $(STACK) down

restart-broker:
	@bash $(STACK) restart-broker
	@if [ -x $(CTL) ]; then $(CTL) topics create >/dev/null; fi

restart-db:
	@bash $(STACK) restart-db

status:
	@bash $(STACK) status || true
	@bash $(SERVICES) status

build:
	$(CARGO) build --workspace --bins

services: up build
	@$(CTL) migrate
	@$(CTL) topics create
	@bash $(SERVICES) start

stop-services:
	@bash $(SERVICES) stop

demo: services
	@bash infra/local/demo.sh

browser:
	@bash infra/local/browser.sh

# The chaos run is `make chaos` (CI runs both): not repeated here.
test: up browser
	$(CARGO) build --workspace --bins --tests
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast --run-ignored all -E 'not binary(chaos)'; \
	else \
		$(CARGO) test --workspace --no-fail-fast -- --include-ignored; \
	fi

# Private broker (S3 storage), PostgreSQL and SES endpoint per run: the
# faults touch nothing else. Prints the summary table.
chaos: up
	$(CARGO) build --workspace --bins --tests
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --run-ignored all --test chaos --no-capture; \
	else \
		$(CARGO) test --workspace --test chaos -- --include-ignored --nocapture; \
	fi
# Measures the release build: every measurement starts the services it needs
# on its own database and topic prefix (see docs/bench.md).
# Only what the bench runs (the workspace's features, so the same build
# of every dependency as `--bins`): the other services' release builds
# would add minutes to a fresh clone's run and measure nothing.
bench: up
	$(CARGO) build --workspace --release --bin bench --bin orders-consumer --bin stock-consumer --bin sender
	target/release/bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean-stack:
	@bash $(SERVICES) stop || true
	@bash $(STACK) purge
