#!/usr/bin/env bash
# Generates the Swift code for proto/ into <out>/CSIProto and <out>/TargetProto.
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
# The target API lands in a nested folder; keep the target flat.
if [ -d "$out/TargetProto/nvmecsi" ]; then
  mv "$out"/TargetProto/nvmecsi/target/v1/* "$out/TargetProto/"
  rm -rf "$out/TargetProto/nvmecsi"
fi
