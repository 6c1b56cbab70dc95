import CSIProto
import Foundation
import GRPCCore
import NVMeCSICore
import TestSupport
import Testing

/// Hostile or broken requests get a clear status and change nothing on the node.
@Suite("Malformed node requests")
struct MalformedRequestTests {
  /// What a request could have changed on the node.
  struct Footprint: Equatable, CustomStringConvertible {
    var connects: Int
    var disconnects: Int
    var mounts: [String]
    var unmounts: Int
    var records: [String]
    var description: String {
      "connects \(connects), disconnects \(disconnects), mounts \(mounts), unmounts \(unmounts), records \(records)"
    }

    init(_ machine: Machine) {
      connects = machine.kernel.connectCalls
      disconnects = machine.kernel.read(\.disconnectCalls)
      mounts = machine.kernel.allMounts.map(\.mountPoint)
      unmounts = machine.kernel.read(\.unmountCalls.count)
      records = machine.recordFiles.sorted().map { name in
        (try? String(contentsOfFile: machine.stateDirectory + "/volumes/" + name, encoding: .utf8)) ?? name
      }
    }
  }

  /// Runs `body` against a node that has one volume staged and published, and checks
  /// the requests in it changed nothing.
  static func withBusyNode(_ body: (Harness, TestVolume) async throws -> Void) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      try await h.publish(v)
      let before = Footprint(h.machine)
      try await body(h, v)
      #expect(Footprint(h.machine) == before)
      #expect(FileManager.default.fileExists(atPath: h.machine.targetPath(v)))
    }
  }

  static let badPaths: [(String, String)] = [
    ("empty", ""),
    ("relative", "var/lib/kubelet/plugins/x"),
    ("parent component", "/var/lib/kubelet/../../etc"),
    ("parent component at the end", "/var/lib/kubelet/.."),
    ("current component", "/var/lib/./kubelet"),
    ("NUL", "/var/lib/kubelet/x\0/y"),
    ("newline", "/var/lib/kubelet/x\nlevel=error msg=forged"),
    ("DEL", "/var/lib/kubelet/\u{7f}"),
    ("longer than 4096 bytes", "/" + String(repeating: "a", count: 4096)),
  ]

  @Test(
    "Bad staging_target_path, target_path and volume_path values are InvalidArgument and change nothing",
    arguments: badPaths)
  func badPath(why: String, path: String) async throws {
    try await Self.withBusyNode { h, v in
      let other = h.machine.export()
      let staging = h.machine.stagingPath(v)
      let target = h.machine.targetPath(v)
      await expectStatus(.invalidArgument, mentioning: "staging_target_path") {
        try await h.node.nodeStageVolume(stageRequest(other, at: path))
      }
      await expectStatus(.invalidArgument, mentioning: "staging_target_path") {
        try await h.node.nodeUnstageVolume(
          .with {
            $0.volumeID = v.id
            $0.stagingTargetPath = path
          })
      }
      await expectStatus(.invalidArgument, mentioning: "staging_target_path") {
        try await h.node.nodePublishVolume(publishRequest(v, staging: path, target: target))
      }
      await expectStatus(.invalidArgument, mentioning: "target_path") {
        try await h.node.nodePublishVolume(publishRequest(v, staging: staging, target: path))
      }
      await expectStatus(.invalidArgument, mentioning: "target_path") {
        try await h.node.nodeUnpublishVolume(
          .with {
            $0.volumeID = v.id
            $0.targetPath = path
          })
      }
      // A relative volume_path names no publication: NotFound, as csi-sanity expects.
      let statsCode: RPCError.Code = path.isEmpty || path.hasPrefix("/") ? .invalidArgument : .notFound
      await expectStatus(statsCode, mentioning: "volume_path") { try await h.stats(v, path: path) }
      await expectStatus(.invalidArgument, mentioning: "volume_path") {
        try await h.node.nodeExpandVolume(
          .with {
            $0.volumeID = v.id
            $0.volumePath = path
          })
      }
    }
  }

  @Test("Volume IDs that are not ours are NotFound, and success for unpublish and unstage", arguments: hostileVolumeIDs)
  func badVolumeID(id: String) async throws {
    try await Self.withBusyNode { h, v in
      let staging = h.machine.kubelet + "/bad/globalmount"
      let target = h.machine.kubelet + "/bad/mount"
      var stage = stageRequest(v, at: staging)
      stage.volumeID = id
      await expectStatus(.notFound) { try await h.node.nodeStageVolume(stage) }
      var publish = publishRequest(v, staging: staging, target: target)
      publish.volumeID = id
      await expectStatus(.notFound) { try await h.node.nodePublishVolume(publish) }
      await expectStatus(.notFound) {
        try await h.node.nodeGetVolumeStats(
          .with {
            $0.volumeID = id
            $0.volumePath = h.machine.targetPath(v)
          })
      }
      await expectStatus(.notFound) {
        try await h.node.nodeExpandVolume(
          .with {
            $0.volumeID = id
            $0.volumePath = h.machine.targetPath(v)
          })
      }
      _ = try await h.node.nodeUnstageVolume(
        .with {
          $0.volumeID = id
          $0.stagingTargetPath = staging
        })
      _ = try await h.node.nodeUnpublishVolume(
        .with {
          $0.volumeID = id
          $0.targetPath = target
        })
    }
  }

  @Test("An empty volume_id is InvalidArgument for every RPC")
  func emptyVolumeID() async throws {
    try await Self.withBusyNode { h, v in
      let staging = h.machine.stagingPath(v)
      let target = h.machine.targetPath(v)
      var stage = stageRequest(v, at: staging)
      stage.volumeID = ""
      await expectStatus(.invalidArgument, mentioning: "volume") { try await h.node.nodeStageVolume(stage) }
      await expectStatus(.invalidArgument, mentioning: "volume_id") {
        try await h.node.nodeUnstageVolume(.with { $0.stagingTargetPath = staging })
      }
      var publish = publishRequest(v, staging: staging, target: target)
      publish.volumeID = ""
      await expectStatus(.invalidArgument, mentioning: "volume") { try await h.node.nodePublishVolume(publish) }
      await expectStatus(.invalidArgument, mentioning: "volume_id") {
        try await h.node.nodeUnpublishVolume(.with { $0.targetPath = target })
      }
      await expectStatus(.invalidArgument, mentioning: "volume") {
        try await h.node.nodeGetVolumeStats(.with { $0.volumePath = target })
      }
      await expectStatus(.invalidArgument, mentioning: "volume") {
        try await h.node.nodeExpandVolume(.with { $0.volumePath = target })
      }
    }
  }

  @Test("A missing field is InvalidArgument even for a volume this node cannot know (the spec's order)")
  func missingFieldBeforeUnknownVolume() async throws {
    try await Self.withBusyNode { h, v in
      let unknown = "v1.store-x.00000000-0000-4000-8000-000000000000"
      var publish = publishRequest(v, staging: h.machine.stagingPath(v), target: h.machine.targetPath(v))
      publish.volumeID = unknown
      var noTarget = publish
      noTarget.targetPath = ""
      await expectStatus(.invalidArgument, mentioning: "target_path") { try await h.node.nodePublishVolume(noTarget) }
      var noCapability = publish
      noCapability.clearVolumeCapability()
      await expectStatus(.invalidArgument, mentioning: "volume_capability") {
        try await h.node.nodePublishVolume(noCapability)
      }
      var stage = stageRequest(v, at: "")
      stage.volumeID = "not-a-volume-of-ours"
      await expectStatus(.invalidArgument, mentioning: "staging_target_path") {
        try await h.node.nodeStageVolume(stage)
      }
      await expectStatus(.invalidArgument, mentioning: "volume_path") {
        try await h.node.nodeGetVolumeStats(.with { $0.volumeID = unknown })
      }
      await expectStatus(.notFound, mentioning: "does not exist") {
        try await h.node.nodeGetVolumeStats(
          .with {
            $0.volumeID = v.id
            $0.volumePath = h.machine.kubelet + "/no/such/path"
          })
      }
    }
  }

  static let badCapabilities: [(String, Csi_V1_VolumeCapability?)] = [
    ("no capability", nil),
    ("no access type", .with { $0.accessMode.mode = .singleNodeWriter }),
    ("no access mode", .with { $0.mount = .init() }),
    (
      "unknown access mode",
      .with {
        $0.mount = .init()
        $0.accessMode.mode = .UNRECOGNIZED(42)
      }
    ),
    ("unsupported file system", mountCapability(fsType: "ntfs")),
    ("path-like file system", mountCapability(fsType: "../../bin/sh")),
    ("MULTI_NODE_SINGLE_WRITER", mountCapability(.multiNodeSingleWriter)),
    ("MULTI_NODE_MULTI_WRITER with mount", mountCapability(.multiNodeMultiWriter)),
    ("mount flag with a shell character", mountCapability(flags: ["noatime;reboot"])),
    ("mount flag with a space", mountCapability(flags: ["ro bind"])),
    ("empty mount flag", mountCapability(flags: [""])),
  ]

  @Test("Capabilities the node cannot serve are InvalidArgument for stage and publish", arguments: badCapabilities)
  func badCapability(why: String, capability: Csi_V1_VolumeCapability?) async throws {
    try await Self.withBusyNode { h, v in
      let other = h.machine.export()
      var stage = stageRequest(other, at: h.machine.stagingPath(other))
      var publish = publishRequest(v, staging: h.machine.stagingPath(v), target: h.machine.targetPath(v, pod: "pod-b"))
      if let capability {
        stage.volumeCapability = capability
        publish.volumeCapability = capability
      } else {
        stage.clearVolumeCapability()
        publish.clearVolumeCapability()
      }
      await expectStatus(.invalidArgument) { try await h.node.nodeStageVolume(stage) }
      await expectStatus(.invalidArgument) { try await h.node.nodePublishVolume(publish) }
      if capability == nil {
        await expectStatus(.invalidArgument, mentioning: "volume_capability") {
          try await h.node.nodeStageVolume(stage)
        }
      }
    }
  }

  @Test("MULTI_NODE_MULTI_WRITER is served for block volumes")
  func multiWriterBlock() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, blockCapability(.multiNodeMultiWriter))
      try await h.publish(v, blockCapability(.multiNodeMultiWriter))
      #expect(h.kernel.mounts(at: h.machine.targetPath(v)).count == 1)
    }
  }

  static let badContexts: [(String, [String: String?])] = [
    ("no transport", ["transport": nil]),
    ("rdma transport", ["transport": "rdma"]),
    ("no paths", ["paths": nil]),
    ("path without port", ["paths": "127.0.0.1"]),
    ("no subsystem NQN", ["subsystemNQN": nil]),
    (
      "a host NQN for the subsystem",
      ["subsystemNQN": "nqn.2014-08.org.nvmexpress:uuid:6b1c6d5e-0e7e-4a39-9d8f-0a1b2c3d4e5f"]
    ),
    ("another driver's subsystem", ["subsystemNQN": "nqn.2016-06.io.spdk:cnode1"]),
    ("no namespace UUID", ["namespaceUUID": nil]),
    ("uppercase namespace UUID", ["namespaceUUID": "0F8E2C3A-1B4D-4E5F-8A6B-7C8D9E0F1A2B"]),
    ("garbage namespace UUID", ["namespaceUUID": "../1"]),
  ]

  @Test(
    "A publish_context this driver's controller did not write is InvalidArgument and connects nothing",
    arguments: badContexts)
  func badPublishContext(why: String, changes: [String: String?]) async throws {
    try await Self.withBusyNode { h, _ in
      let v = h.machine.export()
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      for (key, value) in changes { request.publishContext[key] = value }
      await expectStatus(.invalidArgument) { try await h.node.nodeStageVolume(request) }
    }
  }

  @Test("An empty publish_context is InvalidArgument")
  func emptyPublishContext() async throws {
    try await Self.withBusyNode { h, _ in
      let v = h.machine.export()
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      request.publishContext = [:]
      await expectStatus(.invalidArgument, mentioning: "publish_context") { try await h.node.nodeStageVolume(request) }
    }
  }

  @Test("A publish_context for another volume's subsystem is refused before connecting")
  func publishContextOfAnotherVolume() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      let other = h.machine.export()
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      request.publishContext = other.publishContext
      await expectStatus(.invalidArgument) { try await h.node.nodeStageVolume(request) }
      #expect(h.kernel.controllers(of: other.nqn).isEmpty, "connected another volume's subsystem")
    }
  }

  static let badKnobs: [(String, [String: String])] = [
    ("negative timeout", ["ctrlLossTmo": "-5"]),
    ("timeout too large", ["ctrlLossTmo": "86401"]),
    ("not a number", ["keepAliveTmo": "fast"]),
    ("empty value", ["reconnectDelay": ""]),
    ("zero reconnect delay", ["reconnectDelay": "0"]),
    ("too many queues", ["nrIoQueues": "4096"]),
    ("reconnect delay above the loss timeout", ["ctrlLossTmo": "10", "reconnectDelay": "20"]),
    ("fast-fail not below the loss timeout", ["ctrlLossTmo": "10", "fastIoFailTmo": "10"]),
    ("NUL in a value", ["ctrlLossTmo": "6\00"]),
  ]

  @Test("Connection knobs out of range in volume_context are InvalidArgument and connect nothing", arguments: badKnobs)
  func badKnob(why: String, context: [String: String]) async throws {
    try await Self.withBusyNode { h, _ in
      let v = h.machine.export()
      await expectStatus(.invalidArgument, mentioning: context.keys.sorted().last!) {
        try await h.node.nodeStageVolume(stageRequest(v, at: h.machine.stagingPath(v), volumeContext: context))
      }
    }
  }

  @Test("volume_context keys that are not connection knobs are ignored, as ConnectionParameters documents")
  func unknownKnob() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      let context = ["ctrlLossTMO": "-99", "csi.storage.k8s.io/pvc/name": "data"]
      _ = try await h.node.nodeStageVolume(stageRequest(v, at: h.machine.stagingPath(v), volumeContext: context))
      #expect(h.kernel.read(\.lastParameters) == ConnectionParameters())
    }
  }
}
