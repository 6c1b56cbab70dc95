import CSIProto
import Foundation
import GRPCCore
import Mounting
import NVMeCSICore
import TestSupport
import Testing

@Suite("Replicated volumes on the node: md RAID1 over the legs")
struct MirrorTests {
  @Test("A new replicated volume: every leg connected, a mirror created over the blank legs, the mirror formatted")
  func stageNew() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2, sizeBytes: 2 * gibibyte)
      let staging = h.machine.stagingPath(v)
      try await h.stage(v)

      for nqn in v.legNQNs { #expect(h.kernel.controllers(of: nqn).count == 1, "leg \(nqn) connected") }
      #expect(h.mirrors.read(\.creates) == 1)
      let array = try #require(h.kernel.disk(of: FakeMirrors.arrayNQN(v.uuid)))
      #expect(array.sizeBytes == 2 * gibibyte, "the mirror has the size asked for, md's overhead on the legs")
      // The file system is on the mirror; the legs carry only md's superblock.
      #expect(h.kernel.fileSystem(of: FakeMirrors.arrayNQN(v.uuid)) == "ext4")
      for nqn in v.legNQNs { #expect(h.kernel.fileSystem(of: nqn) == nil) }
      #expect(h.kernel.mounts(at: staging).map(\.info.source) == [array.path])
      let record = try #require(h.machine.record(of: v))
      #expect(record.mirror?.legs.map(\.subsystemNQN) == v.legNQNs)
      #expect(record.mirror?.connection["fastIoFailTmo"] != nil)

      // The paths metric counts every leg's controllers.
      #expect(h.service.stagedVolumePaths().map(\.states) == [["live", "live"]])

      try await h.publish(v)
      let stats = try await h.stats(v, path: h.machine.targetPath(v))
      #expect(stats.volumeCondition.abnormal == false)
      #expect(stats.volumeCondition.message == "2 of 2 legs in sync")
    }
  }

  @Test("A restored volume: the mirror is created from leg 0 (the seed), its data kept, the blank legs copied in")
  func stageRestored() async throws {
    try await Harness.with { h in
      let source = ObjectUUID.random()
      let v = h.machine.exportReplicated(legs: 3)
      // Leg 0 is a copy of a leg of `source`: its superblock, and its array's ext4.
      h.mirrors.state.withLock { $0.superblocks[v.legNQNs[0]] = MirrorSuperblock(arrayUUID: source, events: 9) }
      h.kernel.export(FakeMirrors.arrayNQN(source), namespaceUUID: source.value, sizeBytes: 1 << 30, fileSystem: "ext4")
      let staging = h.machine.stagingPath(v)
      let request = stageRequest(v, at: staging, volumeContext: [ReplicaLayout.seedKey: source.value])

      _ = try await h.node.nodeStageVolume(request)
      #expect(h.mirrors.read(\.seededCreates) == 1)
      #expect(h.mirrors.read(\.creates) == 0)
      #expect(h.kernel.read(\.formats).isEmpty, "the restored file system is mounted, never formatted")
      let array = try #require(h.kernel.disk(of: FakeMirrors.arrayNQN(v.uuid)))
      #expect(h.kernel.mounts(at: staging).map(\.info.source) == [array.path])
      let blank = try v.legNQNs.dropFirst().map { try #require(h.kernel.disk(of: $0)).name }
      #expect(h.mirrors.read(\.adds) == blank, "the blank legs are added, so md copies the seed onto them")
      for nqn in v.legNQNs { #expect(h.mirrors.read { $0.superblocks[nqn]?.arrayUUID } == v.uuid) }

      // Again, and after unstage: the array is the volume's own now, so it is assembled.
      _ = try await h.node.nodeStageVolume(request)
      try await h.unstage(v)
      _ = try await h.node.nodeStageVolume(request)
      #expect(h.mirrors.read(\.seededCreates) == 1)
      #expect(h.mirrors.read(\.assembles) == 1)
      #expect(h.kernel.read(\.formats).isEmpty)
    }
  }

  @Test("Only leg 0 may carry the seed, and only the seed volume_context names: any other array on a leg is refused")
  func seedOnlyWhereNamed() async throws {
    try await Harness.with { h in
      let source = ObjectUUID.random()
      let v = h.machine.exportReplicated(legs: 2)
      h.mirrors.state.withLock { $0.superblocks[v.legNQNs[1]] = MirrorSuperblock(arrayUUID: source, events: 9) }
      let staging = h.machine.stagingPath(v)
      await expectStatus(.failedPrecondition, mentioning: "belongs to another md array") {
        _ = try await h.node.nodeStageVolume(
          stageRequest(v, at: staging, volumeContext: [ReplicaLayout.seedKey: source.value]))
      }
      h.mirrors.state.withLock { s in
        s.superblocks[v.legNQNs[0]] = s.superblocks.removeValue(forKey: v.legNQNs[1])
      }
      await expectStatus(.failedPrecondition, mentioning: "belongs to another md array") {
        _ = try await h.node.nodeStageVolume(
          stageRequest(v, at: staging, volumeContext: [ReplicaLayout.seedKey: ObjectUUID.random().value]))
      }
      await expectStatus(.invalidArgument, mentioning: "mirrorSeed") {
        _ = try await h.node.nodeStageVolume(stageRequest(v, at: staging, volumeContext: [ReplicaLayout.seedKey: "x"]))
      }
      #expect(h.mirrors.read { $0.creates + $0.seededCreates } == 0)
      #expect(h.kernel.read(\.formats).isEmpty)
    }
  }

  @Test("Unstage stops the mirror and disconnects every leg; staging again assembles it, never creates or formats")
  func unstageAndRestage() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 3)
      try await h.stage(v)
      try await h.unstage(v)
      #expect(h.mirrors.read(\.stops) == 1)
      for nqn in v.legNQNs { #expect(h.kernel.controllers(of: nqn).isEmpty, "leg \(nqn) disconnected") }
      #expect(h.kernel.disk(of: FakeMirrors.arrayNQN(v.uuid)) == nil)
      #expect(h.machine.record(of: v) == nil)

      try await h.stage(v)
      #expect(h.mirrors.read(\.creates) == 1)
      #expect(h.mirrors.read(\.assembles) == 1)
      #expect(h.kernel.read(\.formats).count == 1, "formatted once, when new")
      try await h.stage(v)  // idempotent
      #expect(h.mirrors.read(\.assembles) == 1)
    }
  }

  @Test("A leg that holds a file system instead of md's superblock is refused, and nothing is created or formatted")
  func foreignLeg() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      h.kernel.export(
        v.legNQNs[1], namespaceUUID: SubsystemNaming.namespaceUUID(for: v.volumeID.legs[1].uuid).value,
        fileSystem: "xfs")
      await expectStatus(.failedPrecondition, mentioning: "holds xfs, not this volume's mirror") {
        try await h.stage(v)
      }
      #expect(h.mirrors.read(\.creates) == 0)
      #expect(h.kernel.read(\.formats).isEmpty)
      for nqn in v.legNQNs { #expect(h.kernel.controllers(of: nqn).isEmpty, "leg \(nqn) disconnected again") }
    }
  }

  @Test("A new volume with a leg that cannot be attached is not created degraded: Unavailable, retried later")
  func newVolumeLegMissing() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      h.kernel.state.withLock { _ = $0.exports.removeValue(forKey: v.legNQNs[1]) }
      await expectStatus(.unavailable, mentioning: "not every leg is attached") { try await h.stage(v) }
      #expect(h.mirrors.read(\.creates) == 0)
      #expect(h.kernel.read(\.formats).isEmpty)
    }
  }

  @Test("With a leg missing, md decides: refused while the others may be stale, started when md says they suffice")
  func restageDegraded() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      try await h.unstage(v)
      // Leg 1's target is down.
      let leg1 = try #require(h.kernel.read { $0.exports[v.legNQNs[1]] })
      h.kernel.state.withLock { _ = $0.exports.removeValue(forKey: v.legNQNs[1]) }
      await expectStatus(.unavailable, mentioning: "md refused") { try await h.stage(v) }
      #expect(h.mirrors.read(\.creates) == 1, "never created anew over the leg that is there")

      h.mirrors.allowDegradedStart(v.uuid)  // leg 0's superblock marks leg 1 failed
      try await h.stage(v)
      let stats = try await h.stats(v, path: h.machine.stagingPath(v))
      #expect(stats.volumeCondition.abnormal)
      #expect(stats.volumeCondition.message.hasPrefix("degraded: 1 of 2 legs in sync"))

      // Its target returns: the reconciler connects it and md takes it back.
      h.kernel.state.withLock { $0.exports[v.legNQNs[1]] = leg1 }
      await h.service.reconcileMirrors()  // connects
      await h.service.reconcileMirrors()  // re-adds
      let leg1Device = try #require(h.kernel.disk(of: v.legNQNs[1]))
      #expect(h.mirrors.read(\.adds) == [leg1Device.name])
      let healed = try await h.stats(v, path: h.machine.stagingPath(v))
      #expect(healed.volumeCondition == .with { $0.message = "2 of 2 legs in sync" })
    }
  }

  @Test("A leg md failed is reported, then removed and re-added by the reconciler once its path is back")
  func reconcileFaultyLeg() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      let leg0 = try #require(h.kernel.disk(of: v.legNQNs[0]))
      h.mirrors.failLeg(leg0.name)
      let stats = try await h.stats(v, path: h.machine.stagingPath(v))
      #expect(stats.volumeCondition.abnormal)
      #expect(stats.volumeCondition.message.contains("\(leg0.name) faulty"))

      await h.service.reconcileMirrors()
      #expect(h.mirrors.read(\.adds) == [leg0.name])
      let healed = try await h.stats(v, path: h.machine.stagingPath(v))
      #expect(healed.volumeCondition.abnormal == false)
    }
  }

  @Test("A leg holding another array is never added to this one")
  func reconcileLeavesForeignLeg() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      let leg1 = try #require(h.kernel.disk(of: v.legNQNs[1]))
      h.mirrors.failLeg(leg1.name)
      h.mirrors.state.withLock { $0.superblocks[v.legNQNs[1]] = MirrorSuperblock(arrayUUID: .random(), events: 9) }
      await h.service.reconcileMirrors()
      #expect(h.mirrors.read(\.adds).isEmpty)
      let stats = try await h.stats(v, path: h.machine.stagingPath(v))
      #expect(stats.volumeCondition.abnormal)
    }
  }

  @Test("A returning leg that holds a file system instead of md's superblock is never added back")
  func reconcileLeavesLegWithData() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      let leg1 = try #require(h.kernel.disk(of: v.legNQNs[1]))
      h.mirrors.failLeg(leg1.name)
      h.mirrors.state.withLock { _ = $0.superblocks.removeValue(forKey: v.legNQNs[1]) }
      h.kernel.state.withLock { $0.exports[v.legNQNs[1]]?.fileSystem = "ext4" }
      await h.service.reconcileMirrors()
      #expect(h.mirrors.read(\.adds).isEmpty)
    }
  }

  @Test("A leg held by a running md array that is not the volume's is refused at stage; that array is left alone")
  func legInAnotherArray() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      // The array over its legs turns out to be another one (e.g. assembled by the host).
      let foreign = ObjectUUID.random()
      h.mirrors.state.withLock { s in
        for name in s.arrays.keys { s.arrays[name]!.uuid = foreign }
      }
      await expectStatus(.failedPrecondition, mentioning: "which is not this volume's") { try await h.stage(v) }
      #expect(h.mirrors.read(\.stops) == 0, "the other array is untouched")
      #expect(h.mirrors.read(\.creates) == 1)
    }
  }

  @Test("publish_context must name exactly the ID's legs")
  func legsMustMatch() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      request.publishContext = h.machine.export().publishContext  // one leg, another volume
      await expectStatus(.invalidArgument, mentioning: "names 1 legs") { try await h.node.nodeStageVolume(request) }
      #expect(h.kernel.read(\.connectCalls) == 0)
    }
  }

  @Test("Expansion grows every leg, then the mirror, then the file system")
  func expand() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2, sizeBytes: gibibyte)
      try await h.stage(v)
      for nqn in v.legNQNs { h.kernel.resizeExport(nqn, to: ReplicaLayout.legBytes(forVolume: 2 * gibibyte)) }
      let response = try await h.node.nodeExpandVolume(
        .with {
          $0.volumeID = v.id
          $0.volumePath = h.machine.stagingPath(v)
          $0.capacityRange = .with { $0.requiredBytes = Int64(2 * gibibyte) }
        })
      #expect(response.capacityBytes == Int64(2 * gibibyte))
      #expect(
        h.kernel.read(\.grows).map(\.device) == [try #require(h.kernel.disk(of: FakeMirrors.arrayNQN(v.uuid))).path])
    }
  }
}
