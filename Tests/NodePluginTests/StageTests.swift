import CSIProto
import Foundation
import GRPCCore
import NVMeCSICore
import TestSupport
import Testing

@Suite("Staging and the kubelet flow")
struct StageTests {
  @Test("A mount volume goes stage → publish → stats → unpublish → unstage", arguments: ["ext4", "xfs"])
  func mountFlow(fsType: String) async throws {
    try await Harness.with { h in
      let v = h.machine.export(sizeBytes: 2 * gibibyte)
      let staging = h.machine.stagingPath(v)
      let target = h.machine.targetPath(v)
      let capability = mountCapability(fsType: fsType, flags: ["noatime"])

      try await h.stage(v, capability)
      let disk = try #require(h.kernel.disk(of: v.nqn))
      #expect(h.kernel.controllers(of: v.nqn).map(\.address) == ["127.0.0.1:4420"])
      #expect(h.kernel.fileSystem(of: v.nqn) == fsType)
      #expect(h.kernel.mounts(at: staging).map(\.info.source) == [disk.path])
      #expect(h.kernel.mounts(at: staging).first?.info.fsType == fsType)
      // xfs gets nouuid: a restored snapshot carries its source's file-system UUID.
      #expect(h.kernel.mounts(at: staging).first?.options == (fsType == "xfs" ? ["noatime", "nouuid"] : ["noatime"]))
      #expect(h.kernel.read(\.lastHost) == h.machine.host)
      let record = try #require(h.machine.record(of: v))
      #expect(record.state == .staged)
      #expect(record.stagingPath == staging)
      #expect(record.device == disk.name)

      try await h.publish(v, capability)
      #expect(h.kernel.mounts(at: target).map(\.info.source) == [disk.path])
      #expect(h.kernel.mounts(at: target).first?.info.readonly == false)
      #expect(h.machine.record(of: v)?.targets == [target])

      let stats = try await h.stats(v, path: target)
      let bytes = try #require(stats.usage.first { $0.unit == .bytes })
      let inodes = try #require(stats.usage.first { $0.unit == .inodes })
      #expect(bytes.total == Int64(2 * gibibyte))
      #expect(bytes.used + bytes.available == bytes.total)
      #expect(inodes.total == 65_536 && inodes.used == 11 && inodes.available == 65_525)
      #expect(stats.volumeCondition.abnormal == false)
      #expect(stats.volumeCondition.message.contains("1 of 1 paths live"))

      try await h.unpublish(v)
      #expect(h.kernel.mounts(at: target).isEmpty)
      #expect(!FileManager.default.fileExists(atPath: target), "the publish target is removed")
      #expect(h.machine.record(of: v)?.targets == [])

      try await h.unstage(v)
      h.machine.expectNothingLeft(of: v)
      #expect(FileManager.default.fileExists(atPath: staging), "kubelet's staging directory is kubelet's")
    }
  }

  @Test("A block volume goes stage → publish (device bound onto a file) → stats → unpublish → unstage")
  func blockFlow() async throws {
    try await Harness.with { h in
      let v = h.machine.export(sizeBytes: 3 * gibibyte)
      let target = h.machine.targetPath(v)

      try await h.stage(v, blockCapability())
      let disk = try #require(h.kernel.disk(of: v.nqn))
      #expect(h.kernel.allMounts.isEmpty, "block volumes are not mounted at the staging path")
      #expect(h.kernel.read(\.fileSystemCalls) == 0, "block volumes are never probed or formatted")
      #expect(h.machine.record(of: v)?.state == .staged)

      try await h.publish(v, blockCapability())
      #expect(h.kernel.read { $0.bindCalls.map(\.source) } == [disk.path])
      #expect(h.kernel.mounts(at: target).first?.info.root == "/" + disk.name)
      var isDirectory: ObjCBool = true
      #expect(FileManager.default.fileExists(atPath: target, isDirectory: &isDirectory) && !isDirectory.boolValue)

      let stats = try await h.stats(v, path: target)
      #expect(stats.usage.map(\.unit) == [.bytes])
      #expect(stats.usage.first?.total == Int64(3 * gibibyte))
      #expect(stats.volumeCondition.abnormal == false)

      try await h.unpublish(v)
      #expect(!FileManager.default.fileExists(atPath: target))
      try await h.unstage(v)
      h.machine.expectNothingLeft(of: v)
      #expect(h.kernel.formatCount == 0)
    }
  }

