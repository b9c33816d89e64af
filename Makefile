# nftpolicy — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO          ?= go
BIN         := $(CURDIR)/bin
K8S_ASSETS  := $(BIN)/k8s
# envtest (controller-runtime) finds kube-apiserver and etcd here.
export KUBEBUILDER_ASSETS := $(K8S_ASSETS)
# The kernel and end-to-end tests use the agent built by `make build`.
export NFTPOLICY_AGENT := $(BIN)/nftpolicy-agent

GO_TEST_FLAGS ?= -count=1 -timeout 20m
APT_PACKAGES  := nftables iproute2 conntrack

# The Helm CLI (make helm); test/deploy renders the chart with it.
export HELM := $(BIN)/helm
CHART       := config/helm/nftpolicy
# make image: the agent image as an OCI archive, for `ctr -n k8s.io images import`.
IMAGE         ?= docker.io/nftpolicy/agent:dev
IMAGE_ARCHIVE := _out/image/nftpolicy-agent.oci.tar

# Every rule is listed, not only those with a "## " comment: a target added without one
# shows up as such instead of going missing.
.PHONY: help
help: ## Show this help: every target, with its ## comment.
	@awk '/^[a-zA-Z0-9_-]+:([^=]|$$)/ { t = $$0; sub(/:.*/, "", t); d = "(no description: add a ## comment)"; \
	  if (index($$0, "## ")) { d = $$0; sub(/^[^#]*## /, "", d) } printf "  \033[36m%-18s\033[0m %s\n", t, d }' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build the agent into bin/nftpolicy-agent and the CLI into bin/nftpolicy.
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/nftpolicy-agent ./cmd/nftpolicy-agent
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/nftpolicy ./cmd/nftpolicy

.PHONY: deps
deps: ## Install the Debian packages the tests need (nft, ip, conntrack, chromium) when missing.
	@missing=""; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v conntrack >/dev/null || missing="$$missing conntrack"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install$$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

.PHONY: envtest-assets
envtest-assets: ## Build kube-apiserver and etcd from the Go module proxy into bin/k8s (cached).
	@hack/build-control-plane.sh $(K8S_ASSETS)

.PHONY: vet
vet: ## gofmt, go vet, and bash -n of every shell script.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@for f in $$(git ls-files '*.sh' .ci/run); do bash -n "$$f" || exit 1; done

# The list of pure packages is computed so that it cannot go stale: every way this tree
# reaches the kernel (netlink sockets, network namespaces, conntrack, NFLOG) goes through
# golang.org/x/sys/unix, so a package whose test binary does not depend on it needs
# neither root nor the kernel. Packages without tests have no .test entry.
.PHONY: unit
unit: ## Tests of every pure package under pkg/ and internal/ (computed: those whose tests do not reach the kernel); no root needed.
	@set -o pipefail; \
	pkgs=$$($(GO) list -test -f '{{.ImportPath}}{{range .Deps}} {{.}}{{end}}' ./pkg/... ./internal/... | \
	  awk '$$1 ~ /\.test$$/ && !/ golang\.org\/x\/sys\/unix( |$$)/ { sub(/\.test$$/, "", $$1); print $$1 }') || exit 1; \
	if [ -z "$$pkgs" ]; then echo "unit: found no pure package" >&2; exit 1; fi; \
	echo "$(GO) test $(GO_TEST_FLAGS)" $$pkgs; \
	$(GO) test $(GO_TEST_FLAGS) $$pkgs

.PHONY: test
# The packages make test runs: all but the reliability suites, which run only on request
# (make test-reliability) and would otherwise be listed just to skip.
TEST_PACKAGES = $$($(GO) list ./... | grep -v /test/reliability/)
test: deps envtest-assets build vet lint chart image ## Every test: lint, unit, envtest, kernel (netns) and end-to-end; installs what it needs. Under CI=true a test that cannot set up its kernel environment fails instead of skipping.
	$(GO) test $(GO_TEST_FLAGS) $(TEST_PACKAGES)

.PHONY: test-reliability
test-reliability: deps envtest-assets build ## Long reliability tests on the lab (root): restarts under a prober, API server outage, drift, coexistence, revocation, pod lifecycle races (docs/reliability.md).
	NFTPOLICY_RELIABILITY=1 $(GO) test $(GO_TEST_FLAGS) -p 1 ./test/reliability/...

# ---- the lab: a cluster stand-in made of network namespaces (test/lab, cmd/nftpolicy-lab) ----
LAB      := $(BIN)/nftpolicy-lab
LAB_ARGS ?=

