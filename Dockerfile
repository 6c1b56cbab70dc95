# nvme-csi: one image for every role (controller, node, target, ctl).
#
#   docker build -t ghcr.io/nvme-csi/nvme-csi:0.1.0 .      (or: make image)
#
# Build on your own machine or in CI with a container engine; the project's
# development machines have none. The Swift runtime is linked statically; the image
# carries only what the binary and the node plugin's tools need.

ARG SWIFT_IMAGE=swift:6.3.1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${SWIFT_IMAGE} AS build
# libnvme's pkg-config file needs json-c's and OpenSSL's as well.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnvme-dev libjson-c-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits reuse the resolved and fetched packages.
# (Package.resolved is optional: Package.swift pins every direct dependency.)
COPY Package.swift Package.resolve[d] ./
RUN swift package resolve
COPY Sources ./Sources
# The package declares test targets and the e2e executable; SwiftPM wants their
# directories present even when building one product.
COPY Tests ./Tests
RUN swift build -c release --static-swift-stdlib --product nvme-csi \
 && install -D -m 0755 "$(swift build -c release --static-swift-stdlib --show-bin-path)/nvme-csi" /out/nvme-csi \
 && /out/nvme-csi --version

FROM ${RUNTIME_IMAGE}
# libnvme1: NVMe/TCP connect (node). e2fsprogs, xfsprogs: mkfs, resize2fs,
# xfs_growfs (node). util-linux: blkid (node). lvm2, thin-provisioning-tools: the
# LVM thin store (target with --store lvm:…). mdadm: replicated volumes' md RAID1
# mirrors (node). (mount and grep, which the Talos
# overlay's target wrapper uses, are in every Debian base image.)
# No machine ID may ship in the image: the node plugin derives its host NQN from
# one when the host has no /etc/nvme/hostnqn, and every node would get the same.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libnvme1 e2fsprogs xfsprogs util-linux lvm2 thin-provisioning-tools mdadm \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/machine-id /var/lib/dbus/machine-id
COPY --from=build /out/nvme-csi /usr/local/bin/nvme-csi
# Fails the build if a shared library is missing from this stage.
RUN ["/usr/local/bin/nvme-csi", "--version"]
ENTRYPOINT ["/usr/local/bin/nvme-csi"]
