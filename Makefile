# nvme-csi — see README.md. Every target here is what CI and the README use.
SHELL := /bin/bash
SWIFT ?= swift
PLUGINS := .build-protoc/release

.PHONY: all build test unit-test e2e demo demo-local check-manifests image proto verify-proto plugins deps clean format lint

all: build

## Install the Debian packages the build, tests and demo need (always checks).
deps:
	./scripts/install-deps.sh
	@mkdir -p .build && touch $(DEPS_STAMP)

# Builds check the packages once, not on every build: again only when the installer
# changes or .build is removed (`make deps` checks on demand).
DEPS_STAMP := .build/.deps-installed
$(DEPS_STAMP): scripts/install-deps.sh
	./scripts/install-deps.sh
	@mkdir -p .build && touch $@

build: $(DEPS_STAMP)
	$(SWIFT) build

## Everything: formatting, generated code up to date, the Swift test suites, then the
## real data path in a VM (make e2e).
test: lint unit-test check-manifests e2e

## Unit, contract and conformance tests (real gRPC over real unix sockets, real
## `nvme-csi target` processes); no VM. Bounded in time: a hung test is named.
unit-test: $(DEPS_STAMP) verify-proto
	$(SWIFT) build --build-tests
	SWIFT=$(SWIFT) ./scripts/unit-test.sh

# Hand-written Swift (generated code is not ours to format).
SWIFT_SOURCES = $(shell find Sources Tests -name '*.swift' -not -path 'Sources/CSIProto/*' -not -path 'Sources/TargetProto/*' -not -path 'Sources/AdminProto/*' | sort)

## Reformat the hand-written Swift with the committed .swift-format.
format:
	@$(SWIFT) format format --in-place --parallel $(SWIFT_SOURCES)

## Fail on any difference from .swift-format (part of make test).
lint:
	@$(SWIFT) format lint --strict --parallel $(SWIFT_SOURCES)
	@echo "formatting is clean"
	@# Foundation's Process crashed the test process now and then (TestSupport/ChildProcess.swift says why).
	@! grep -rnE '(^|[^A-Za-z])Process\(\)' --include='*.swift' Sources Tests --exclude-dir=e2e \
	  || { echo "use ChildProcess (tests) or CommandRunner, not Foundation's Process"; exit 1; }

## Render deploy/kubernetes, validate it against the Kubernetes schemas, cross-check
## it with the binary and feed its StorageClasses to CreateVolume (Tests/deploy).
check-manifests: build
	Tests/deploy/run.sh

## The container image, one for every role (Dockerfile). Needs docker or podman: for
## users' and release machines; the development machines run no container engine.
VERSION := $(shell sed -n 's/.*static let version = "\(.*\)"/\1/p' Sources/NVMeCSICore/BuildInfo.swift)
IMAGE ?= ghcr.io/nvme-csi/nvme-csi:$(VERSION)
CONTAINER_ENGINE ?= docker
image:
	$(CONTAINER_ENGINE) build -t $(IMAGE) .

