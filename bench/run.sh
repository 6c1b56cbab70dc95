#!/usr/bin/env bash
# make bench: the control plane over its real sockets, and the footprint (bench/README.md).
# Creates the Python venv (.build/bench-venv) from bench/requirements.txt when missing or
# when the pins changed, then runs bench/bench.py with the arguments given (--bin BINARY
# is required; --help lists the rest). Needs python3 with the venv module; the XFS store
# needs root, losetup and mkfs.xfs (else a directory on the current file system is used,
# and the results say so).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.build/bench-venv
requirements=bench/requirements.txt

if ! command -v python3 >/dev/null; then
  echo "bench: python3 is not installed (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "bench: python3 has no venv module (Debian: apt-get install python3-venv)" >&2
  exit 1
fi

# (Re)create the venv when it is missing or the pins changed.
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  echo "bench: creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the source tree
exec "$venv/bin/python" bench/bench.py "$@"
