import CSIProto
import Foundation
import GRPCCore
import Mounting
import NVMeCSICore
import TestSupport
import Testing

@Suite("A repaired replicated volume on the node: following the leg map")
struct RepairedMirrorTests {
  static let newPortal = HostPort(host: "127.0.0.2", port: 4420)

  @Test("A running mirror follows a repair: the replacement connected and added, the lost leg disconnected, once")
  func followRepair() async throws {
    let logs = CapturedLogs()
    try await Harness.with(logs: logs) { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      // Leg 1's target is lost for good: md failed the leg, its controller keeps trying.
      let lost = try #require(h.kernel.disk(of: v.legNQNs[1]))
      h.mirrors.failLeg(lost.name)
      h.kernel.setPathState(v.legNQNs[1], "connecting")
      h.kernel.state.withLock { _ = $0.exports.removeValue(forKey: v.legNQNs[1]) }
      let replacement = try h.repair(v, leg: 1, on: "store-2")

      await h.service.reconcileMirrors()  // follows the map and connects the replacement
      let record = try #require(h.machine.record(of: v))
      let mirror = try #require(record.mirror)
      #expect(mirror.mapVersion == 1)
      #expect(mirror.legs.map(\.subsystemNQN) == [v.legNQNs[0], replacement])
      #expect(mirror.legs.map(\.paths) == [["127.0.0.1:4420"], ["127.0.0.2:4420"]], "leg 0 keeps its paths")
      #expect(mirror.droppedLegs == nil)
      #expect(h.kernel.read(\.disconnected) == [v.legNQNs[1]])
      #expect(h.kernel.controllers(of: v.legNQNs[1]).isEmpty, "the lost leg is disconnected")
      #expect(h.kernel.controllers(of: replacement).map(\.address) == ["127.0.0.2:4420"])
      #expect(logs.lines(containing: "following the volume's new leg map", atLeast: .notice).count == 1)

      await h.service.reconcileMirrors()  // proves it blank and adds it
      let device = try #require(h.kernel.disk(of: replacement))
      #expect(h.mirrors.read(\.adds) == [device.name])
      #expect(h.mirrors.read { $0.superblocks[replacement]?.arrayUUID } == v.uuid)
      let stats = try await h.stats(v, path: h.machine.stagingPath(v))
      #expect(stats.volumeCondition == .with { $0.message = "2 of 2 legs in sync" })

      let connects = h.kernel.read(\.connectCalls)
      await h.service.reconcileMirrors()
      #expect(h.machine.record(of: v)?.mirror == mirror)
      #expect(h.kernel.read(\.connectCalls) == connects)
      #expect(h.kernel.read(\.disconnected) == [v.legNQNs[1]])
      #expect(h.mirrors.read(\.adds) == [device.name])
      #expect(logs.lines(containing: "following the volume's new leg map", atLeast: .notice).count == 1)

      // Unstage disconnects the current legs, never the lost one again.
      try await h.unstage(v)
      for nqn in [v.legNQNs[0], replacement] { #expect(h.kernel.controllers(of: nqn).isEmpty) }
    }
  }

  @Test("A map block of another set, a damaged one, foreign bytes or zeros are ignored")
  func ignoresOthers() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      let before = try #require(h.machine.record(of: v))
      let other = try VolumeID(replicated: .random(), on: v.targets)
      let othersMap = try LegMap(implied: other).replacing(
        leg: 1, with: TargetName("store-2"), portals: [Self.newPortal])
      var damaged = try LegMap(implied: v.volumeID).replacing(
        leg: 1, with: TargetName("store-2"), portals: [Self.newPortal]
      ).block()
      damaged[40] ^= 0xff
      let foreign = [UInt8](repeating: 0xab, count: LegMap.blockBytes)
      for (leg0, leg1) in [(try othersMap.block(), damaged), (foreign, try othersMap.block())] {
        h.kernel.writeMapBlock(leg0, on: v.legNQNs[0])
        h.kernel.writeMapBlock(leg1, on: v.legNQNs[1])
        await h.service.reconcileMirrors()
        #expect(h.machine.record(of: v) == before)
        #expect(h.kernel.read(\.connectCalls) == 2, "nothing new connected")
        #expect(h.kernel.read(\.disconnectCalls) == 0)
      }
    }
  }

  @Test("A map whose version is not above the recorded one is ignored", arguments: [UInt64(1), 2])
  func ignoresOlderMaps(version: UInt64) async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      request.publishContext["legMapVersion"] = "2"
      _ = try await h.node.nodeStageVolume(request)
      let before = try #require(h.machine.record(of: v))
      #expect(before.mirror?.mapVersion == 2)
      let map = LegMap(
        set: v.uuid, version: version,
        legs: [
          .init(target: v.targets[0], generation: 0),
          .init(target: try TargetName("store-2"), generation: 1, portals: [Self.newPortal]),
        ])
      h.kernel.writeMapBlock(try map.block(), on: v.legNQNs[0])
      await h.service.reconcileMirrors()
      #expect(h.machine.record(of: v) == before)
      #expect(h.kernel.read(\.connectCalls) == 2)
    }
  }

  @Test("A newer map that does not fit the volume (a leg count, a replacement without portals) is not followed")
  func ignoresMisfits() async throws {
    let logs = CapturedLogs()
    try await Harness.with(logs: logs) { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      let before = try #require(h.machine.record(of: v))
      let three = try LegMap(implied: VolumeID(replicated: v.uuid, on: v.targets + [TargetName("store-9")]))
        .replacing(leg: 1, with: TargetName("store-2"), portals: [Self.newPortal])
      let noPortal = try LegMap(implied: v.volumeID).replacing(leg: 1, with: TargetName("store-2"), portals: [])
      for map in [three, noPortal] {
        h.kernel.writeMapBlock(try map.block(), on: v.legNQNs[0])
        await h.service.reconcileMirrors()
        #expect(h.machine.record(of: v) == before)
      }
      #expect(h.kernel.read(\.connectCalls) == 2)
      #expect(logs.lines(containing: "does not fit the volume").count == 2)
    }
  }

  @Test("A map that drops a leg md still uses in sync: the leg stays in the mirror, connected, until md fails it")
  func keepsLegInUse() async throws {
    let logs = CapturedLogs()
    try await Harness.with(logs: logs) { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      let kept = try #require(h.kernel.disk(of: v.legNQNs[1]))
      let replacement = try h.repair(v, leg: 1, on: "store-2")

      await h.service.reconcileMirrors()
      await h.service.reconcileMirrors()
      let array = try #require(h.kernel.disk(of: FakeMirrors.arrayNQN(v.uuid)))
      #expect(h.mirrors.read { $0.arrays[array.name]?.members[kept.name] } == .inSync, "never removed")
      #expect(h.kernel.controllers(of: v.legNQNs[1]).count == 1, "never disconnected")
      #expect(h.kernel.read(\.disconnectCalls) == 0)
      let mirror = try #require(h.machine.record(of: v)?.mirror)
      #expect(mirror.legs.map(\.subsystemNQN) == [v.legNQNs[0], replacement])
      #expect(mirror.droppedLegs?.map(\.subsystemNQN) == [v.legNQNs[1]])
      #expect(logs.lines(containing: "replaced a leg this node still uses").count == 1)

      // md fails it later: it is taken out of the mirror and disconnected.
      h.mirrors.failLeg(kept.name)
      await h.service.reconcileMirrors()
      #expect(h.mirrors.read { $0.arrays[array.name]?.members[kept.name] } == nil)
      #expect(h.kernel.read(\.disconnected) == [v.legNQNs[1]])
      #expect(h.machine.record(of: v)?.mirror?.droppedLegs == nil)
    }
  }

  @Test("Unstage disconnects a dropped leg md still used")
  func unstageDisconnectsDroppedLeg() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      let replacement = try h.repair(v, leg: 1, on: "store-2")
      await h.service.reconcileMirrors()
      #expect(h.kernel.controllers(of: v.legNQNs[1]).count == 1)
      try await h.unstage(v)
      for nqn in v.legNQNs + [replacement] { #expect(h.kernel.controllers(of: nqn).isEmpty, "\(nqn) disconnected") }
    }
  }

  @Test("NodeStage takes a repaired leg (generation 1) and records publish_context's leg map version")
  func stageRepaired() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      let leg1 = ReplicaLayout.legUUID(of: v.uuid, index: 1, generation: 1)
      h.kernel.export(
        SubsystemNaming.nqn(for: leg1), namespaceUUID: leg1.value,
        sizeBytes: ReplicaLayout.legBytes(forVolume: gibibyte))
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      request.publishContext = Self.publishContext(v, legs: [v.uuid, leg1], mapVersion: 1)
      _ = try await h.node.nodeStageVolume(request)
      let mirror = try #require(h.machine.record(of: v)?.mirror)
      #expect(mirror.mapVersion == 1)
      #expect(mirror.legs.map(\.subsystemNQN) == [v.legNQNs[0], SubsystemNaming.nqn(for: leg1)])
      #expect(h.kernel.controllers(of: v.legNQNs[1]).isEmpty, "the replaced leg is not connected")
      #expect(h.mirrors.read(\.creates) == 1)
    }
  }

  /// What publish_context names as leg 1: (slot, generation) of the set's leg UUIDs for
  /// its subsystem and its namespace; nil for another volume's leg.
  struct WrongLeg: Sendable, CustomTestStringConvertible {
    var testDescription: String
    var nqn: (slot: Int, generation: Int)?
    var namespace: (slot: Int, generation: Int)?
  }

  static let wrongLegs = [
    WrongLeg(testDescription: "a leg of slot 2 as leg 1", nqn: (2, 0), namespace: (2, 0)),
    WrongLeg(testDescription: "another volume's leg", nqn: nil, namespace: nil),
    WrongLeg(testDescription: "a namespace under another generation's subsystem", nqn: (1, 2), namespace: (1, 1)),
  ]

  static func legOf(_ set: ObjectUUID, _ index: Int, _ generation: Int = 0) -> ObjectUUID {
    ReplicaLayout.legUUID(of: set, index: index, generation: generation)
  }

  @Test("NodeStage refuses a leg that is not of its slot: InvalidArgument, nothing connected", arguments: wrongLegs)
  func refusesWrongLeg(_ wrong: WrongLeg) async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      let other = ObjectUUID.random()
      let nqn = wrong.nqn.map { Self.legOf(v.uuid, $0.slot, $0.generation) } ?? other
      let namespace = wrong.namespace.map { Self.legOf(v.uuid, $0.slot, $0.generation) } ?? other
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      request.publishContext = Self.publishContext(v, legs: [v.uuid, namespace], mapVersion: 1)
      request.publishContext["leg1/subsystemNQN"] = SubsystemNaming.nqn(for: nqn)
      await expectStatus(.invalidArgument, mentioning: "as leg 1, which is not volume") {
        _ = try await h.node.nodeStageVolume(request)
      }
      #expect(h.kernel.read(\.connectCalls) == 0)
      #expect(h.machine.record(of: v) == nil)
    }
  }

  @Test("A single-copy volume takes no generation but 0")
  func singleCopyGeneration() async throws {
    try await Harness.with { h in
      let v = h.machine.export()
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      request.publishContext = Self.publishContext(v, legs: [Self.legOf(v.uuid, 0, 1)], mapVersion: 0)
      await expectStatus(.invalidArgument, mentioning: "which is not volume") {
        _ = try await h.node.nodeStageVolume(request)
      }
      #expect(h.kernel.read(\.connectCalls) == 0)
    }
  }

  @Test(
    "A stopped mirror whose lost leg was replaced starts from the members without it (--run), adding the blank replacement"
  )
  func stoppedMirrorWithReplacement() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      try await h.unstage(v)
      // Leg 1's target is lost for good and the controller replaced the leg.
      h.kernel.state.withLock { _ = $0.exports.removeValue(forKey: v.legNQNs[1]) }
      let replacement = try h.repair(v, leg: 1, on: "store-2")
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      let leg1 = Self.legOf(v.uuid, 1, 1)
      request.publishContext = Self.publishContext(
        v, legs: [v.uuid, leg1], paths: [[.init(host: "127.0.0.1", port: 4420)], [Self.newPortal]], mapVersion: 1)
      _ = try await h.node.nodeStageVolume(request)
      #expect(h.mirrors.read(\.assemblesWithoutMissing) == 1)
      #expect(h.mirrors.read(\.creates) == 1, "never created anew")
      let added = try #require(h.kernel.disk(of: replacement)).name
      #expect(h.mirrors.read(\.adds) == [added], "the blank replacement is added: md copies the data onto it")
      #expect(h.kernel.read(\.formats).count == 1, "the file system is kept")
    }
  }

  @Test("A stopped mirror missing a current leg (not replaced) still waits: md's refusal, no --run")
  func stoppedMirrorMissingCurrentLeg() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 3)
      try await h.stage(v)
      try await h.unstage(v)
      // Leg 2 is replaced; leg 1's target is merely down: it may hold fresher data.
      h.kernel.state.withLock {
        _ = $0.exports.removeValue(forKey: v.legNQNs[2])
        _ = $0.exports.removeValue(forKey: v.legNQNs[1])
      }
      let replacement = try h.repair(v, leg: 2, on: "store-3")
      var request = stageRequest(v, at: h.machine.stagingPath(v))
      request.publishContext = Self.publishContext(
        v, legs: [v.uuid, Self.legOf(v.uuid, 1, 0), Self.legOf(v.uuid, 2, 1)],
        paths: [[.init(host: "127.0.0.1", port: 4420)], [.init(host: "127.0.0.1", port: 4421)], [Self.newPortal]],
        mapVersion: 1)
      await expectStatus(.unavailable, mentioning: "md refused to start") {
        _ = try await h.node.nodeStageVolume(request)
      }
      #expect(h.mirrors.read(\.assemblesWithoutMissing) == 0)
      #expect(h.mirrors.read { $0.superblocks[replacement] } == nil, "the replacement is left blank")
    }
  }

  @Test("After a reboot, NodeStage stages the newer leg map the node followed, not publish_context's older legs")
  func restageFollowsRecordedMap() async throws {
    try await Harness.with { h in
      let v = h.machine.exportReplicated(legs: 2)
      try await h.stage(v)
      let lost = try #require(h.kernel.disk(of: v.legNQNs[1]))
      h.mirrors.failLeg(lost.name)
      h.kernel.loseDevice(v.legNQNs[1])
      h.kernel.state.withLock { _ = $0.exports.removeValue(forKey: v.legNQNs[1]) }
      let replacement = try h.repair(v, leg: 1, on: "store-2")
      await h.service.reconcileMirrors()
      await h.service.reconcileMirrors()
      #expect(h.machine.record(of: v)?.mirror?.mapVersion == 1)
      // md took the lost leg out and the replacement in: leg 0's superblock counts the
      // replacement, no longer the lost leg (whose superblock went with its target).
      h.mirrors.state.withLock { _ = $0.superblocks.removeValue(forKey: v.legNQNs[1]) }

      // The node reboots: no array, no controller; the mounts are dead.
      h.mirrors.state.withLock { $0.arrays.removeAll() }
      h.kernel.state.withLock { s in
        s.controllers.removeAll()
        s.disks.removeAll()
      }
      try await h.stage(v)  // kubelet's publish_context still names leg 1 of generation 0
      #expect(h.kernel.controllers(of: replacement).count == 1)
      #expect(h.kernel.controllers(of: v.legNQNs[1]).isEmpty)
      #expect(h.mirrors.read(\.assembles) == 1)
      let record = try #require(h.machine.record(of: v))
      #expect(record.state == .staged)
      #expect(record.mirror?.mapVersion == 1)
      #expect(record.mirror?.legs.map(\.subsystemNQN) == [v.legNQNs[0], replacement])
      let stats = try await h.stats(v, path: h.machine.stagingPath(v))
      #expect(stats.volumeCondition == .with { $0.message = "2 of 2 legs in sync" })
    }
  }

  /// A publish_context naming `legs` (their UUIDs) of `v`.
  static func publishContext(
    _ v: TestVolume, legs: [ObjectUUID], paths: [[HostPort]]? = nil, mapVersion: UInt64
  ) -> [String: String] {
    let described = legs.enumerated().map { index, uuid in
      PublishContext.Leg(
        paths: paths?[index] ?? v.paths, subsystemNQN: SubsystemNaming.nqn(for: uuid), namespaceUUID: uuid.value)
    }
    return PublishContext(
      paths: described[0].paths, subsystemNQN: described[0].subsystemNQN, namespaceUUID: described[0].namespaceUUID,
      replicaLegs: Array(described.dropFirst()), legMapVersion: mapVersion
    ).encoded
  }
}

extension Harness {
  /// What the controller does when leg `index`'s target is lost for good: a blank leg of
  /// the next generation on `target` (exported for this node at `RepairedMirrorTests.newPortal`),
  /// and the new map written into every current leg. Answers the new leg's subsystem.
  func repair(_ v: TestVolume, leg index: Int, on target: String) throws -> String {
    let map = try LegMap(implied: v.volumeID).replacing(
      leg: index, with: TargetName(target), portals: [RepairedMirrorTests.newPortal])
    let uuid = ReplicaLayout.legUUID(of: v.uuid, index: index, generation: map.legs[index].generation)
    let nqn = SubsystemNaming.nqn(for: uuid)
    kernel.export(nqn, namespaceUUID: uuid.value, sizeBytes: ReplicaLayout.legBytes(forVolume: gibibyte))
    for leg in map.legIDs { kernel.writeMapBlock(try map.block(), on: SubsystemNaming.nqn(for: leg.uuid)) }
    return nqn
  }
}
