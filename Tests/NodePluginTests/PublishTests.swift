import CSIProto
import Foundation
import GRPCCore
import Mounting
import NVMeCSICore
import TestSupport
import Testing

@Suite("Publishing, unpublishing and unstaging")
struct PublishTests {
  @Test("Publishing before staging is FailedPrecondition", arguments: [mountCapability(), blockCapability()])
  func publishBeforeStage(capability: Csi_V1_VolumeCapability) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      await expectStatus(.failedPrecondition, mentioning: "NodeStageVolume") { try await h.publish(v, capability) }
      #expect(h.kernel.allMounts.isEmpty)
      #expect(h.kernel.connectCalls == 0)
    }
  }

  @Test("Publishing at a different staging path than the one staged is FailedPrecondition")
  func publishWrongStagingPath() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      let request = publishRequest(v, staging: h.machine.kubelet + "/elsewhere", target: h.machine.targetPath(v))
      await expectStatus(.failedPrecondition) { try await h.node.nodePublishVolume(request) }
      #expect(h.kernel.mounts(at: h.machine.targetPath(v)).isEmpty)
    }
  }

  @Test(
    "Publishing with another access type than staged is InvalidArgument",
    arguments: [
      (mountCapability(), blockCapability()), (blockCapability(), mountCapability()),
    ])
  func accessTypeMismatch(staged: Csi_V1_VolumeCapability, published: Csi_V1_VolumeCapability) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, staged)
      await expectStatus(.invalidArgument, mentioning: "staged for") { try await h.publish(v, published) }
      #expect(h.kernel.mounts(at: h.machine.targetPath(v)).isEmpty)
      #expect(h.machine.record(of: v)?.targets == [])
    }
  }

  @Test(
    "A read-only publish binds read-only",
    arguments: [
      ("readonly flag, mount", mountCapability(), true),
      ("reader-only mode, mount", mountCapability(.singleNodeReaderOnly), false),
      ("readonly flag, block", blockCapability(), true),
      ("reader-only mode, block", blockCapability(.multiNodeReaderOnly), false),
    ])
  func readonly(why: String, capability: Csi_V1_VolumeCapability, flag: Bool) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, capability)
      try await h.publish(v, capability, readonly: flag)
      #expect(h.kernel.read { $0.bindCalls.map(\.readonly) } == [true], "\(why)")
      #expect(h.kernel.mounts(at: h.machine.targetPath(v)).first?.info.readonly == true)
    }
  }

  @Test("A writable publish binds read-write")
  func writable() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      try await h.publish(v)
      #expect(h.kernel.read { $0.bindCalls.map(\.readonly) } == [false])
    }
  }

  @Test("Two pods can publish the same staged volume, and each unpublish releases only its own target")
  func twoPods() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, mountCapability(.singleNodeMultiWriter))
      try await h.publish(v, mountCapability(.singleNodeMultiWriter), pod: "pod-a")
      try await h.publish(v, mountCapability(.singleNodeMultiWriter), pod: "pod-b")
      #expect(h.machine.record(of: v)?.targets.count == 2)
      try await h.unpublish(v, pod: "pod-a")
      #expect(h.kernel.mounts(at: h.machine.targetPath(v, pod: "pod-b")).count == 1)
      #expect(h.machine.record(of: v)?.targets == [h.machine.targetPath(v, pod: "pod-b")])
      await expectStatus(.failedPrecondition) { try await h.unstage(v) }
      try await h.unpublish(v, pod: "pod-b")
      try await h.unstage(v)
      h.machine.expectNothingLeft(of: v)
    }
  }

  @Test("Publishing a mount volume whose staging path lost its mount is FailedPrecondition")
  func stagingMountLost() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      try await FakeMounter(kernel: h.kernel).unmount(h.machine.stagingPath(v))
      await expectStatus(.failedPrecondition, mentioning: "unstage and stage again") { try await h.publish(v) }
      #expect(h.kernel.allMounts.isEmpty)
    }
  }

  @Test(
    "Publishing a volume whose device is gone is FailedPrecondition naming the paths",
    arguments: [mountCapability(), blockCapability()])
  func deviceGone(capability: Csi_V1_VolumeCapability) async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, capability)
      h.kernel.loseDevice(v.nqn)
      await expectStatus(.failedPrecondition, mentioning: "paths: none") { try await h.publish(v, capability) }
      #expect(h.kernel.mounts(at: h.machine.targetPath(v)).isEmpty)
    }
  }

  @Test("Unstage refuses while a publish target still holds a block volume, and works after unpublish")
  func unstageWhilePublishedBlock() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, blockCapability())
      try await h.publish(v, blockCapability())
      await expectStatus(.failedPrecondition, mentioning: h.machine.targetPath(v)) { try await h.unstage(v) }
      #expect(h.kernel.controllers(of: v.nqn).count == 1, "still connected")
      #expect(h.kernel.mounts(at: h.machine.targetPath(v)).count == 1)
      #expect(h.machine.record(of: v)?.state == .staged)
      try await h.unpublish(v)
      try await h.unstage(v)
      h.machine.expectNothingLeft(of: v)
    }
  }

  @Test("Unstage refuses while a publish target still holds a mount volume, and works after unpublish")
  func unstageWhilePublishedMount() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      let staging = h.machine.stagingPath(v)
      try await h.stage(v)
      try await h.publish(v)
      await expectStatus(.failedPrecondition, mentioning: "unpublish it first") { try await h.unstage(v) }
      #expect(h.kernel.controllers(of: v.nqn).count == 1, "still connected")
      #expect(h.kernel.mounts(at: h.machine.targetPath(v)).count == 1)
      #expect(h.machine.record(of: v)?.state == .staged)
      #expect(h.kernel.mounts(at: staging).count == 1, "a refused unstage changes nothing")
      try await h.unpublish(v)
      try await h.unstage(v)
      h.machine.expectNothingLeft(of: v)
    }
  }

  @Test("Unstage refuses while someone else still mounts the device")
  func unstageForeignMount() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, blockCapability())
      let disk = try #require(h.kernel.disk(of: v.nqn))
      h.kernel.addMount(
        MountInfo(mountPoint: "/mnt/debug", source: disk.path, root: "/", fsType: "ext4", readonly: false))
      await expectStatus(.failedPrecondition, mentioning: "/mnt/debug") { try await h.unstage(v) }
      #expect(h.kernel.controllers(of: v.nqn).count == 1)
      #expect(h.machine.record(of: v) != nil)
    }
  }

  @Test("A failed unmount during unstage keeps the record, and a retry finishes")
  func unstageUnmountFails() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      h.kernel.fail(.unmount, with: .internalError("umount: target is busy"))
      await expectStatus(.internalError, mentioning: "busy") { try await h.unstage(v) }
      #expect(h.machine.record(of: v) != nil)
      #expect(h.kernel.controllers(of: v.nqn).count == 1)
      h.kernel.heal(.unmount)
      try await h.unstage(v)
      h.machine.expectNothingLeft(of: v)
    }
  }

  @Test("Unstage of a volume whose device already vanished cleans up its mount and record")
  func unstageAfterDeviceLoss() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v)
      h.kernel.loseDevice(v.nqn)
      try await h.unstage(v)
      h.machine.expectNothingLeft(of: v)
    }
  }

  @Test(
    "A restarted plugin unpublishes and unstages what the previous one staged",
    arguments: [mountCapability(), blockCapability()])
  func restart(capability: Csi_V1_VolumeCapability) async throws {
    try await Machine.with { machine in
      let v = machine.export()
      try await Harness.with(machine: machine) { h in
        try await h.stage(v, capability)
        try await h.publish(v, capability)
      }
      try await Harness.with(machine: machine) { h in
        // Staging again is a no-op, and a second pod can still publish.
        try await h.stage(v, capability)
        try await h.publish(v, capability, pod: "pod-b")
        #expect(h.kernel.connectCalls == 1)
        await expectStatus(.failedPrecondition) { try await h.unstage(v) }
        try await h.unpublish(v)
        try await h.unpublish(v, pod: "pod-b")
        try await h.unstage(v)
        h.machine.expectNothingLeft(of: v)
      }
    }
  }

  @Test("Unpublishing a target that is not mounted succeeds and removes a leftover target")
  func unpublishNothing() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      let target = h.machine.targetPath(v)
      try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
      try await h.unpublish(v)
      #expect(!FileManager.default.fileExists(atPath: target))
      try await h.unpublish(v)
    }
  }

  @Test("Unpublish leaves alone what is at target_path when it is not this volume's publication")
  func unpublishSomeoneElses() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      let other = h.machine.export()
      try await h.stage(other)
      try await h.publish(other)
      // Kubelet (or a person) names the other volume's mount as this volume's target.
      var request = Csi_V1_NodeUnpublishVolumeRequest()
      request.volumeID = v.id
      request.targetPath = h.machine.targetPath(other)
      await expectStatus(.failedPrecondition, mentioning: "do not attribute") {
        try await h.node.nodeUnpublishVolume(request)
      }
      #expect(h.kernel.mounts(at: h.machine.targetPath(other)).count == 1, "the other volume stays mounted")

      // Files that are not ours at the path are not deleted either.
      let target = h.machine.targetPath(v)
      try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
      try Data("pod data".utf8).write(to: URL(fileURLWithPath: target + "/keep"))
      await expectStatus(.failedPrecondition, mentioning: "files") { try await h.unpublish(v) }
      #expect(FileManager.default.fileExists(atPath: target + "/keep"))
    }
  }

  @Test("A SINGLE_NODE_SINGLE_WRITER volume is published at one target path only")
  func singleWriterOnePath() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.stage(v, mountCapability(.singleNodeSingleWriter))
      try await h.publish(v, mountCapability(.singleNodeSingleWriter), pod: "pod-a")
      try await h.publish(v, mountCapability(.singleNodeSingleWriter), pod: "pod-a")
      await expectStatus(.failedPrecondition, mentioning: "SINGLE_NODE_SINGLE_WRITER") {
        try await h.publish(v, mountCapability(.singleNodeSingleWriter), pod: "pod-b")
      }
      #expect(h.kernel.mounts(at: h.machine.targetPath(v, pod: "pod-b")).isEmpty)
      // A target recorded by a publish that failed before mounting does not count.
      try await FakeMounter(kernel: h.kernel).unmount(h.machine.targetPath(v, pod: "pod-a"))
      try await h.publish(v, mountCapability(.singleNodeSingleWriter), pod: "pod-b")
      await expectStatus(.failedPrecondition, mentioning: "SINGLE_NODE_SINGLE_WRITER") {
        try await h.publish(v, mountCapability(.singleNodeSingleWriter), pod: "pod-a")
      }
      try await h.unpublish(v, pod: "pod-b")
      try await h.publish(v, mountCapability(.singleNodeSingleWriter), pod: "pod-a")
    }
  }

  @Test("Unstaging a volume that was never staged succeeds")
  func unstageNothing() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      try await h.unstage(v)
      #expect(h.kernel.read(\.disconnectCalls) == 0)
    }
  }
}
