// swift-tools-version:6.1
// Builds the protoc plugins used by `make proto` from the pinned package copies,
// so generated code always matches the runtime libraries the driver links.
import PackageDescription

let package = Package(
  name: "protoc-plugins",
  dependencies: [
    .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
  ],
  targets: []
)
