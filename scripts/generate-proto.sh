#!/usr/bin/env bash
# Generates the Swift code for proto/ into <out>/CSIProto, <out>/TargetProto and
# <out>/AdminProto.
# Used by `make proto` (out = Sources) and `make verify-proto`.
set -euo pipefail
out=${1:?usage: generate-proto.sh <output-dir>}
plugins=.build-protoc/release
gen() { # <proto-file> <output-target-dir>
  mkdir -p "$2"
  protoc -I proto \
    --plugin=protoc-gen-swift="$plugins/protoc-gen-swift" \
    --plugin=protoc-gen-grpc-swift-2="$plugins/protoc-gen-grpc-swift-2" \
    --swift_opt=Visibility=Public --swift_out="$2" \
    --grpc-swift-2_opt=Visibility=Public,Server=true,Client=true --grpc-swift-2_out="$2" \
    "$1"
}
gen csi.proto "$out/CSIProto"
gen nvmecsi/target/v1/target.proto "$out/TargetProto"
gen nvmecsi/admin/v1/admin.proto "$out/AdminProto"
# Our own APIs land in nested folders; keep the targets flat.
flatten() { # <output-target-dir> <api>
  if [ -d "$1/nvmecsi" ]; then
    mv "$1"/nvmecsi/"$2"/v1/* "$1/"
    rm -rf "$1/nvmecsi"
  fi
}
flatten "$out/TargetProto" target
flatten "$out/AdminProto" admin
