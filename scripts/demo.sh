#!/usr/bin/env bash
# A narrated walk through a volume's life on this machine: a storage target (file
# store in a temp directory) and a controller run locally; `nvme-csi ctl` speaks CSI
# to the controller's unix socket exactly as Kubernetes' sidecars would.
#
# Without the kernel NVMe target (no configfs here), the target keeps its nvmet
# configuration in a plain directory ("simulated"); the demo shows that tree.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(swift build --show-bin-path)/nvme-csi
work=$(mktemp -d /tmp/nvme-csi-demo.XXXXXX)
socket="$work/csi.sock"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
step_no=0
# step "<what a user wants to know>" <ctl args...>: runs one RPC and shows its answer.
step() {
  local title=$1; shift
  step_no=$((step_no + 1))
  printf '\n\033[1m%d. %s\033[0m\n   $ nvme-csi ctl %s\n' "$step_no" "$title" "$*"
  local start=$(now_ms) out status=0
  out=$("$bin" ctl "$1" --endpoint "unix://$socket" "${@:2}" 2>&1) || status=$?
  echo "$out" | sed 's/^/   /'
  printf '   (%d ms)\n' $(( $(now_ms) - start ))
  if [ "$status" -ne 0 ] && [ -z "${expect_failure:-}" ]; then echo "   FAILED"; exit 1; fi
  if [ "$status" -eq 0 ] && [ -n "${expect_failure:-}" ]; then echo "   should have been refused"; exit 1; fi
  last="$out"
}
show_store() {
  echo "   store: $(cd "$work/store" && find . -type f -name '*.img' -printf '%p %s bytes (%k KiB allocated)  ' | sed 's|\./||g')"
}

mkdir -p "$work/configfs" "$work/store"
# The target API with mutual TLS, certificates as docs/security.md makes them.
"$(dirname "$0")/../deploy/certs/make-certs.sh" "$work/certs" >/dev/null
tls() { echo --tls-ca "$work/certs/$1/ca.crt" --tls-cert "$work/certs/$1/tls.crt" --tls-key "$work/certs/$1/tls.key"; }
"$bin" target --listen 127.0.0.1:7600 --store "file:$work/store" --configfs "$work/configfs" \
  --portal 127.0.0.1:4420 $(tls target) --log-level warning 2>"$work/target.log" &
pids+=($!)
cat >"$work/targets.json" <<JSON
{"targets": [{"name": "local", "address": "127.0.0.1:7600", "topology": {"topology.nvme.csi.dev/zone": "demo"}}]}
JSON
"$bin" controller --endpoint "unix://$socket" --targets "$work/targets.json" $(tls controller) \
  --log-level warning 2>"$work/controller.log" &
pids+=($!)
# Ready when the controller serves and reaches the target.
for _ in $(seq 150); do
  "$bin" ctl plugin-info --endpoint "unix://$socket" 2>/dev/null | grep -q "ready=true" && break
  sleep 0.2
done

echo "nvme-csi demo: target (file store in $work/store) + controller on $socket"
started=$(now_ms)
step "Who is the plugin?" plugin-info
step "How much room is there?" get-capacity
step "Create a 1 GiB ext4 volume (a sparse file, exported as an NVMe subsystem)" create-volume pvc-demo --size 1Gi
volume=$(echo "$last" | awk '/^volume /{print $2}')
show_store
step "Repeat the same request: same volume (idempotent by name)" create-volume pvc-demo --size 1Gi
node="n1.0f8e1c2a-1111-4222-8333-444455556666.nqn.2014-08.org.nvmexpress:uuid:0f8e1c2a-1111-4222-8333-444455556666"
step "Allow a node to attach it (what ControllerPublish gives the node)" publish "$volume" --node "$node"
echo "   nvmet: $(ls "$work/configfs/nvmet/subsystems/"*/allowed_hosts)"
step "Snapshot it (reflink where the file system can)" create-snapshot snap-demo --volume "$volume"
snapshot=$(echo "$last" | awk '/^snapshot /{print $2}')
step "Restore the snapshot into a new volume" create-volume pvc-restored --size 1Gi --from-snapshot "$snapshot"
restored=$(echo "$last" | awk '/^volume /{print $2}')
step "Clone the volume" create-volume pvc-clone --size 2Gi --from-volume "$volume"
clone=$(echo "$last" | awk '/^volume /{print $2}')
step "Grow the original to 3 GiB" expand "$volume" --size 3Gi
show_store
step "List every volume with its nodes and health" list-volumes
expect_failure=1 step "Try to delete a volume a node still uses: refused" delete-volume "$volume"
step "Revoke the node's access" unpublish "$volume" --node "$node"
for v in "$clone" "$restored" "$volume"; do step "Delete $v" delete-volume "$v"; done
step "Delete the snapshot" delete-snapshot "$snapshot"
step "Nothing is left" list-volumes
leftover=$(find "$work/store" -type f | wc -l)
printf '\nDone: 3 volumes and 1 snapshot created, published, expanded and deleted in %d ms; %d files left in the store.\n' \
  $(( $(now_ms) - started )) "$leftover"
