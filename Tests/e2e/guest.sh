#!/bin/bash
# Runs INSIDE the VM as root: loads the kernel parts a storage node and a worker
# need (on Talos: machine config), puts the file store on a real file system, then
# runs the lifecycle program. usage: guest.sh <bin-dir> [ext4|xfs]
set -euo pipefail
bin=$1
storefs=${2:-xfs}  # XFS, as on Talos: snapshots and clones are reflinks
# nvmet/nvmet-tcp: the storage node; nvme-tcp: the worker; loop: the store's disk.
modprobe -a configfs nvmet nvmet-tcp nvme-tcp nvme-fabrics loop
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
[ -c /dev/nvme-fabrics ] || { echo "guest: /dev/nvme-fabrics missing"; exit 1; }

# The store must be on ext4 or xfs: nvmet sees a 0-byte file on overlayfs, and on
# tmpfs it needs buffered_io and WRITE_ZEROES fails. So: a loop device over a file
# on tmpfs, formatted.
work=/e2e
mkdir -p $work
mount -t tmpfs -o size=3G e2e $work
truncate -s 2G $work/disk.img
case $storefs in
  xfs) mkfs.xfs -q -f $work/disk.img ;;
  *) mkfs.ext4 -q -F $work/disk.img ;;
esac
loop=$(losetup -f --show $work/disk.img)
mkdir -p $work/store
mount "$loop" $work/store
echo "guest: store on $storefs ($loop), kernel $(uname -r)"
exec "$bin/nvme-csi-e2e" --bin "$bin" --work $work
