# pcbridge — the commands the README promises.
CARGO ?= cargo

.PHONY: run soak bench audit test lint fmt build release setup build-deps services k8s image-check

## The whole pipeline on this machine: embedded Kafka, ingress, worker and a Partner
## Center simulator sending signed events (pcbridge dev; flags: make run ARGS="--forever").
run: build-deps
	$(CARGO) run --release -- dev $(ARGS)

## Run the whole test suite (starts or installs RabbitMQ first when needed), after
## validating the Kubernetes manifests.
test: setup
	bash .ci/k8s.sh
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --all-targets --no-fail-fast; \
	else \
		$(CARGO) test --all-targets --no-fail-fast; \
	fi
	@# Restarts the shared RabbitMQ, so it runs alone, after the suite.
	$(CARGO) test --test load_faults -- --ignored --nocapture

## The long versions: load-with-faults scenarios with many more events.
soak: setup
	PCBRIDGE_SOAK_EVENTS=$${PCBRIDGE_SOAK_EVENTS:-6000} $(CARGO) test --test load_faults -- --include-ignored --test-threads 1 --nocapture
	PROPTEST_CASES=$${PROPTEST_CASES:-20000} $(CARGO) test --test properties

## Benchmarks (docs/BENCHMARKS.md): Criterion micro-benchmarks of the hot path, then the
## ingress and the worker under load next to reference servers, and start-up. One
## scenario: make bench BENCH="worker" (ingress-kafka, ingress-rabbitmq, ingress-amqp, worker, scaling, startup).
bench: setup
	$(CARGO) bench --bench micro
	$(CARGO) bench --bench load -- $(BENCH)

## Formatting and clippy, as CI runs them.
lint: build-deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	bash .ci/setup.sh deny
	$(CARGO) deny check licenses bans sources

## RustSec advisories (needs GitHub for the advisory database; CI's network has only the
## package registries, so this is not part of `lint`).
audit:
	bash .ci/setup.sh deny
	$(CARGO) deny check advisories

fmt:
	$(CARGO) fmt

build: build-deps
	$(CARGO) build

release: build-deps
	$(CARGO) build --release

setup:
	bash .ci/setup.sh

build-deps:
	bash .ci/setup.sh build

services:
	bash .ci/setup.sh services

## Build and validate the Kubernetes overlays only.
k8s:
	bash .ci/k8s.sh

## The container image without Docker: deploy/Dockerfile's build stage replayed from the
## .dockerignore'd context (release build in target/image), then the runtime stage's
## COPYs, the binary's libraries against distroless/cc-debian12, and a run (.ci/image.sh).
image-check: build-deps
	bash .ci/image.sh