  @Test("Every RPC of the flow can be repeated", arguments: [mountCapability(), blockCapability()])
  func everyRPCTwice(capability: Csi_V1_VolumeCapability) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, capability)
      try await h.stage(v, capability)
      try await h.publish(v, capability)
      try await h.publish(v, capability)
      #expect(h.kernel.read(\.bindCalls.count) == 1)
      #expect(h.machine.record(of: v)?.targets.count == 1)
      _ = try await h.stats(v, path: h.machine.targetPath(v))
      _ = try await h.stats(v, path: h.machine.targetPath(v))
      try await h.unpublish(v)
      try await h.unpublish(v)
      try await h.unstage(v)
      try await h.unstage(v)
      h.machine.expectNothingLeft(of: v)
      #expect(h.kernel.read(\.disconnectCalls) >= 1)
    }
  }

  @Test("Staging a staged volume again neither reconnects nor remounts nor reformats")
  func stageTwice() async throws {
    try await Harness.with { h in
      let v = h.machine.export(paths: [.init(host: "127.0.0.1", port: 4420), .init(host: "fd00::1", port: 4420)])
      for _ in 0..<3 { try await h.stage(v) }
      #expect(h.kernel.connectCalls == 1)
      #expect(h.kernel.controllersCreated == 2, "one controller per path")
      #expect(h.kernel.controllers(of: v.nqn).map(\.address) == ["127.0.0.1:4420", "[fd00::1]:4420"])
      #expect(h.kernel.mountCallCount == 1)
      #expect(h.kernel.formatCount == 1)
    }
  }

  @Test("Concurrent stages of one volume connect, format and mount it once; the busy ones are Aborted")
  func concurrentStages() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      h.kernel.setLookupsBeforeDeviceAppears(3)
      let failures = await withTaskGroup(of: RPCError?.self) { group in
        for _ in 0..<4 {
          group.addTask {
            do { try await h.stage(v) } catch {
              return error as? RPCError ?? RPCError(code: .unknown, message: "\(error)")
            }
            return nil
          }
        }
        return await group.reduce(into: [RPCError]()) { if let error = $1 { $0.append(error) } }
      }
      #expect(failures.allSatisfy { $0.code == .aborted }, "\(failures)")
      try await h.stage(v)  // kubelet retries: the volume is staged
      #expect(h.kernel.connectCalls == 1)
      #expect(h.kernel.formatCount == 1)
      #expect(h.kernel.mountCallCount == 1)
    }
  }

  @Test("Staging at a second staging path while staged elsewhere is AlreadyExists")
  func stagedElsewhere() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      let other = h.machine.kubelet + "/other-globalmount"
      try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
      await expectStatus(.alreadyExists, mentioning: h.machine.stagingPath(v)) {
        try await h.node.nodeStageVolume(stageRequest(v, at: other))
      }
      #expect(h.kernel.mounts(at: other).isEmpty)
      #expect(h.kernel.connectCalls == 1)
    }
  }

  @Test(
    "xfs is mounted with nouuid exactly once, ext4 with the flags as given",
    arguments: [
      ("xfs", [String](), ["nouuid"]), ("xfs", ["nouuid", "noatime"], ["nouuid", "noatime"]),
      ("ext4", ["discard"], ["discard"]),
    ])
  func mountOptions(fsType: String, flags: [String], expected: [String]) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, mountCapability(fsType: fsType, flags: flags))
      #expect(h.kernel.read { $0.mountCalls.map(\.options) } == [expected])
    }
  }

  @Test("The device appearing a few lookups after connect is waited for")
  func deviceAppearsLate() async throws {
    try await Harness.with { h in
      h.kernel.setLookupsBeforeDeviceAppears(4)
      let v = h.machine.export()
      try await h.stage(v)
      #expect(h.machine.record(of: v)?.state == .staged)
      #expect(h.kernel.mounts(at: h.machine.stagingPath(v)).count == 1)
    }
  }

  @Test("The connection knobs from volume_context reach the kernel")
  func connectionParameters() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      let context = [
        "ctrlLossTmo": "120", "reconnectDelay": "5", "fastIoFailTmo": "10", "keepAliveTmo": "7", "nrIoQueues": "2",
      ]
      _ = try await h.node.nodeStageVolume(stageRequest(v, at: h.machine.stagingPath(v), volumeContext: context))
      let parameters = try #require(h.kernel.read(\.lastParameters))
      #expect(parameters.asContext == context)
    }
  }

  @Test("Connection settings changed after creation (in publish_context) override the volume_context's")
  func modifiedConnectionParameters() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      var request = stageRequest(v, at: h.machine.stagingPath(v), volumeContext: ["ctrlLossTmo": "120"])
      request.publishContext["ctrlLossTmo"] = "-1"
      request.publishContext["fastIoFailTmo"] = "30"
      _ = try await h.node.nodeStageVolume(request)
      let parameters = try #require(h.kernel.read(\.lastParameters))
      #expect(parameters.ctrlLossTmo == -1 && parameters.fastIoFailTmo == 30 && parameters.keepAliveTmo == 5)
    }
  }

  @Test("A staged volume whose device vanished is staged again")
  func deviceVanished() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      let staging = h.machine.stagingPath(v)
      try await h.stage(v)
      h.kernel.loseDevice(v.nqn)
      #expect(h.machine.record(of: v)?.state == .staged)

      try await h.stage(v)
      #expect(h.kernel.connectCalls == 2, "reconnected")
      #expect(h.kernel.disk(of: v.nqn) != nil)
      #expect(h.kernel.formatCount == 1, "the file system on the volume is kept")
      #expect(h.machine.record(of: v)?.state == .staged)
      #expect(
        h.kernel.mounts(at: staging).count == 1,
        "one mount at the staging path: \(h.kernel.mounts(at: staging).map(\.info))")
      #expect(h.kernel.isLive(mountAt: staging), "the staging mount is on the device the kernel has now")
    }
  }

  @Test("A staged mount volume whose staging mount is gone is mounted again")
  func stagingMountGone() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      let staging = h.machine.stagingPath(v)
      try await h.stage(v)
      _ = try await FakeMounter(kernel: h.kernel).unmount(staging)
      try await h.stage(v)
      #expect(h.kernel.isLive(mountAt: staging))
      #expect(h.kernel.mountCallCount == 2)
      #expect(h.kernel.controllersCreated == 1, "the live controller is reused")
      #expect(h.kernel.formatCount == 1)
    }
  }
}

