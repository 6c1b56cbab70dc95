#!/usr/bin/env bash
# Deployment checks: renders every kustomization under deploy/kubernetes, validates
# the objects against the Kubernetes schemas, cross-checks them against the
# nvme-csi binary, and feeds every StorageClass to CreateVolume on a real
# controller and target. Needs python3 with the venv module, and the binary
# (NVME_CSI_BIN, default .build/debug/nvme-csi: `swift build` makes it).
# Extra arguments go to pytest (e.g. -k storageclass, -x).
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=.build/deploy-venv
requirements=Tests/deploy/requirements.txt

if ! command -v python3 >/dev/null; then
  echo "deploy checks: python3 is not installed (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "deploy checks: python3 has no venv module (Debian: apt-get install python3-venv)" >&2
  exit 1
fi

# (Re)create the venv when it is missing or the pins changed.
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  echo "deploy checks: creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the source tree
export NVME_CSI_BIN="${NVME_CSI_BIN:-$PWD/.build/debug/nvme-csi}"
if [ ! -x "$NVME_CSI_BIN" ]; then
  echo "deploy checks: no nvme-csi binary at $NVME_CSI_BIN: run swift build (make build), or set NVME_CSI_BIN" >&2
  exit 1
fi
exec "$venv/bin/python" -m pytest -p no:cacheprovider Tests/deploy "$@"
