#!/usr/bin/env bash
# make bench-vm: issue 13's `make bench` items 2-4 inside the VM (bench/vm/README.md).
# Boots Debian's kernel under qemu (Tests/e2e/vm.sh), runs bench/vm/guest.sh there, takes
# the results out of the console and writes bench/results/<date>-vm[-<build>][-reduced].md
# and .json.
#
# usage: bench/vm/run.sh [--bin BINARY] [--build release|debug] [--label TEXT] [measure options…]
#   --bin    the nvme-csi binary (default: $NVME_CSI_BENCH_BIN, else /work/e2ebin/nvme-csi,
#            else .build/debug/nvme-csi)
#   --build  its build type, for the results (default: from the path: …/release/… or …/debug/…)
#   --label  added to the results' file names (e.g. trial)
#   measure options (bench_vm.py measure --help): --rounds 10 --fio-rounds 2 --fio-runtime 5
#            --rss-volumes 20 --startup-rounds 5 --phases startup,attach,fio,rss --no-ktrace
# Needs: qemu and the packages of scripts/install-deps.sh, nvme-cli (make bench-vm installs it),
# python3-venv. Timings are disturbed by anything else running: it waits for other VMs to end.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${NVME_CSI_BENCH_BIN:-}
build="" label="" pass=()
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --label) label=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) pass+=("$1"); shift ;;
  esac
done
if [ -z "$bin" ]; then
  if [ -x /work/e2ebin/nvme-csi ]; then bin=/work/e2ebin/nvme-csi; build=${build:-debug}  # the e2e's copy of the debug build
  else bin=.build/debug/nvme-csi; fi
fi
[ -x "$bin" ] || { echo "bench-vm: no nvme-csi binary at $bin (--bin)" >&2; exit 1; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
if [ -z "$build" ]; then
  case $bin in */release/*) build=release ;; */debug/*) build=debug ;; *) build=unknown ;; esac
fi
command -v nvme >/dev/null || { echo "bench-vm: nvme-cli is not installed (apt-get install nvme-cli; make bench-vm does it)" >&2; exit 1; }
command -v fio >/dev/null || { echo "bench-vm: fio is not installed (make deps)" >&2; exit 1; }

# The Python client: the venv and stubs of bench/run.sh (make bench), made the same way.
venv=.build/bench-venv
if ! cmp -s bench/requirements.txt "$venv/requirements.txt" 2>/dev/null; then
  echo "bench-vm: creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r bench/requirements.txt
  cp bench/requirements.txt "$venv/requirements.txt"
fi
export PYTHONDONTWRITEBYTECODE=1
"$venv/bin/python" -c 'import sys; sys.path.insert(0, "bench"); import bench; bench.generate_stubs()'

# One VM at a time: another one would share these 2 cores and disturb every figure.
for i in $(seq 720); do
  pgrep -f '^qemu-system' >/dev/null || break
  [ "$i" = 1 ] && echo "bench-vm: another VM is running; waiting for it to end"
  sleep 5
done
pgrep -f '^qemu-system' >/dev/null && { echo "bench-vm: another VM is still running after an hour" >&2; exit 1; }

mkdir -p .build/bench-vm
console=.build/bench-vm/console-$(date +%Y%m%dT%H%M%S).log
# Which binary exactly, and the tree it was run from (the binary may be older than HEAD).
sha=$(sha256sum "$bin" | cut -c1-16)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit+uncommitted changes"
echo "bench-vm: $bin ($build build, sha256 $sha…); console in $console"
# What else the host ran meanwhile (the guest cannot see it): the load and the busiest
# other processes every 10 s, for the results' notes.
hostload=${console%.log}.host
( while :; do
    vms=$(pgrep -c -f '^qemu-system-x86_64 ' || true)  # ours is one; any other VM shares the cores
    echo "$(date +%s) $(cut -d' ' -f1 /proc/loadavg) $(ps -eo pcpu=,comm= --sort=-pcpu | grep -v -e qemu-system -e ' ps$' | head -3 | awk '{printf "%s:%s,", $2, $1}')vms:$vms"
    sleep 10
  done ) >"$hostload" 2>/dev/null &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT
status=0
NVME_CSI_VM_TIMEOUT=${NVME_CSI_VM_TIMEOUT:-1800} \
  Tests/e2e/vm.sh "$PWD/bench/vm/guest.sh" "$bin" --build "$build" --binary-sha256 "$sha" --commit "$commit" "${pass[@]}" 2>&1 | tee "$console" || status=$?
# Whatever the guest printed, also after a failure (the figures measured before it).
kill $sampler 2>/dev/null || true
"$venv/bin/python" bench/vm/bench_vm.py render --console "$console" --host-load "$hostload" ${label:+--label "$label"} || status=1
exit $status
