#!/bin/bash
# Runs INSIDE the VM as root (guest.sh calls it): the CSI conformance suite
# (csi-sanity) against a real target on real configfs and `nvme-csi all-in-one`,
# which serves Controller and Node on the one endpoint the suite's Node specs need.
# usage: sanity.sh <bin-dir> <csi-sanity binary> <work dir on a tmpfs>
set -uo pipefail
bin=$1 sanity=$2 work=$3
mkdir -p "$work/store" "$work/nvme" "$work/logs"
# The store on XFS on a loop device, as in the lifecycle (reflink clones and snapshots).
truncate -s 2G "$work/store.img"
loop=$(losetup -f --show "$work/store.img") && mkfs.xfs -q -f "$loop" && mount "$loop" "$work/store" || exit 1
echo "nqn.2014-08.org.nvmexpress:uuid:3f0b8c2e-5d1a-4b7e-9c64-2a8e1d7f0b35" >"$work/nvme/hostnqn"
echo "3f0b8c2e-5d1a-4b7e-9c64-2a8e1d7f0b35" >"$work/nvme/hostid"
echo '{"targets": [{"name": "sanity", "address": "127.0.0.1:7610"}]}' >"$work/targets.json"

# The target API in plaintext on loopback: this suite checks CSI conformance, and the
# lifecycle, fault and LVM suites already run the target API with mutual TLS (the
# time here goes to CSI, not to the transport).
"$bin/nvme-csi" target --listen 127.0.0.1:7610 --store "file:$work/store" --portal 127.0.0.1:4430 \
  --insecure-plaintext --log-level debug >"$work/logs/target.log" 2>&1 &
target=$!
"$bin/nvme-csi" all-in-one --endpoint "unix://$work/csi.sock" --targets "$work/targets.json" \
  --state-dir "$work/node-state" --nvme-config-dir "$work/nvme" --insecure-plaintext \
  --log-level debug >"$work/logs/plugin.log" 2>&1 &
plugin=$!
for _ in $(seq 100); do [ -S "$work/csi.sock" ] && break; sleep 0.1; done

# Every spec runs; 64 MiB volumes, expanded to 128 MiB, modified (VolumeAttributesClass)
# to keep reconnecting forever. Skips are only for capabilities we do not advertise
# (the suite decides that from our capabilities).
printf 'ctrlLossTmo: "-1"\nfastIoFailTmo: "60"\n' >"$work/mutable-parameters.yaml"
"$sanity" -csi.endpoint "unix://$work/csi.sock" \
  -csi.stagingdir "$work/staging" -csi.mountdir "$work/mount" \
  -csi.testvolumesize 67108864 -csi.testvolumeexpandsize 134217728 \
  -csi.testvolumemutableparameters "$work/mutable-parameters.yaml" \
  -ginkgo.no-color -ginkgo.timeout 10m -ginkgo.json-report "$work/logs/sanity.json" >"$work/logs/sanity.log" 2>&1
status=$?
grep -E '^(Ran |FAIL!|SUCCESS!|.*Passed.*Failed)|\[FAIL\]' "$work/logs/sanity.log"
# Which specs did not run, so a skip is never silent.
python3 - "$work/logs/sanity.json" <<'PY'
import json, sys
for suite in json.load(open(sys.argv[1])):
    for spec in suite.get("SpecReports") or []:
        if spec.get("State") in ("skipped", "pending") and spec.get("LeafNodeText"):
            print(f"  {spec['State']}: {' '.join(spec.get('ContainerHierarchyTexts') or [])} {spec['LeafNodeText']}")
# Where the suite's time goes (RunTime is in nanoseconds), for the VM budget.
ran = [s for suite in json.load(open(sys.argv[1])) for s in suite.get("SpecReports") or []
       if s.get("State") == "passed" and s.get("LeafNodeText")]
for spec in sorted(ran, key=lambda s: -s.get("RunTime", 0))[:5]:
    print(f"  slowest: {spec['RunTime'] / 1e9:.1f} s {' '.join(spec.get('ContainerHierarchyTexts') or [])} {spec['LeafNodeText']}")
PY
if [ $status -ne 0 ]; then
  echo "--- csi-sanity failures"; grep -A25 '\[FAILED\]' "$work/logs/sanity.log" | head -150
  echo "--- plugin log (tail)"; tail -40 "$work/logs/plugin.log"
  echo "--- target log (tail)"; tail -20 "$work/logs/target.log"
fi
kill "$plugin" "$target" 2>/dev/null
wait "$plugin" "$target" 2>/dev/null
# The suite deletes what it creates: nothing of its target may be left in nvmet (other
# suites run alongside: only subsystems serving this store count).
left=$(grep -l "^$work/store/" /sys/kernel/config/nvmet/subsystems/*/namespaces/1/device_path 2>/dev/null | wc -l)
[ "$left" = 0 ] || { echo "csi-sanity left $left subsystems in nvmet"; status=1; }
umount "$work/store"; losetup -d "$loop"
exit $status