## The same image for linux/amd64 and linux/arm64 under one name (docs/image.md):
##   make image-multiarch                 docker buildx; loads the result into docker
##                                        (a multi-platform image needs its containerd
##                                        image store; otherwise push it: PUSH=1)
##   make image-multiarch PUSH=1          builds and pushes $(IMAGE) (docker login first)
##   make image-multiarch CONTAINER_ENGINE=podman [PUSH=1]
##                                        a podman manifest list $(IMAGE); PUSH=1 pushes it
## The architecture that is not the machine's builds under QEMU (binfmt_misc), slowly,
## unless the builder has a native node for it. PLATFORMS=… and BUILDER=<buildx
## builder> override the defaults.
PLATFORMS ?= linux/amd64,linux/arm64
.PHONY: image-multiarch
ifeq ($(notdir $(CONTAINER_ENGINE)),podman)
# --manifest adds to an existing list of that name (and refuses a plain image's name):
# start from no list, so a rebuild replaces the images instead of adding more.
image-multiarch:
	if $(CONTAINER_ENGINE) manifest exists $(IMAGE); then $(CONTAINER_ENGINE) manifest rm $(IMAGE); \
	elif $(CONTAINER_ENGINE) image exists $(IMAGE); then $(CONTAINER_ENGINE) untag $(IMAGE) $(IMAGE); fi
	$(CONTAINER_ENGINE) build --platform $(PLATFORMS) --manifest $(IMAGE) .
	$(if $(filter 1,$(PUSH)),$(CONTAINER_ENGINE) manifest push --all $(IMAGE) docker://$(IMAGE))
else
image-multiarch:
	$(CONTAINER_ENGINE) buildx build --platform $(PLATFORMS) $(if $(BUILDER),--builder $(BUILDER)) \
	  $(if $(filter 1,$(PUSH)),--push,--load) -t $(IMAGE) .
endif

## The README's main job: boot the VM and walk volumes through their whole life on
## the real kernel, narrated.
demo: e2e

## The control plane alone, without a VM: a target (nvmet simulated in a directory)
## and a controller, driven with `nvme-csi ctl`.
demo-local: build
	./scripts/demo.sh

## The control-plane bench (issue 13; not part of make test): builds the release
## binary, runs a target (file store on a loop-mounted XFS with reflink) and a
## controller, drives CSI over the unix socket from Python and writes
## bench/results/<date>.md and .json. Needs root for the loop mount (else a directory,
## and the results say so). Options: make bench BENCH_ARGS='--repeats 5 --large'
## (bench/README.md).
.PHONY: bench
BENCH_ARGS ?=
bench: $(DEPS_STAMP)
	$(SWIFT) build -c release --static-swift-stdlib --product nvme-csi
	bench/run.sh --bin "$$($(SWIFT) build -c release --static-swift-stdlib --show-bin-path)/nvme-csi" --build release $(BENCH_ARGS)

## The in-VM bench (issue 13, items 2-4; not part of make test): boots the VM (as make
## e2e) with the release binary and measures attach (NodeStage + NodePublish against
## exec `nvme connect` + poll + mount), the data path (fio through the driver's device
## against a hand-connected one), the node plugin's footprint and replicated volumes'
## failover and resync (the e2e replication suite, timed); writes
## bench/results/<date>-vm.md and .json. Installs nvme-cli (the exec side) when missing.
## Options: make bench-vm BENCH_VM_ARGS='--rounds 20 --rss-volumes 50' (bench/vm/README.md).
.PHONY: bench-vm
BENCH_VM_ARGS ?=
bench-vm: $(DEPS_STAMP)
	@command -v nvme >/dev/null || { sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq nvme-cli >/dev/null || \
	  { $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq nvme-cli >/dev/null; }; }
	$(SWIFT) build -c release --static-swift-stdlib --product nvme-csi
	$(SWIFT) build -c release --static-swift-stdlib --product nvme-csi-e2e
	bench/vm/run.sh --bin "$$($(SWIFT) build -c release --static-swift-stdlib --show-bin-path)/nvme-csi" --build release $(BENCH_VM_ARGS)

plugins: $(DEPS_STAMP) $(PLUGINS)/protoc-gen-swift $(PLUGINS)/protoc-gen-grpc-swift-2
$(PLUGINS)/protoc-gen-swift $(PLUGINS)/protoc-gen-grpc-swift-2:
	cd tools/protoc-plugins && $(SWIFT) build -c release --product protoc-gen-swift --scratch-path ../../.build-protoc
	cd tools/protoc-plugins && $(SWIFT) build -c release --product protoc-gen-grpc-swift-2 --scratch-path ../../.build-protoc

## Regenerate Sources/CSIProto, Sources/TargetProto and Sources/AdminProto from proto/.
proto: plugins
	./scripts/generate-proto.sh Sources

## Fail when the committed generated code differs from what proto/ produces.
verify-proto: plugins
	rm -rf .build-proto-check && mkdir -p .build-proto-check
	./scripts/generate-proto.sh .build-proto-check
	diff -r Sources/CSIProto .build-proto-check/CSIProto
	diff -r Sources/TargetProto .build-proto-check/TargetProto
	diff -r Sources/AdminProto .build-proto-check/AdminProto
	@echo "generated code is up to date"

clean:
	rm -rf .build .build-protoc .build-proto-check

## The real data path: boot Debian's stock kernel under qemu and run the lifecycle
## (nvmet target, nvme-tcp host through libnvme, mkfs, mount) inside it.
# The CSI conformance suite (csi-test's csi-sanity), run inside the VM when present.
CSI_SANITY ?= $(abspath ../shared/tools/csi-sanity/csi-sanity)
e2e: $(DEPS_STAMP)
	$(SWIFT) build --build-tests
	@[ -x "$(CSI_SANITY)" ] || echo "csi-sanity not found at $(CSI_SANITY): the CSI conformance suite is skipped (set CSI_SANITY=<path>)"
	NVME_CSI_VM_TIMEOUT=$${NVME_CSI_VM_TIMEOUT:-1200} Tests/e2e/vm.sh $(CURDIR)/Tests/e2e/guest.sh $$($(SWIFT) build --show-bin-path) \
	  $$([ -x "$(CSI_SANITY)" ] && echo "$(CSI_SANITY)")
