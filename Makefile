# Sluice developer commands. Builds share one target directory outside the checkout so
# RocksDB and librdkafka are compiled once per machine, and every cargo call takes a
# machine-wide lock so two heavy builds never run at once.

export SLUICE_CACHE ?= /var/cache/sluice
export CARGO_TARGET_DIR ?= $(SLUICE_CACHE)/target
BUILD_LOCK ?= /var/tmp/sluice-build.lock
# Held by whatever uses the shared local cluster and broker (tests, benchmarks, other
# checkouts): the chaos and recovery tests kill the broker and the API server.
E2E_LOCK ?= /var/tmp/sluice-e2e.lock
CARGO := flock $(BUILD_LOCK) cargo
RELEASE := --release
CLUSTER := bash tests/cluster/cluster.sh

.PHONY: help demo demo-local test deps build fmt fmt-check clippy crd crd-check unit-test e2e-test \
        cluster-up cluster-down cluster-status cluster-recovery-test cluster-isolation-test \
        images bench doc unused-deps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

# Builds select the whole workspace (--workspace --bins): cargo unifies dependency features
# over the packages of one invocation, and a worker-only build would differ from the
# workspace's and compile RocksDB a second time.
demo: deps ## the page-views example on the local cluster: Kafka, images, the chart, a StreamJob, its results, an upgrade live
	$(CARGO) build $(RELEASE) --workspace --bins
	bash hack/demo-cluster.sh

demo-local: deps ## the page-views example in local mode (no cluster, no broker)
	$(CARGO) build $(RELEASE) --workspace --bins
	bash hack/demo.sh

# The recovery and isolation tests are in the recipe, not the prerequisites: they kill the
# API server and the broker and take the cluster down, so they must start only after
# e2e-test has finished, and one after the other, even under make -j.
# The build comes before clippy: on a cold machine it compiles RocksDB's C++ while the
# Rust dependencies compile on the other core (clippy, run first, checks the dependencies
# in a few minutes and then waits on the C++ alone); crd-check and the tests then reuse it.
test: deps fmt-check unused-deps build clippy crd-check doc unit-test cluster-up e2e-test ## everything CI runs (the node's images need the built binaries)
	$(MAKE) --no-print-directory cluster-recovery-test
	$(MAKE) --no-print-directory cluster-isolation-test

deps: ## install the Debian packages builds need (idempotent)
	bash hack/install-deps.sh

build: deps ## build every binary
	$(CARGO) build $(RELEASE) --workspace --all-targets

fmt: ## format the code
	cargo fmt --all

fmt-check: ## fail when the code is not formatted
	cargo fmt --all -- --check

clippy: ## lint; warnings are errors
	$(CARGO) clippy $(RELEASE) --workspace --all-targets -- -D warnings

# crdgen is the binary the workspace's build makes: `cargo run -p sluice-crds` would select
# one package, and cargo, unifying features over what one call selects, would compile the
# API crate's dependencies (k8s-openapi among them) a second time with other features.
CRDGEN := $(CARGO_TARGET_DIR)/$(if $(RELEASE),release,debug)/crdgen

crd: build ## regenerate crds/streamjobs.sluice.dev.yaml and docs/streamjob.md from the Rust types
	$(CRDGEN) --write crds/streamjobs.sluice.dev.yaml
	$(CRDGEN) --reference docs/streamjob.md
	cp crds/streamjobs.sluice.dev.yaml charts/sluice/crds/streamjobs.sluice.dev.yaml

crd-check: build ## fail when the committed CRD differs from the Rust types
	$(CRDGEN) > $(SLUICE_CACHE)/crd-generated.yaml
	@diff -u crds/streamjobs.sluice.dev.yaml $(SLUICE_CACHE)/crd-generated.yaml \
	  || { echo "crds/streamjobs.sluice.dev.yaml is out of date: run 'make crd' and commit it"; exit 1; }
	@cmp -s crds/streamjobs.sluice.dev.yaml charts/sluice/crds/streamjobs.sluice.dev.yaml \
	  || { echo "charts/sluice/crds/ differs from crds/: run 'make crd' and commit it"; exit 1; }

unit-test: ## tests that need no cluster
	$(CARGO) test $(RELEASE) --workspace --exclude sluice-e2e

# The worker tests run `sluice-worker run` processes; the controller tests run
# `sluice-controller run` processes beside them, with worker pods from the image cluster-up
# builds from the release binary; the chaos tests kill workers and the broker, so they run
# alone, one at a time, after the others (their report is printed).
E2E_SUITES := --lib --test api --test chart --test cluster --test kafka --test node --test s3 --test validate --test worker --test savepoint --test controller
# The tests are built under the build lock and run without it: the broker-restart test
# runs `cluster.sh up`, which may rebuild the node's images under that same lock.
# Every cargo call here selects the whole workspace with all its targets, as `build` does:
# cargo unifies features over what one call selects, so `--bins` alone or `-p sluice-e2e`
# would compile the workspace's crates again with other features (8.5 minutes of a warm
# `make test`), and the binaries the tests run would differ from those in the node's
# images. `--workspace --test NAME` selects the e2e crate's suites only (no other package
# has them); `--lib` runs every crate's unit tests again too (seconds).
e2e-test: ## tests against the local cluster and broker (run cluster-up first)
	$(CARGO) build $(RELEASE) --workspace --all-targets
	$(CARGO) test $(RELEASE) --workspace $(E2E_SUITES) --test chaos --no-run
	flock $(E2E_LOCK) cargo test $(RELEASE) --workspace $(E2E_SUITES) -- --test-threads 2
	flock $(E2E_LOCK) cargo test $(RELEASE) --workspace --test chaos -- --test-threads 1 --nocapture

cluster-up: ## start (or reuse) the local Kubernetes control plane, node and Kafka broker
	$(CLUSTER) up

cluster-down: ## stop everything cluster-up started
	$(CLUSTER) down

cluster-status: ## show what runs
	$(CLUSTER) status

cluster-recovery-test: ## kill -9 the API server and the broker, up; down (no leftovers), up; leaves it up
	flock $(E2E_LOCK) bash tests/cluster/recovery-test.sh

cluster-isolation-test: ## plant another Kubernetes' chain, cgroup and netns; down and up leave them intact; up refuses beside a kubelet
	flock $(E2E_LOCK) bash tests/cluster/isolation-test.sh

images: ## build the controller and worker images and load them into the local node
	bash tests/cluster/images.sh

bench: ## local-mode throughput and memory (see bench/README.md)
	$(CARGO) build $(RELEASE) --workspace --bins
	bash bench/local-throughput.sh

unused-deps: ## fail when a crate declares a dependency its code never uses (cargo-machete)
	bash hack/unused-deps.sh

doc: ## API documentation of the API crate; broken links and missing docs fail
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc $(RELEASE) --no-deps -p sluice-crds
