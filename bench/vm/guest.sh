#!/bin/bash
# Runs INSIDE the VM as root (bench/vm/run.sh boots it through Tests/e2e/vm.sh): loads
# what a storage node and a worker need, then runs bench_vm.py's measurements, which
# print their results on the console (the VM's file system is a throw-away overlay).
# usage: guest.sh <nvme-csi binary> [bench_vm.py measure options…]
set -uo pipefail
bin=$1; shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
dmesg -n 1  # keep kernel messages off the console: it carries the results
# nvmet/nvmet-tcp: the storage node; nvme-tcp: the worker; loop: the store's XFS.
modprobe -a configfs nvmet nvmet-tcp nvme-tcp nvme-fabrics loop || exit 1
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
[ -c /dev/nvme-fabrics ] || { echo "bench-vm: /dev/nvme-fabrics missing"; exit 1; }
# No transparent huge pages: on loopback, nvme-tcp hands the page of fio's buffer to the
# socket as is and nvmet-tcp copies out of it; a 2 MiB THP buffer gives skb fragments that
# run past the huge page, and Debian's hardened usercopy stops the kernel (BUG at
# mm/usercopy.c:101 "Kernel memory exposure attempt detected from page alloc", met in
# nvmet_tcp_io_work with 1 MiB writes). Across a real NIC the data arrives in new pages.
echo never >/sys/kernel/mm/transparent_hugepage/enabled || exit 1
mkdir -p /bench && mount -t tmpfs -o size=2500M bench /bench || exit 1
export PYTHONDONTWRITEBYTECODE=1
exec "$repo/.build/bench-venv/bin/python" "$repo/bench/vm/bench_vm.py" measure --bin "$bin" --work /bench "$@"
