#!/usr/bin/env bash
# Boots Debian's stock kernel under qemu with this machine's root shared read-only
# (9p + a tmpfs overlay), so the freshly built binaries run unchanged inside, and runs
# one command there as root. The VM has no network card: target and host talk over
# its loopback. Prints the guest's console; exits with the guest command's status.
#
# usage: Tests/e2e/vm.sh <absolute path of a guest script> [args…]
# env:   NVME_CSI_VM_CACHE (kernel cache, default ~/.cache/nvme-csi-vm)
#        NVME_CSI_VM_TIMEOUT (seconds, default 900)  NVME_CSI_VM_ACCEL=auto|kvm|tcg
#
# Every pitfall below was met for real; see Tests/e2e/README.md.
set -euo pipefail

cache=${NVME_CSI_VM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/nvme-csi-vm}
timeout_s=${NVME_CSI_VM_TIMEOUT:-900}
accel=${NVME_CSI_VM_ACCEL:-auto}
[ $# -ge 1 ] && [ "${1:0:1}" = / ] || { echo "usage: $0 /absolute/guest-script [args...]" >&2; exit 2; }
run=$(mktemp -d /tmp/nvme-csi-vm.XXXXXX)
mkdir -p "$cache"
started=$(date +%s)

# --- kernel: linux-image-amd64's current ABI package, unpacked once and cached.
# (Not linux-image-cloud-amd64: it has no 9p.)
kernel_package() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
kpkg=$(kernel_package)
[ -n "$kpkg" ] || { apt-get update -qq >/dev/null; kpkg=$(kernel_package); }
kver=${kpkg#linux-image-}
kdir=$cache/kernel-$kver
if [ ! -e "$kdir/.done" ]; then
  echo "vm: fetching $kpkg (cached in $kdir)"
  rm -rf "$kdir" "$cache/debs"; mkdir -p "$kdir" "$cache/debs"
  sandbox=(); [ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)  # root: no _apt user write access
  (cd "$cache/debs" && apt-get download -qq "${sandbox[@]}" "$kpkg" >/dev/null)
  dpkg -x "$cache"/debs/"$kpkg"_*.deb "$kdir"
  rm -rf "$cache/debs"
  depmod -b "$kdir" "$kver"  # the .deb ships no modules.dep (its postinst makes it)
  # An uncompressed vmlinux with a PVH entry lets qemu skip the BIOS and the
  # in-guest decompression: ~6 s less per boot under TCG.
  vmlinuz=$kdir/boot/vmlinuz-$kver
  offset=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1 || true)
  if [ -n "$offset" ]; then
    tail -c +$((offset + 1)) "$vmlinuz" | xz -dc --single-stream >"$kdir/vmlinux" 2>/dev/null || true
    readelf -n "$kdir/vmlinux" 2>/dev/null | grep -q 0x00000012 || rm -f "$kdir/vmlinux"
  fi
  touch "$kdir/.done"
fi
kimage=$kdir/vmlinux; [ -e "$kimage" ] || kimage=$kdir/boot/vmlinuz-$kver
kmoddir=$kdir/lib/modules/$kver

# --- initramfs: static busybox and the modules needed to mount the host root.
initrd=$run/initramfs
mkdir -p "$initrd/bin" "$initrd/modules"
cp /bin/busybox "$initrd/bin/busybox"
for m in virtio_pci 9pnet_virtio 9p overlay; do
  modprobe -d "$kdir" -S "$kver" --show-depends "$m"
done | awk '$1=="insmod"{print $2}' | awk '!seen[$0]++' | while read -r ko; do
  cp "$ko" "$initrd/modules/"; basename "$ko" >>"$initrd/modules.list"
done
cat >"$initrd/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /host /rw /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev   # no udev: device nodes come from devtmpfs
die() { echo "vm-init: $*"; echo "VM-EXIT-STATUS=99" >/dev/ttyS1; poweroff -f; }
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p"; }
kmoddir=$(arg vm.kmoddir); stage2=$(arg vm.stage2)   # read before /proc moves
for m in $(cat /modules.list); do insmod "/modules/$m" || die "insmod $m"; done
# The host's / read-only; cache=loose is faster and safe (the host side is static).
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host || die "9p mount"
mount -t tmpfs -o size=60% tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot || die "overlay mount"
mkdir -p /newroot/usr/lib/modules
ln -sfn "$kmoddir" "/newroot/usr/lib/modules/$(uname -r)"
for d in proc sys dev; do mount --move "/$d" "/newroot/$d"; done
# exec: PID 1 itself switches root, so the kernel's modprobe helper finds /sbin/modprobe.
exec switch_root /newroot /bin/bash "$stage2"
INIT
chmod +x "$initrd/init"
(cd "$initrd" && find . | cpio -o -H newc --quiet) >"$run/initramfs.cpio"

# --- stage 2 runs as PID 1 on the overlaid host root, then powers off.
printf '%q ' "$@" >"$run/command"
cat >"$run/stage2.sh" <<STAGE2
#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/swift/usr/bin HOME=/root TERM=dumb
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname nvme-csi-vm
ip link set lo up
modprobe virtio-rng 2>/dev/null || true   # else mkfs waits ~3 s for entropy
echo "vm: booted in \$(cut -d' ' -f1 /proc/uptime) s"
bash -c "\$(cat $run/command)" </dev/null
rc=\$?
if [ \$rc -ne 0 ]; then echo "---- dmesg (tail)"; dmesg | tail -40; fi
echo "VM-EXIT-STATUS=\$rc" >/dev/ttyS1
sync
echo o >/proc/sysrq-trigger
sleep 30
STAGE2
chmod +x "$run/stage2.sh"

# --- accelerator: KVM only where it really works (VT-x/AMD-V and not PVM).
if [ "$accel" = auto ]; then
  accel=tcg
  if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ]; then accel=kvm; fi
fi
case $accel in kvm) qaccel=(-accel kvm -cpu host) ;; *) qaccel=(-accel tcg -cpu max) ;; esac

echo "vm: $kpkg, accel=$accel, timeout ${timeout_s}s"
set +e
: >"$run/console"  # before tail opens it: tail -f gives up on a file that is not there yet
timeout -k 5 "$timeout_s" qemu-system-x86_64 "${qaccel[@]}" \
  -m 3G -smp 2 -display none -monitor none -no-reboot -nic none \
  -kernel "$kimage" -initrd "$run/initramfs.cpio" \
  -append "console=ttyS0 quiet panic=-1 vm.kmoddir=$kmoddir vm.stage2=$run/stage2.sh" \
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
  -device virtio-rng-pci \
  -serial stdio -serial "file:$run/result" </dev/null >"$run/console" 2>&1 &
qemu=$!
tail -n +1 -f "$run/console" --pid=$qemu 2>/dev/null
wait $qemu
qrc=$?
set -e
status=$(sed -n 's/^VM-EXIT-STATUS=\([0-9]*\).*/\1/p' "$run/result" 2>/dev/null | tail -1)
elapsed=$(( $(date +%s) - started ))
if [ "$qrc" = 0 ] && [ "$status" = 0 ]; then
  echo "vm: guest command passed (${elapsed}s)"
  rm -rf "$run"
  exit 0
fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then echo "vm: TIMEOUT after ${timeout_s}s"; fi
echo "vm: FAILED (qemu exit $qrc, guest status ${status:-none}, ${elapsed}s); console tail:"
tail -60 "$run/console"
echo "vm: full console kept in $run/console"
exit 1
