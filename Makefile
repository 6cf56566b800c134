# trainjob-operator: the commands a developer and CI need. `make help` lists them.

CARGO ?= cargo
BED_DIR ?= .bed
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# tests/install.rs runs the release binary as a pod on the real node.
TARGET_DIR ?= $(abspath $(or $(CARGO_TARGET_DIR),target))
# What tests and benchmarks run as processes: the operator and the dashboard's server.
RELEASE_BINS := --bin trainjob-operator --bin trainjob-dashboard

.PHONY: help build bed crds fmt lint test bench soak run clean install-plugin screenshots

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## Build the release binaries (target/release/trainjob-operator, trainjob-dashboard, kubectl-trainjob)
	$(CARGO) build --release --locked -p trainjob-operator

bed: ## Build the control plane, the real node (kubelet, CoreDNS, images), Kueue and the gang-scheduling CRDs into the cache (slow the first time: docs/development/testing.md)
	hack/controlplane.sh >/dev/null
	hack/node.sh build >/dev/null
	hack/kueue.sh >/dev/null
	hack/gang-crds.sh >/dev/null

crds: ## Regenerate crds/ from the Rust API types
	$(CARGO) run --quiet --locked -p trainjob-operator --bin crdgen -- crds

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Check formatting and clippy (warnings are errors)
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

test: bed ## Unit tests and integration tests against the local control plane (and its real node)
	hack/test-deps.sh
	hack/bench-deps.sh
	# The release binary reports a newer version than the library the tests link:
	# tests/upgrade.rs upgrades from the one to the other.
	TRAINJOB_BUILD_VERSION=$(VERSION)-next $(CARGO) build --release --locked -p trainjob-operator $(RELEASE_BINS)
	# Every test binary, the independent ones several at a time (TEST_JOBS), the key scan last.
	TRAINJOB_OPERATOR_BINARY=$(TARGET_DIR)/release/trainjob-operator hack/test.sh $(TESTS)

bench: bed ## Benchmarks against a plain-client floor, then training scaling on the real node (root); writes docs/development/benchmarks.md (BENCH_SCALE=quick: smaller and faster)
	hack/bench-deps.sh
	$(CARGO) build --release --locked -p trainjob-operator $(RELEASE_BINS)
	TRAINJOB_OPERATOR_BINARY=$(TARGET_DIR)/release/trainjob-operator $(CARGO) bench --locked --bench operator
	TRAINJOB_OPERATOR_BINARY=$(TARGET_DIR)/release/trainjob-operator $(CARGO) bench --locked --bench dashboard
	$(CARGO) bench --locked --bench training

soak: bed ## A steady stream of jobs for DURATION (default 30m): the operator's memory, CPU and watches over time, into docs/development/benchmarks.md
	hack/bench-deps.sh
	$(CARGO) build --release --locked -p trainjob-operator $(RELEASE_BINS)
	SOAK_DURATION=$(or $(DURATION),30m) TRAINJOB_OPERATOR_BINARY=$(TARGET_DIR)/release/trainjob-operator $(CARGO) bench --locked --bench soak

screenshots: bed ## Take the dashboard's screenshots in docs/images again, from its browser tests (the real node's need root)
	hack/test-deps.sh
	TRAINJOB_SCREENSHOTS=$(CURDIR)/docs/images $(CARGO) test --locked --test dashboard the_page
	TRAINJOB_SCREENSHOTS=$(CURDIR)/docs/images $(CARGO) test --locked --test realnode_clients the_page

# Without KUBECONFIG: start the local control plane in the background (fake nodes, CRDs,
# runtimes), then run the operator in the foreground under its own RBAC identity. REAL_NODE=1
# adds a real kubelet node where MPI really runs (needs root); REAL_NODES=3 three real nodes
# of the multi-node tier (root); KUEUE=1 runs Kueue in front.
install-plugin: ## Install the kubectl plugin (`kubectl trainjob`, binary kubectl-trainjob) into ~/.cargo/bin
	$(CARGO) install --locked --path . --bin kubectl-trainjob

run: ## Run the operator (against the local test control plane when KUBECONFIG is unset)
ifeq ($(strip $(KUBECONFIG)),)
	@$(MAKE) --no-print-directory bed
	$(CARGO) build --locked --workspace --bins
	@hack/run-local.sh $(BED_DIR)
else
	$(CARGO) run --locked -p trainjob-operator -- run
endif

clean: ## Remove build output and the local bed directory
	$(CARGO) clean
	rm -rf $(BED_DIR)
