import CSIProto
import Foundation
import GRPCCore
import NVMeCSICore
import TestSupport
import Testing

@Suite("Node info and capabilities")
struct NodeInfoTests {
  static let zoneKey = "topology.nvme.csi.dev/zone"

  @Test("NodeGetInfo reports the host's node ID, the topology and the volume limit")
  func nodeInfo() async throws {
    try await Harness.with(topology: [Self.zoneKey: "a"], maxVolumesPerNode: 24) { h in
      let info = try await h.node.nodeGetInfo(.init())
      #expect(info.nodeID == h.machine.host.nodeID.description)
      #expect(try NodeID(parsing: info.nodeID) == h.machine.host.nodeID)
      #expect(info.nodeID.hasPrefix("n1.\(h.machine.host.id)."))
      #expect(info.accessibleTopology.segments == [Self.zoneKey: "a"])
      #expect(info.maxVolumesPerNode == 24)
    }
  }

  @Test("Without topology segments NodeGetInfo reports none")
  func noTopology() async throws {
    try await Harness.with { h in
      let info = try await h.node.nodeGetInfo(.init())
      #expect(!info.hasAccessibleTopology)
      #expect(info.maxVolumesPerNode == 0)
    }
  }

  @Test("NodeGetCapabilities lists staging, stats, expansion, volume condition and single-node multi-writer")
  func capabilities() async throws {
    try await Harness.with { h in
      let types = try await h.node.nodeGetCapabilities(.init()).capabilities.compactMap { c in
        if case .rpc(let r)? = c.type { r.type } else { nil }
      }
      #expect(
        Set(types) == [.stageUnstageVolume, .getVolumeStats, .expandVolume, .volumeCondition, .singleNodeMultiWriter])
      #expect(types.count == 5)
    }
  }

  @Test(
    "The node's identity offers online expansion, and topology only when the node has segments",
    arguments: [true, false])
  func pluginCapabilities(hasTopology: Bool) async throws {
    try await Harness.with(topology: hasTopology ? [Self.zoneKey: "a"] : [:]) { h in
      let caps = try await h.identity.getPluginCapabilities(.init()).capabilities
      let services = caps.compactMap { c -> Csi_V1_PluginCapability.Service.TypeEnum? in
        if case .service(let s)? = c.type { return s.type }
        return nil
      }
      #expect(services == (hasTopology ? [.volumeAccessibilityConstraints] : []))
      #expect(!services.contains(.controllerService))
      #expect(caps.contains { if case .volumeExpansion(let e)? = $0.type { e.type == .online } else { false } })
      #expect(try await h.identity.getPluginInfo(.init()).name == "nvme.csi.dev")
    }
  }
}

@Suite("Volume stats and condition")
struct VolumeStatsTests {
  @Test("A volume without a live path is reported abnormal, saying which paths are in which state")
  func noLivePath() async throws {
    try await Harness.with { h in
      let v = h.machine.export(paths: [.init(host: "127.0.0.1", port: 4420), .init(host: "fd00::1", port: 4420)])
      try await h.stage(v)
      try await h.publish(v)
      h.kernel.setPathState(v.nqn, "connecting")
      let stats = try await h.stats(v, path: h.machine.targetPath(v))
      #expect(stats.volumeCondition.abnormal)
      #expect(stats.volumeCondition.message.contains("no live NVMe/TCP path"))
      #expect(stats.volumeCondition.message.contains("127.0.0.1:4420 connecting"))
      #expect(stats.volumeCondition.message.contains("[fd00::1]:4420 connecting"))
    }
  }

  @Test("One live path of two is a normal condition")
  func oneLivePath() async throws {
    try await Harness.with { h in
      let v = h.machine.export(paths: [.init(host: "127.0.0.1", port: 4420), .init(host: "127.0.0.2", port: 4420)])
      try await h.stage(v, blockCapability())
      try await h.publish(v, blockCapability())
      h.kernel.state.withLock { $0.controllers[0].state = "resetting" }
      let stats = try await h.stats(v, path: h.machine.targetPath(v))
      #expect(!stats.volumeCondition.abnormal)
      #expect(stats.volumeCondition.message.contains("1 of 2 paths live"))
    }
  }