@Suite("Never reformat, and undo on failure")
struct StageFailureTests {
  @Test("A device that holds another file system is refused, left unmounted and disconnected")
  func neverReformat() async throws {
    try await Harness.with { h in
      let v = h.machine.export(fileSystem: "xfs")
      await expectStatus(.failedPrecondition, mentioning: "xfs") {
        try await h.stage(v, mountCapability(fsType: "ext4"))
      }
      #expect(h.kernel.formatCount == 0)
      #expect(h.kernel.fileSystem(of: v.nqn) == "xfs")
      h.machine.expectNothingLeft(of: v)
    }
  }

  @Test("A device with the requested file system is mounted as it is")
  func existingFileSystem() async throws {
    try await Harness.with { h in
      let v = h.machine.export(fileSystem: "xfs")
      try await h.stage(v, mountCapability(fsType: "xfs"))
      #expect(h.kernel.formatCount == 0)
      #expect(h.kernel.mounts(at: h.machine.stagingPath(v)).count == 1)
    }
  }

  @Test("A blank device is formatted exactly once across stages and unstages")
  func formatOnce() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      try await h.stage(v)
      try await h.unstage(v)
      try await h.stage(v)
      #expect(h.kernel.read { $0.formats.map(\.fsType) } == ["ext4"])
    }
  }

  @Test("An empty fs_type means ext4")
  func defaultFileSystem() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, mountCapability(fsType: ""))
      #expect(h.kernel.fileSystem(of: v.nqn) == "ext4")
      #expect(h.machine.record(of: v)?.fsType == "ext4")
    }
  }

  static let failures: [(FakeKernel.Step, NVMeCSIError, RPCError.Code)] = [
    (.kernelSupport, .failedPrecondition("no /dev/nvme-fabrics: load nvme-tcp"), .failedPrecondition),
    (.connect, .unavailable("connection refused"), .unavailable),
    (.connect, .failedPrecondition("the target refused this host"), .failedPrecondition),
    (.fileSystem, .internalError("blkid timed out after 30 s"), .internalError),
    (.format, .internalError("mkfs.ext4 failed: no space"), .internalError),
    (.mount, .internalError("mount: bad superblock"), .internalError),
  ]

  @Test(
    "A failing step is reported with its code and leaves nothing connected, mounted or recorded", arguments: failures)
  func undo(step: FakeKernel.Step, error: NVMeCSIError, code: RPCError.Code) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      h.kernel.fail(step, with: error)
      await expectStatus(code, mentioning: error.message) { try await h.stage(v) }
      h.machine.expectNothingLeft(of: v)
      #expect(h.machine.recordFiles.isEmpty)
      // After the cause is fixed, the next attempt succeeds.
      h.kernel.heal(step)
      try await h.stage(v)
      #expect(h.machine.record(of: v)?.state == .staged)
    }
  }

  @Test("A device that never appears is Unavailable and the subsystem is disconnected again")
  func deviceNeverAppears() async throws {
    try await Harness.with(deviceTimeout: .milliseconds(200)) { h in
      let v = h.machine.export()
      h.kernel.setDeviceNeverAppears(true)
      await expectStatus(.unavailable, mentioning: "nvme0 127.0.0.1:4420 live") { try await h.stage(v) }
      #expect(h.kernel.connectCalls == 1)
      h.machine.expectNothingLeft(of: v)
    }
  }

  @Test("A failing block stage leaves nothing behind either")
  func blockUndo() async throws {
    try await Harness.with(deviceTimeout: .milliseconds(200)) { h in
      let v = h.machine.export()
      h.kernel.setDeviceNeverAppears(true)
      await expectStatus(.unavailable) { try await h.stage(v, blockCapability()) }
      h.machine.expectNothingLeft(of: v)
    }
  }

  @Test("A failed re-stage keeps the record of what the node still holds, so unstage can clean it up")
  func failedRestage() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      let staging = h.machine.stagingPath(v)
      try await h.stage(v)
      try await h.publish(v)
      h.kernel.loseDevice(v.nqn)
      h.kernel.fail(.connect, with: .unavailable("connection refused"))
      await expectStatus(.unavailable) { try await h.stage(v) }
      #expect(h.machine.record(of: v) != nil)
      h.kernel.heal(.connect)
      try await h.unpublish(v)
      try await h.unstage(v)
      #expect(h.kernel.mounts(at: staging).isEmpty)
    }
  }
}