.PHONY: lab-build
lab-build: ## Build the lab CLI into bin/nftpolicy-lab.
	CGO_ENABLED=0 $(GO) build -trimpath -o $(LAB) ./cmd/nftpolicy-lab

.PHONY: demo
demo: deps envtest-assets build lab-build ## The main job: API server + 2 nodes and pods in network namespaces, the agent enforcing policies, matrices before and after (root).
	$(LAB) demo --agent $(BIN)/nftpolicy-agent $(LAB_ARGS)

.PHONY: lab-up
lab-up: deps envtest-assets build lab-build ## Start a lab cluster with the demo's pods and keep it running until Ctrl-C (LAB_ARGS="--topology bridge-vxlan --policies").
	$(LAB) up --agent $(BIN)/nftpolicy-agent --scenario demo $(LAB_ARGS)

.PHONY: lab-down
lab-down: lab-build ## Remove every lab leftover of this machine: namespaces, processes, state (LAB_ARGS=--all also stops live labs).
	$(LAB) down $(LAB_ARGS)

.PHONY: lab-test
lab-test: deps envtest-assets build ## The lab's own tests (test/lab; root): both topologies, ClusterIPs, cleanup, crash cleanup.
	$(GO) test $(GO_TEST_FLAGS) ./test/lab/...

# ---- benchmarks (test/bench, cmd/nftpolicy-bench; docs/performance.md) ----
BENCH_ARGS ?=

.PHONY: bench
bench: deps envtest-assets build ## Every benchmark on the lab (root, ~45 min): data path, control plane, revocation with a full conntrack table, resources, API server fan-out (docs/scale.md), and the Go benchmarks of ./pkg/...; one table, raw numbers in _out/bench/bench.json (BENCH_ARGS="--quick", or "--only datapath,revocation,fanout").
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/nftpolicy-bench ./cmd/nftpolicy-bench
	$(BIN)/nftpolicy-bench --agent $(BIN)/nftpolicy-agent --out _out/bench $(BENCH_ARGS)

.PHONY: image
image: ## Build the agent image (as the Dockerfile does) as an OCI archive in _out/image/, without a daemon.
	@mkdir -p _out/image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o _out/image/nftpolicy-agent ./cmd/nftpolicy-agent
	$(GO) -C hack/image build -trimpath -o $(BIN)/image .
	SOURCE_DATE_EPOCH="$$(git log -1 --format=%ct 2>/dev/null || echo 0)" $(BIN)/image -ref $(IMAGE) \
	  -file _out/image/nftpolicy-agent:/nftpolicy-agent -entrypoint /nftpolicy-agent -user 0:0 \
	  -label org.opencontainers.image.title=nftpolicy-agent \
	  -label "org.opencontainers.image.description=Kubernetes NetworkPolicy enforcer on nftables" \
	  -label org.opencontainers.image.source=https://github.com/nftpolicy/nftpolicy \
	  -label org.opencontainers.image.version=$(lastword $(subst :, ,$(IMAGE))) \
	  -label "org.opencontainers.image.revision=$$(git rev-parse --verify -q HEAD || echo unknown)" \
	  -out $(IMAGE_ARCHIVE)
	@echo "import with: ctr -n k8s.io images import $(IMAGE_ARCHIVE)"

.PHONY: golangci-lint
golangci-lint: ## Build golangci-lint from the Go module proxy into bin/golangci-lint (cached).
	@hack/build-golangci-lint.sh $(BIN)

.PHONY: lint
lint: golangci-lint ## golangci-lint with .golangci.yml (errcheck, govet, staticcheck, gosec for the agent, ...); make test runs it.
	$(BIN)/golangci-lint run ./...

.PHONY: helm
helm: ## Build helm (helm.sh/helm/v3) from the Go module proxy into bin/helm (cached).
	@hack/build-helm.sh $(BIN)

.PHONY: chart
chart: helm ## helm lint and helm template the chart (rendered into _out/helm/); make test runs it.
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) --values test/deploy/testdata/all-values.yaml
	@mkdir -p _out/helm
	$(HELM) template nftpolicy $(CHART) --namespace kube-system > _out/helm/nftpolicy.yaml
	$(HELM) template nftpolicy $(CHART) --namespace kube-system --values test/deploy/testdata/all-values.yaml > _out/helm/nftpolicy-all-values.yaml
	@echo "rendered into _out/helm/"