  @Test("A volume whose device is gone is abnormal", arguments: [mountCapability(), blockCapability()])
  func deviceGone(capability: Csi_V1_VolumeCapability) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, capability)
      try await h.publish(v, capability)
      h.kernel.loseDevice(v.nqn)
      let stats = try await h.stats(v, path: h.machine.targetPath(v))
      #expect(stats.volumeCondition.abnormal)
      #expect(stats.volumeCondition.message.contains("no block device"))
      #expect(stats.volumeCondition.message.contains("paths: none"))
    }
  }

  @Test("When the file system's statistics cannot be read, stats still answer, without usage, and log the reason")
  func usageUnreadable() async throws {
    let logs = CapturedLogs()
    try await Harness.with(logs: logs) { h in
      let v = h.machine.export()
      try await h.stage(v)
      try await h.publish(v)
      h.kernel.loseDevice(v.nqn)  // the fake's statvfs then fails with an I/O error
      let stats = try await h.stats(v, path: h.machine.targetPath(v))
      #expect(stats.usage.isEmpty)
      #expect(stats.volumeCondition.abnormal)
      let logged = try #require(logs.lines(containing: "no usage for the volume").first)
      #expect(logged.metadata["reason"]?.contains("input/output error") == true, "\(logged)")
      #expect(logged.metadata["volume"] == v.id)
    }
  }

  @Test("A device lookup that fails makes the volume abnormal, saying why")
  func deviceLookupFails() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, blockCapability())
      try await h.publish(v, blockCapability())
      h.kernel.fail(.device, with: .internalError("sysfs is unreadable"))
      let stats = try await h.stats(v, path: h.machine.targetPath(v))
      #expect(stats.usage.isEmpty)
      #expect(stats.volumeCondition.abnormal)
      #expect(stats.volumeCondition.message.contains("sysfs is unreadable"))
    }
  }

  @Test("Stats at the staging path of a mount volume report its usage")
  func stagingPathStats() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      let stats = try await h.stats(v, path: h.machine.stagingPath(v))
      #expect(Set(stats.usage.map(\.unit)) == [.bytes, .inodes])
      #expect(stats.usage.first { $0.unit == .bytes }?.total == Int64(gibibyte))
    }
  }

  @Test("A volume_path that does not exist is NotFound")
  func unknownPath() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      await expectStatus(.notFound, mentioning: "does-not-exist") {
        try await h.stats(v, path: h.machine.kubelet + "/pods/does-not-exist/mount")
      }
    }
  }

  @Test("Stats of a volume that is not staged on this node are NotFound")
  func notStaged() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      await expectStatus(.notFound, mentioning: "not staged") { try await h.stats(v, path: h.machine.stagingPath(v)) }
    }
  }
}

@Suite("Node volume expansion")
struct NodeExpandTests {
  static func expand(_ h: Harness, _ v: TestVolume, to bytes: UInt64?, path: String? = nil) async throws -> Int64 {
    try await h.node.nodeExpandVolume(
      .with {
        $0.volumeID = v.id
        $0.volumePath = path ?? h.machine.targetPath(v)
        if let bytes { $0.capacityRange = .with { $0.requiredBytes = Int64(bytes) } }
      }
    ).capacityBytes
  }

  @Test("A mount volume sees the grown device after a rescan and grows its file system", arguments: ["ext4", "xfs"])
  func growMount(fsType: String) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, mountCapability(fsType: fsType))
      try await h.publish(v, mountCapability(fsType: fsType))
      h.kernel.resizeExport(v.nqn, to: 3 * gibibyte)
      #expect(h.kernel.disk(of: v.nqn)?.sizeBytes == gibibyte, "the kernel has not re-read the size yet")
      let bytes = try await Self.expand(h, v, to: 3 * gibibyte)
      #expect(bytes == Int64(3 * gibibyte))
      let disk = try #require(h.kernel.disk(of: v.nqn))
      #expect(
        h.kernel.read { $0.grows.map { "\($0.device) \($0.mountPoint) \($0.fsType)" } } == [
          "\(disk.path) \(h.machine.stagingPath(v)) \(fsType)"
        ])
      // Repeating it is harmless.
      #expect(try await Self.expand(h, v, to: 3 * gibibyte) == Int64(3 * gibibyte))
    }
  }

  @Test("A block volume reports the new size and has no file system to grow")
  func growBlock() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, blockCapability())
      try await h.publish(v, blockCapability())
      h.kernel.resizeExport(v.nqn, to: 2 * gibibyte)
      #expect(try await Self.expand(h, v, to: 2 * gibibyte) == Int64(2 * gibibyte))
      #expect(h.kernel.read(\.grows.count) == 0)
      let stats = try await h.stats(v, path: h.machine.targetPath(v))
      #expect(stats.usage.first?.total == Int64(2 * gibibyte))
    }
  }

  @Test("Without a capacity range the current size is reported after a rescan")
  func noCapacityRange() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      h.kernel.resizeExport(v.nqn, to: 2 * gibibyte)
      #expect(try await Self.expand(h, v, to: nil, path: h.machine.stagingPath(v)) == Int64(2 * gibibyte))
      #expect(h.kernel.read(\.rescanCalls) == 1)
    }
  }

  @Test("A device that never grows is Unavailable and no file system is grown")
  func neverGrows() async throws {
    try await Harness.with(deviceTimeout: .milliseconds(200)) { h in
      let v = h.machine.export()
      try await h.stage(v)
      try await h.publish(v)
      h.kernel.setGrowsOnRescan(false)
      h.kernel.resizeExport(v.nqn, to: 2 * gibibyte)
      await expectStatus(.unavailable, mentioning: "ControllerExpandVolume") {
        try await Self.expand(h, v, to: 2 * gibibyte)
      }
      #expect(h.kernel.read(\.grows.count) == 0)
    }
  }

  @Test("A failing file system grow is reported with its error")
  func growFails() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      h.kernel.resizeExport(v.nqn, to: 2 * gibibyte)
      h.kernel.fail(.grow, with: .internalError("resize2fs: bad superblock"))
      await expectStatus(.internalError, mentioning: "resize2fs") {
        try await Self.expand(h, v, to: 2 * gibibyte, path: h.machine.stagingPath(v))
      }
    }
  }

  @Test("Expanding a volume that is not staged here is NotFound")
  func notStaged() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      await expectStatus(.notFound, mentioning: "not staged") {
        try await Self.expand(h, v, to: 2 * gibibyte, path: h.machine.stagingPath(v))
      }
      #expect(h.kernel.read(\.rescanCalls) == 0)
    }
  }
}
