#!/bin/bash
# Runs INSIDE the VM as root. Loads the kernel parts a storage node and a worker need
# (on Talos: machine config), then runs the lifecycle twice: with the file store on
# XFS (reflink snapshots, as on Talos's /var) and with the LVM thin store; and the
# store contract tests against LVM thin, which needs device-mapper; the fault suite
# with verified data; replicated volumes over two targets (md RAID1 on the node); and
# the CSI conformance suite (csi-sanity) when it is given. Two lanes share the VM's two
# vCPUs (see lane_b below).
# usage: guest.sh <bin-dir> [csi-sanity binary]
set -uo pipefail
bin=$1 sanity=${2:-}
# nvmet/nvmet-tcp: the storage node; nvme-tcp: the worker; loop + dm-thin: the stores;
# md-mod + raid1: replicated volumes on the worker (built into Talos's kernel).
modprobe -a configfs nvmet nvmet-tcp nvme-tcp nvme-fabrics loop dm-thin-pool md-mod raid1 || exit 1
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
[ -c /dev/nvme-fabrics ] || { echo "guest: /dev/nvme-fabrics missing"; exit 1; }
mount -t tmpfs -o size=5G e2e /e2e 2>/dev/null || { mkdir -p /e2e && mount -t tmpfs -o size=5G e2e /e2e; }
status=0
# The target API's certificates, made once (openssl is slow to start under emulation).
"$(dirname "$0")/../../deploy/certs/make-certs.sh" /e2e/certs >/dev/null || exit 1

# A file store must sit on ext4 or xfs: nvmet sees a 0-byte file on overlayfs, and on
# tmpfs it needs buffered_io and WRITE_ZEROES fails. So: a loop device, formatted.
disk() {  # <name> <size> -> prints a loop device over a new sparse file
  truncate -s "$2" "/e2e/$1.img"
  losetup -f --show "/e2e/$1.img"
}

echo "=== LVM thin: volume group with 1 MiB extents and a thin pool"
# No udev in this VM: LVM must create its device nodes itself instead of waiting.
sed -i 's/^\(\s*\)# udev_sync = 1/\1udev_sync = 0/; s/^\(\s*\)# udev_rules = 1/\1udev_rules = 0/' /etc/lvm/lvm.conf
# No metadata backups or archives: each LVM command would write two more files, a
# quarter of its time under emulation (measured: 1.0 s per command, 0.75 s without).
# The driver never reads them; production keeps LVM's defaults.
sed -i 's/^\(\s*\)# backup = 1/\1backup = 0/; s/^\(\s*\)# archive = 1/\1archive = 0/' /etc/lvm/lvm.conf
[ "$(grep -cE '^\s*(backup|archive) = 0' /etc/lvm/lvm.conf)" = 2 ] || { echo "guest: could not turn off LVM's backups"; exit 1; }
pv=$(disk lvm 3G)
export LVM_SUPPRESS_FD_WARNINGS=1
{ pvcreate -q "$pv" && vgcreate -q -s 1M nvmecsi "$pv" && lvcreate -q -T nvmecsi/pool -L 2G; } || exit 1


# Two lanes on the VM's two vCPUs keep the VM part within its budget. The second lane
# runs in the background, its output kept for the end: the LVM store contract tests,
# csi-sanity (its own target, store, ports and host NQN) and the lifecycle on LVM thin
# (its ports and host identity moved by --port-offset). Every suite checks and cleans
# up only its own nvmet entries, so the lanes never see each other's.
lane_b() {
  echo "=== store contract tests against LVM thin"
  NVME_CSI_TEST_LVM_POOL=nvmecsi/pool "$bin/nvme-csiPackageTests.xctest" --testing-library swift-testing \
    --filter VolumeStoreContractTests || lane=1
  if [ -n "$sanity" ]; then
    echo "=== CSI conformance: csi-sanity against target + all-in-one (controller and node)"
    "$(dirname "$0")/sanity.sh" "$bin" "$sanity" /e2e/sanity || lane=1
  fi
  echo "=== lifecycle: LVM thin store"
  "$bin/nvme-csi-e2e" --bin "$bin" --work /e2e/lvm --store lvm:nvmecsi/pool --certs /e2e/certs --port-offset 20 \
    || lane=1
  return ${lane:-0}
}
# This lane's loop devices first: two `losetup -f` at once could pick the same device.
file_disk=$(disk file 2G) faults_disk=$(disk faults 1G) repl_a_disk=$(disk repl-a 512M) repl_b_disk=$(disk repl-b 512M)
repl_c_disk=$(disk repl-c 384M)  # the smallest: new legs go to store-a and store-b
lane_b >/e2e/lane-b.log 2>&1 &
lane_b_pid=$!

echo "=== lifecycle: file store on XFS"
mkdir -p /e2e/file/store
mkfs.xfs -q -f "$file_disk" && mount "$file_disk" /e2e/file/store || exit 1
"$bin/nvme-csi-e2e" --bin "$bin" --work /e2e/file --store file:/e2e/file/store --certs /e2e/certs || status=1
umount /e2e/file/store

echo "=== faults under verified I/O: file store on XFS"
mkdir -p /e2e/faults/store
mkfs.xfs -q -f "$faults_disk" && mount "$faults_disk" /e2e/faults/store || exit 1
"$bin/nvme-csi-e2e" --suite faults --bin "$bin" --work /e2e/faults --store file:/e2e/faults/store \
  --store-device "$faults_disk" --certs /e2e/certs || status=1
umount /e2e/faults/store

echo "=== replicated volumes: two targets (a third for repairs; file stores on XFS), md RAID1 on the node"
mkdir -p /e2e/repl/a /e2e/repl/b /e2e/repl/c
for leg in "$repl_a_disk:a" "$repl_b_disk:b" "$repl_c_disk:c"; do
  mkfs.xfs -q -f "${leg%:*}" && mount "${leg%:*}" "/e2e/repl/${leg#*:}" || exit 1
done
"$bin/nvme-csi-e2e" --suite replication --bin "$bin" --work /e2e/repl --store file:/e2e/repl/a \
  --second-store file:/e2e/repl/b --third-store file:/e2e/repl/c --certs /e2e/certs || status=1
umount /e2e/repl/a /e2e/repl/b /e2e/repl/c

echo "=== the second lane (LVM contract tests, csi-sanity, LVM lifecycle), run alongside"
wait "$lane_b_pid" || status=1
cat /e2e/lane-b.log
exit $status