.PHONY: conformance-build
conformance-build: envtest-assets ## Build the conformance cluster's binaries from the module proxy into bin/conformance (cached).
	@hack/conformance/build.sh $(BIN)/conformance

.PHONY: cnp-conformance-generate
cnp-conformance-generate: ## Regenerate test/cnpconformance/nosctp (the CNP suite's tests that probe SCTP among TCP and UDP, without their SCTP probes) after a bump of sigs.k8s.io/network-policy-api.
	$(GO) run ./hack/cnpconformance-nosctp -o test/cnpconformance/nosctp

.PHONY: cnp-conformance-build
cnp-conformance-build: ## Build the upstream ClusterNetworkPolicy conformance suite (sigs.k8s.io/network-policy-api, test/cnpconformance) into bin/conformance/cnp-conformance.test.
	$(GO) test -c -o $(BIN)/conformance/cnp-conformance.test ./test/cnpconformance

# kind (make kind, make conformance): the multi-node test bed, hack/kind/.
KIND_CLUSTER    ?= nftpolicy
# auto: kind's stock node image and kindnet where Docker Hub answers, else the offline
# image below (make kind-image) with Flannel.
KIND_NODE_IMAGE ?= auto
KIND_OFFLINE_IMAGE := nftpolicy/kind-node:v1.37.2
# The suite runs of make conformance, TOPOLOGY/KUBE-PROXY-MODE/IP-FAMILY each.
CONFORMANCE_RUNS ?= vxlan/iptables/ipv4 host-gw/nftables/ipv4 host-gw/iptables/ipv6
export KIND_CLUSTER KIND_NODE_IMAGE KIND_OFFLINE_IMAGE CONFORMANCE_RUNS

.PHONY: kind-build
kind-build: ## Build kind, etcd, CoreDNS, flanneld, crictl and the harness's capwrap from the module proxy into bin/kind (cached).
	@hack/kind/build.sh $(BIN)/kind

.PHONY: kind-image
kind-image: conformance-build kind-build image ## Build the offline kind node image (Kubernetes v1.37.2 from Debian packages and the module proxy; cached; root).
	@hack/kind/node-image.sh $(if $(filter-out auto stock,$(KIND_NODE_IMAGE)),$(KIND_NODE_IMAGE),$(KIND_OFFLINE_IMAGE))

.PHONY: kind
kind: kind-build image helm ## Quick start: a kind cluster (KIND_CLUSTER, 1 control plane + 2 workers) with nftpolicy installed by Helm on every node (root).
	@hack/conformance/build.sh $(BIN)/conformance kubectl
	@IMAGE=$(IMAGE) IMAGE_ARCHIVE=$(CURDIR)/$(IMAGE_ARCHIVE) MAKE="$(MAKE)" hack/kind/cluster.sh up

.PHONY: kind-demo
kind-demo: ## On the cluster of make kind: the demo's workload and policies (config/samples/demo), the matrix before and after, across nodes.
	@hack/kind/demo.sh

.PHONY: kind-down
kind-down: ## Delete the kind cluster(s) and the Docker engine make kind started, and put the host back.
	@hack/kind/cluster.sh down

.PHONY: conformance
conformance: conformance-build cnp-conformance-build kind-image image helm ## Upstream NetworkPolicy e2e suite, then the ClusterNetworkPolicy conformance suite, on 3-node kind clusters, one per CONFORMANCE_RUNS entry (root); lines "N passed, M failed (…)" and "cnp: N passed, M failed (…)" (CONFORMANCE_CNP=gate|report|off, gate by default; CONFORMANCE_CNP_RUNS=first|all, first by default).
	@IMAGE=$(IMAGE) IMAGE_ARCHIVE=$(CURDIR)/$(IMAGE_ARCHIVE) KIND_NODE_IMAGE=$(KIND_OFFLINE_IMAGE) MAKE="$(MAKE)" hack/kind/conformance.sh

.PHONY: conformance-down
conformance-down: ## Tear down what a crashed conformance run left: its kind cluster and the harness's Docker engine.
	@KIND_CLUSTER=nftpolicy-conformance hack/kind/cluster.sh down

.PHONY: clean
clean: ## Remove build outputs: the binaries of build, lab-build, bench and image, and _out/. Keeps the cached tools built from the module proxy (bin/k8s, bin/helm, bin/golangci-lint, bin/conformance, bin/kind).
	rm -f $(BIN)/nftpolicy-agent $(BIN)/nftpolicy $(LAB) $(BIN)/nftpolicy-bench $(BIN)/image
	rm -rf _out
