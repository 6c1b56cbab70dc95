// swift-tools-version:6.1
import PackageDescription

let grpc: [Target.Dependency] = [
  .product(name: "GRPCCore", package: "grpc-swift-2"),
  .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
  .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
]
let log: Target.Dependency = .product(name: "Logging", package: "swift-log")

let package = Package(
  // Linux only (Glibc, libnvme, configfs, mount(2)); no Apple platform is supported.
  name: "nvme-csi",
  products: [
    .executable(name: "nvme-csi", targets: ["nvme-csi"])
  ],
  dependencies: [
    .package(url: "https://github.com/grpc/grpc-swift-2.git", exact: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", exact: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
    .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
    .package(url: "https://github.com/apple/swift-argument-parser.git", exact: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log.git", exact: "1.16.2"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", exact: "2.13.0"),
    .package(url: "https://github.com/apple/swift-nio.git", exact: "2.101.3"),
    // TLS on the target API: certificate reloading and reading the client's certificate.
    .package(url: "https://github.com/apple/swift-nio-extras.git", exact: "1.35.2"),
    .package(url: "https://github.com/apple/swift-certificates.git", exact: "1.21.1"),
    // Prometheus metrics (`--metrics-address`).
    .package(url: "https://github.com/swift-server/swift-prometheus.git", exact: "2.4.1"),
  ],
  targets: [
    // Generated code only (`make proto`).
    .target(
      name: "CSIProto",
      dependencies: grpc + [.product(name: "SwiftProtobuf", package: "swift-protobuf")]),
    .target(
      name: "TargetProto",
      dependencies: grpc + [.product(name: "SwiftProtobuf", package: "swift-protobuf")]),
    .target(
      name: "AdminProto",
      dependencies: grpc + [.product(name: "SwiftProtobuf", package: "swift-protobuf")]),

    // CSI-agnostic domain: IDs, NQNs, sizes, capabilities, locks, errors, the pool for
    // blocking work (NIO's thread pool). No gRPC.
    .target(name: "NVMeCSICore", dependencies: [.product(name: "NIOPosix", package: "swift-nio")]),

    // Where volume data lives (sparse files with reflink snapshots).
    .target(name: "VolumeStore", dependencies: ["NVMeCSICore"]),
    // How volumes are exported (Linux nvmet through configfs).
    .target(name: "NVMetExporter", dependencies: ["NVMeCSICore"]),

    // libnvme, module map only; NVMeFabrics holds the one safe type over it.
    .systemLibrary(name: "CNVMe", pkgConfig: "libnvme", providers: [.apt(["libnvme-dev", "libjson-c-dev", "libssl-dev"])]),
    // Attaching namespaces over NVMe/TCP: libnvme connect/disconnect, sysfs lookups.
    .target(name: "NVMeFabrics", dependencies: ["CNVMe", "NVMeCSICore"]),
    // mount(2), mountinfo, mkfs/blkid/resize tools with timeouts.
    .target(name: "Mounting", dependencies: ["NVMeCSICore"]),

    // gRPC plumbing shared by every role: endpoints, TLS and authorization, serving,
    // error mapping, logging, metrics.
    .target(name: "CSIServer", dependencies: grpc + ["NVMeCSICore", "CSIProto", log,
      .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      .product(name: "NIOCertificateReloading", package: "swift-nio-extras"),
      .product(name: "X509", package: "swift-certificates"),
      .product(name: "Prometheus", package: "swift-prometheus"),
      .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")]),

    // The controller ↔ target seam: the TargetAPI protocol in domain types, its wire
    // format and its gRPC client.
    .target(
      name: "TargetContract",
      dependencies: grpc + [
        "NVMeCSICore", "TargetProto", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "NIOConcurrencyHelpers", package: "swift-nio"), .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]),
    // `nvme-csi target`: the target API over a store and an exporter.
    .target(
      name: "TargetAgent",
      dependencies: grpc + ["NVMeCSICore", "VolumeStore", "NVMetExporter", "TargetContract", "TargetProto", log]),
    // `nvme-csi controller`: CSI Identity + Controller over target APIs, and the
    // operator's Admin service next to them.
    .target(
      name: "ControllerPlugin",
      dependencies: grpc + ["NVMeCSICore", "CSIProto", "AdminProto", "TargetContract", "CSIServer", log]),

    // `nvme-csi node`: CSI Node over an attacher and a mounter.
    .target(
      name: "NodePlugin",
      dependencies: grpc + ["NVMeCSICore", "CSIProto", "CSIServer", "NVMeFabrics", "Mounting", log]),

    // Thin executable: flags → configuration → services.
    .executableTarget(
      name: "nvme-csi",
      dependencies: grpc + [
        "NVMeCSICore", "CSIProto", "AdminProto", "TargetContract", "CSIServer", "TargetAgent", "ControllerPlugin",
        "NodePlugin", "NVMeFabrics", "Mounting", "VolumeStore", "NVMetExporter", log,
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]),

    // The end-to-end lifecycle that runs inside the VM against the real kernel (make e2e).
    .executableTarget(
      name: "nvme-csi-e2e",
      dependencies: grpc + ["CSIProto", "TargetProto", "CSIServer", "NVMeCSICore", "NVMeFabrics", log],
      path: "Tests/e2e/Lifecycle"),

    // Helpers shared by the test targets.
    .target(
      name: "TestSupport",
      dependencies: grpc + [
        "NVMeCSICore", "CSIProto", "CSIServer", "TargetAgent", "TargetContract", "VolumeStore", "NVMetExporter", log,
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
      path: "Tests/TestSupport"),
    .testTarget(name: "NVMeCSICoreTests", dependencies: ["NVMeCSICore", "TestSupport"]),
    .testTarget(name: "VolumeStoreTests", dependencies: ["VolumeStore", "NVMeCSICore", "TestSupport"]),
    .testTarget(name: "NVMetExporterTests", dependencies: ["NVMetExporter", "NVMeCSICore", "TestSupport"]),
    .testTarget(name: "MountingTests", dependencies: ["Mounting", "NVMeCSICore", "TestSupport"]),
    .testTarget(name: "NVMeFabricsTests", dependencies: ["NVMeFabrics", "NVMeCSICore", "TestSupport"]),
    .testTarget(
      name: "NodePluginTests",
      dependencies: grpc + ["NodePlugin", "NVMeFabrics", "Mounting", "CSIProto", "NVMeCSICore", "CSIServer", "TestSupport", log]),
    .testTarget(
      name: "TargetAgentTests",
      dependencies: grpc + [
        "TargetAgent", "TargetContract", "TargetProto", "VolumeStore", "NVMetExporter", "NVMeCSICore", "CSIServer",
        "TestSupport", log, .product(name: "NIOPosix", package: "swift-nio"),
      ]),
    .testTarget(
      name: "ControllerPluginTests",
      dependencies: grpc + [
        "ControllerPlugin", "CSIProto", "AdminProto", "TargetContract", "TargetAgent", "VolumeStore", "NVMetExporter",
        "NVMeCSICore", "CSIServer", "TestSupport", log,
      ]),
  ],
  swiftLanguageModes: [.v6]
)
