#!/usr/bin/env bash
# Installs the Debian packages nvme-csi's build, tests and demo need (Debian 12).
# The Swift toolchain itself is expected on PATH (swift 6.1 or newer).
# Idempotent and quick when everything is present.
set -euo pipefail

packages=(
  make protobuf-compiler                       # build, make proto
  libnvme-dev libjson-c-dev libssl-dev         # the node plugin links libnvme (pkg-config needs all three)
  e2fsprogs xfsprogs util-linux                # mkfs, blkid, resize tools the node plugin runs
  lvm2 thin-provisioning-tools                 # the LVM thin store
  qemu-system-x86 busybox-static kmod cpio xz-utils binutils  # the VM harness (Tests/e2e)
  fio                                          # the writer with checksums in the VM fault suite
  mdadm                                        # replicated volumes: md RAID1 over the legs (node plugin)
  python3 python3-venv                         # the manifest checks (Tests/deploy)
  openssl                                      # deploy/certs/make-certs.sh: the target API certificates in tests
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ! command -v swift >/dev/null; then
  echo "swift is not on PATH: install the Swift 6.1+ toolchain for Debian 12 first" >&2
  exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
