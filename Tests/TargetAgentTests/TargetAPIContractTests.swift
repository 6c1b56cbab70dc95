import Foundation
import NVMeCSICore
import TargetContract
import TestSupport
import Testing

/// The TargetAPI contract: what the controller may rely on from any target, checked
/// against the agent in-process and through the gRPC service and client.
@Suite("Target API contract")
struct TargetAPIContractTests {
  @Test("Creating a volume twice by name returns the first one, marked as existing", arguments: TargetAPIFactory.all)
  func createIsIdempotent(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      let first = try await api.createVolume(newVolume("pvc-1"))
      #expect(!first.existed)
      #expect(first.volume.record.name == "pvc-1")
      #expect(first.volume.record.sizeBytes == 4 * MiB)
      #expect(first.volume.record.attributes == ["k": "v"])
      #expect(first.volume.problem == nil)
      let again = try await api.createVolume(newVolume("pvc-1", size: 8 * MiB))
      #expect(again.existed)
      #expect(again.volume.uuid == first.volume.uuid)
      #expect(try await api.volumes(named: "pvc-1").map(\.uuid) == [first.volume.uuid])
      #expect(try await api.volumes(named: nil).count == 1)
      #expect(try await api.volume(first.volume.uuid).record == first.volume.record)
    }
  }

  @Test(
    "Created as the name's home, the placement is recorded before the volume; a repeat finds both",
    arguments: TargetAPIFactory.all)
  func createAsHome(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      #expect(try await api.info().placesAsHome)
      let first = try await api.createVolume(newVolume("pvc-1"), asHome: target.name)
      guard case .volume(let volume, existed: false) = first else {
        Issue.record("expected a new volume, got \(first)")
        return
      }
      #expect(try await api.placement(of: "pvc-1") == NamePlacement(target: target.name, volumeHere: true))
      #expect(try await api.createVolume(newVolume("pvc-1"), asHome: target.name) == .volume(volume, existed: true))
      #expect(try await api.volumes(named: nil).map(\.uuid) == [volume.uuid])
    }
  }

  @Test(
    "A name recorded as placed on another target is not created on its home: the answer names that target",
    arguments: TargetAPIFactory.all)
  func createAsHomePlacedElsewhere(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let other = try TargetName("store-other")
      _ = try await api.reservePlacements([Placement(name: "pvc-1", target: other)])
      #expect(try await api.createVolume(newVolume("pvc-1"), asHome: target.name) == .placedOn(other))
      #expect(try await api.volumes(named: nil).isEmpty)
      #expect(try await api.placement(of: "pvc-1") == NamePlacement(target: other, volumeHere: false))
      // A volume already here is found, whatever the record says (one from before placements).
      let here = try await api.createVolume(newVolume("pvc-2"))
      _ = try await api.reservePlacements([Placement(name: "pvc-2", target: other)])
      #expect(
        try await api.createVolume(newVolume("pvc-2"), asHome: target.name) == .volume(here.volume, existed: true))
    }
  }

  @Test(
    "Deleted as the name's home, the volume's placement here is released; one naming another target stays",
    arguments: TargetAPIFactory.all)
  func deleteAsHome(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      guard case .volume(let volume, _) = try await api.createVolume(newVolume("pvc-1"), asHome: target.name) else {
        Issue.record("expected a volume")
        return
      }
      try await api.deleteVolume(volume.uuid, asHome: target.name)
      #expect(try await api.placement(of: "pvc-1") == NamePlacement(target: nil, volumeHere: false))
      try await api.deleteVolume(volume.uuid, asHome: target.name)  // a repeat: done already
      // A volume from before placements, its name recorded elsewhere meanwhile.
      let other = try TargetName("store-other")
      let older = try await api.createVolume(newVolume("pvc-2")).volume
      _ = try await api.reservePlacements([Placement(name: "pvc-2", target: other)])
      try await api.deleteVolume(older.uuid, asHome: target.name)
      #expect(try await api.volumes(named: nil).isEmpty)
      #expect(try await api.placement(of: "pvc-2") == NamePlacement(target: other, volumeHere: false))
    }
  }

  @Test(
    "A requested UUID is the volume's; a name or UUID already held by another volume is alreadyExists",
    arguments: TargetAPIFactory.all)
  func requestedUUID(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      let uuid = ObjectUUID.random()
      var request = newVolume("pvc-leg~replica-1")
      request.uuid = uuid
      let first = try await api.createVolume(request)
      #expect(!first.existed && first.volume.uuid == uuid)
      #expect(try await api.createVolume(request).existed)
      var otherUUID = request
      otherUUID.uuid = .random()
      _ = await expectError(.alreadyExists, mentioning: ["belongs to volume \(uuid)"]) {
        try await api.createVolume(otherUUID)
      }
      var otherName = request
      otherName.name = "pvc-other"
      await expectError(.alreadyExists, mentioning: ["\(uuid) exists already"]) {
        try await api.createVolume(otherName)
      }
      #expect(try await api.volumes(named: nil).map(\.uuid) == [uuid])
    }
  }

  @Test("An unknown volume is notFound, naming the target", arguments: TargetAPIFactory.all)
  func unknownVolume(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      let uuid = ObjectUUID.random()
      await expectError(.notFound, mentioning: ["store-t", uuid.value]) { try await api.volume(uuid) }
      await expectError(.notFound, mentioning: ["store-t"]) { try await api.expandVolume(uuid, to: 8 * MiB) }
      await expectError(.notFound, mentioning: ["store-t"]) {
        try await api.publishVolume(uuid, to: try node(1), readonly: false, exclusive: true)
      }
      // Deleting and unpublishing what is not there is done already.
      try await api.deleteVolume(uuid)
      try await api.unpublishVolume(uuid, from: try node(1))
    }
  }

  @Test("Single-node access refuses a second node; the first keeps it", arguments: TargetAPIFactory.all)
  func exclusivePublish(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let volume = try await api.createVolume(newVolume("pvc-x")).volume
      let export = try await api.publishVolume(volume.uuid, to: try node(1), readonly: false, exclusive: true)
      #expect(export.subsystemNQN == SubsystemNaming.nqn(for: volume.uuid))
      #expect(export.namespaceUUID == volume.uuid)
      #expect(export.portals == [HostPort(host: "127.0.0.1", port: 4420)])
      // Repeating the same publish is success.
      #expect(try await api.publishVolume(volume.uuid, to: try node(1), readonly: false, exclusive: true) == export)
      await expectError(.failedPrecondition, mentioning: [try node(1).description]) {
        try await api.publishVolume(volume.uuid, to: try node(2), readonly: false, exclusive: true)
      }
      await expectError(.alreadyExists, mentioning: ["readonly"]) {
        try await api.publishVolume(volume.uuid, to: try node(1), readonly: true, exclusive: true)
      }
      let hosts = try FileManager.default.contentsOfDirectory(
        atPath: target.configfs + "/nvmet/subsystems/\(export.subsystemNQN)/allowed_hosts")
      #expect(hosts == [try node(1).hostNQN.value])
      #expect(try await api.volume(volume.uuid).record.publications.map(\.nodeID) == [try node(1)])
    }
  }

  @Test(
    "A single-node volume refuses a second node whatever the caller says; multi-node ones accept it",
    arguments: TargetAPIFactory.all)
  func sharingIsRecorded(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let single = try await api.createVolume(NewVolume(name: "rwo", sizeBytes: MiB, source: nil)).volume
      #expect(single.record.sharing == .singleNode)
      _ = try await api.publishVolume(single.uuid, to: try node(1), readonly: false, exclusive: false)
      // A forged exclusive=false cannot loosen what the volume recorded.
      await expectError(.failedPrecondition, mentioning: [try node(1).description]) {
        try await api.publishVolume(single.uuid, to: try node(2), readonly: false, exclusive: false)
      }
      let shared = try await api.createVolume(
        NewVolume(name: "rwx", sizeBytes: MiB, source: nil, sharing: .multiNode)
      ).volume
      #expect(shared.record.sharing == .multiNode)
      _ = try await api.publishVolume(shared.uuid, to: try node(1), readonly: false, exclusive: false)
      _ = try await api.publishVolume(shared.uuid, to: try node(2), readonly: false, exclusive: false)
      // A caller may still ask for a stricter publish.
      await expectError(.failedPrecondition) {
        try await api.publishVolume(shared.uuid, to: try node(3), readonly: false, exclusive: true)
      }
      let hosts = try FileManager.default.contentsOfDirectory(
        atPath: target.configfs + "/nvmet/subsystems/\(SubsystemNaming.nqn(for: single.uuid))/allowed_hosts")
      #expect(hosts == [try node(1).hostNQN.value])
    }
  }

  @Test("A host NQN already used by another node ID is refused at publish", arguments: TargetAPIFactory.all)
  func clonedHostIdentity(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      let a = try await api.createVolume(NewVolume(name: "a", sizeBytes: MiB, source: nil)).volume
      let b = try await api.createVolume(NewVolume(name: "b", sizeBytes: MiB, source: nil)).volume
      let original = try node(1)
      let clone = NodeID(hostID: .random(), hostNQN: original.hostNQN)
      _ = try await api.publishVolume(a.uuid, to: original, readonly: false, exclusive: true)
      await expectError(.failedPrecondition, mentioning: [clone.description, original.description, "cloned"]) {
        try await api.publishVolume(b.uuid, to: clone, readonly: false, exclusive: true)
      }
      #expect(try await api.volume(b.uuid).record.publications.isEmpty)
      // While the first node still has any volume here, the clone stays refused.
      let c = try await api.createVolume(NewVolume(name: "c", sizeBytes: MiB, source: nil)).volume
      _ = try await api.publishVolume(c.uuid, to: original, readonly: false, exclusive: true)
      try await api.unpublishVolume(a.uuid, from: original)
      await expectError(.failedPrecondition, mentioning: ["cloned"]) {
        try await api.publishVolume(b.uuid, to: clone, readonly: false, exclusive: true)
      }
      // Once the first node has let go of every volume, the NQN is free again.
      try await api.unpublishVolume(c.uuid, from: nil)
      _ = try await api.publishVolume(b.uuid, to: clone, readonly: false, exclusive: true)
    }
  }

  @Test("Unpublishing one node leaves the others' access alone", arguments: TargetAPIFactory.all)
  func unpublishOne(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      let volume = try await api.createVolume(newVolume("pvc-ro", sharing: .multiNode)).volume
      _ = try await api.publishVolume(volume.uuid, to: try node(1), readonly: true, exclusive: false)
      _ = try await api.publishVolume(volume.uuid, to: try node(2), readonly: true, exclusive: false)
      try await api.unpublishVolume(volume.uuid, from: try node(1))
      #expect(try await api.volume(volume.uuid).record.publications.map(\.nodeID) == [try node(2)])
      await expectError(.failedPrecondition, mentioning: ["published"]) { try await api.deleteVolume(volume.uuid) }
      try await api.unpublishVolume(volume.uuid, from: nil)
      try await api.deleteVolume(volume.uuid)
      #expect(try await api.volumes(named: nil).isEmpty)
    }
  }

  @Test(
    "Snapshots are listed by filter, restored into volumes no smaller than they are", arguments: TargetAPIFactory.all)
  func snapshots(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      let volume = try await api.createVolume(newVolume("pvc-s", size: 8 * MiB)).volume
      let snapshot = try await api.createSnapshot(named: "snap-1", of: volume.uuid)
      #expect(!snapshot.existed)
      #expect(snapshot.snapshot.sourceVolume == volume.uuid)
      #expect(snapshot.snapshot.sizeBytes == 8 * MiB)
      #expect(try await api.createSnapshot(named: "snap-1", of: volume.uuid).existed)
      #expect(try await api.snapshots(matching: SnapshotFilter(name: "snap-1")).map(\.uuid) == [snapshot.snapshot.uuid])
      #expect(try await api.snapshots(matching: SnapshotFilter(sourceVolume: volume.uuid)).count == 1)
      #expect(try await api.snapshots(matching: SnapshotFilter(uuid: .random())).isEmpty)

      await expectError(.outOfRange, mentioning: ["smaller"]) {
        try await api.createVolume(newVolume("pvc-small", size: 4 * MiB, source: .snapshot(snapshot.snapshot.uuid)))
      }
      let restored = try await api.createVolume(
        newVolume("pvc-r", size: 8 * MiB, source: .snapshot(snapshot.snapshot.uuid)))
      #expect(restored.volume.record.source == .snapshot(snapshot.snapshot.uuid))
      try await api.deleteSnapshot(snapshot.snapshot.uuid)
      try await api.deleteSnapshot(snapshot.snapshot.uuid)
      #expect(try await api.snapshots(matching: SnapshotFilter()).isEmpty)
    }
  }

  @Test(
    "Volumes come in pages in UUID order after a UUID, more saying whether any follow, across a restart",
    arguments: TargetAPIFactory.all)
  func volumePages(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let empty = try await api.volumes(after: nil, limit: 10)
      #expect(empty.volumes.isEmpty && !empty.more)
      var uuids: [ObjectUUID] = []
      for i in 0..<4 { uuids.append(try await api.createVolume(newVolume("pvc-\(i)")).volume.uuid) }
      uuids.sort()

      func walk(_ api: any TargetAPI, limit: Int) async throws -> [ObjectUUID] {
        var seen: [ObjectUUID] = []
        var after: ObjectUUID? = nil
        for _ in 0..<10 {
          let page = try await api.volumes(after: after, limit: limit)
          #expect(page.volumes.count <= limit)
          seen += page.volumes.map(\.uuid)
          guard page.more, let last = page.volumes.last else { break }
          after = last.uuid
        }
        return seen
      }
      for limit in 1...5 { #expect(try await walk(api, limit: limit) == uuids, "limit \(limit)") }
      for limit in [0, -1] {
        let none = try await api.volumes(after: nil, limit: limit)
        #expect(none.volumes.isEmpty && none.more, "limit \(limit)")
      }
      try await api.deleteVolume(uuids[1])
      let resumed = try await api.volumes(after: uuids[1], limit: 1)
      #expect(resumed.volumes.map(\.uuid) == [uuids[2]] && resumed.more)
      let added = try await api.createVolume(newVolume("pvc-new")).volume.uuid
      let now = (uuids.filter { $0 != uuids[1] } + [added]).sorted()
      #expect(try await walk(api, limit: 2) == now)
      let reopened = try LocalTarget(name: "store-t", store: target.store, configfs: target.configfs)
      #expect(try await walk(reopened.api, limit: 3) == now)
    }
  }

  @Test(
    "Snapshots come in pages in UUID order after a UUID, more saying whether any follow, across a restart",
    arguments: TargetAPIFactory.all)
  func snapshotPages(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let empty = try await api.snapshots(after: nil, limit: 10)
      #expect(empty.snapshots.isEmpty && !empty.more)
      let volume = try await api.createVolume(newVolume("pvc-p")).volume
      var uuids: [ObjectUUID] = []
      for i in 0..<5 { uuids.append(try await api.createSnapshot(named: "snap-\(i)", of: volume.uuid).snapshot.uuid) }
      uuids.sort()

      func walk(_ api: any TargetAPI, limit: Int) async throws -> (seen: [ObjectUUID], calls: Int) {
        var seen: [ObjectUUID] = []
        var after: ObjectUUID? = nil
        var calls = 0
        while calls <= 10 {
          let page = try await api.snapshots(after: after, limit: limit)
          #expect(page.snapshots.count <= limit)
          seen += page.snapshots.map(\.uuid)
          calls += 1
          guard page.more, let last = page.snapshots.last else { break }
          after = last.uuid
        }
        return (seen, calls)
      }
      for limit in 1...6 {
        let walked = try await walk(api, limit: limit)
        #expect(walked.seen == uuids, "limit \(limit)")
        #expect(walked.calls == (5 + limit - 1) / limit, "limit \(limit): the last page says no more follow")
      }
      let all = try await api.snapshots(after: nil, limit: .max)
      #expect(all.snapshots.map(\.uuid) == uuids && !all.more)
      // A limit of 0 (or below) returns nothing and says whether there is anything.
      for limit in [0, -1] {
        let none = try await api.snapshots(after: nil, limit: limit)
        #expect(none.snapshots.isEmpty && none.more, "limit \(limit)")
      }
      let last = try await api.snapshots(after: uuids[4], limit: 3)
      #expect(last.snapshots.isEmpty && !last.more)

      // After a UUID that is gone: the ones after it; a new snapshot takes its place in order.
      try await api.deleteSnapshot(uuids[2])
      let resumed = try await api.snapshots(after: uuids[2], limit: 1)
      #expect(resumed.snapshots.map(\.uuid) == [uuids[3]] && resumed.more)
      let added = try await api.createSnapshot(named: "snap-new", of: volume.uuid).snapshot.uuid
      let now = (uuids.filter { $0 != uuids[2] } + [added]).sorted()
      #expect(try await walk(api, limit: 2).seen == now)

      // The index is rebuilt in order at start.
      let reopened = try LocalTarget(name: "store-t", store: target.store, configfs: target.configfs)
      #expect(try await walk(reopened.api, limit: 2).seen == now)
      // Paging leaves the filters as they were.
      #expect(try await api.snapshots(matching: SnapshotFilter(sourceVolume: volume.uuid)).count == 5)
    }
  }

  @Test(
    "A snapshot keeps the attributes it was created with, across a repeat and a restart",
    arguments: TargetAPIFactory.all)
  func snapshotAttributes(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let volume = try await api.createVolume(newVolume("pvc-sa")).volume
      let attributes = ["replica/leg": "1", "replica/events": "4242"]
      let created = try await api.createSnapshot(named: "snap-a", of: volume.uuid, attributes: attributes)
      #expect(!created.existed)
      #expect(created.snapshot.attributes == attributes)
      // A repeat returns the snapshot as it is, whatever it asks for now.
      let again = try await api.createSnapshot(named: "snap-a", of: volume.uuid, attributes: ["other": "x"])
      #expect(again.existed && again.snapshot == created.snapshot)
      #expect(try await api.snapshots(matching: SnapshotFilter(name: "snap-a")) == [created.snapshot])
      let plain = try await api.createSnapshot(named: "snap-plain", of: volume.uuid)
      #expect(plain.snapshot.attributes.isEmpty)

      let reopened = try LocalTarget(name: "store-t", store: target.store, configfs: target.configfs)
      let restarted = try await reopened.api.snapshots(matching: SnapshotFilter(name: "snap-a"))
      #expect(restarted.map(\.uuid) == [created.snapshot.uuid])
      #expect(restarted.map(\.attributes) == [attributes])
    }
  }

  @Test("Snapshot attributes past the limits are invalid arguments and create nothing", arguments: TargetAPIFactory.all)
  func snapshotAttributeLimits(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      let volume = try await api.createVolume(newVolume("pvc-sl")).volume
      let bloated = [
        ["big": String(repeating: "x", count: 4097)],
        [String(repeating: "k", count: 257): "v"],
        Dictionary(uniqueKeysWithValues: (0..<65).map { ("k\($0)", "v") }),
        ["": "empty key"],
      ]
      for attributes in bloated {
        await expectError(.invalidArgument, mentioning: ["attribute"]) {
          try await api.createSnapshot(named: "snap-big", of: volume.uuid, attributes: attributes)
        }
      }
      #expect(try await api.snapshots(matching: SnapshotFilter()).isEmpty)
    }
  }

  @Test(
    "A volume's md superblock is read from its data: nil without one, its fields with one",
    arguments: TargetAPIFactory.all)
  func mdSuperblock(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let volume = try await api.createVolume(newVolume("pvc-md", size: 8 * MiB)).volume
      #expect(try await api.mdSuperblock(of: volume.uuid) == nil)

      var builder = MDSuperblockBytes()
      builder.events = 77
      builder.featureMap = 1 | 2 | 128  // re-added, catching up through the bitmap
      builder.roles = [0xfffe, 1, 0]
      builder.devNumber = 2
      let data = target.store + "/volumes/\(volume.uuid.value).img"
      try writeBytes(builder.bytes, at: MDSuperblock.offsetBytes, to: data)
      let superblock = try #require(try await api.mdSuperblock(of: volume.uuid))
      #expect(
        superblock
          == MDSuperblock(
            arrayUUID: try ObjectUUID("10111213-1415-1617-1819-1a1b1c1d1e1f"),
            deviceUUID: try ObjectUUID("a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf"), events: 77, legCount: 2, level: 1,
            dataOffsetBytes: 4 * MiB, role: .active(slot: 0), isRecovering: true))

      // A torn superblock is reported, never taken for a good one or for none.
      var torn = builder.bytes
      torn[200] ^= 0xff
      try writeBytes(torn, at: MDSuperblock.offsetBytes, to: data)
      await expectError(.failedPrecondition, mentioning: [volume.uuid.value, "checksum"]) {
        try await api.mdSuperblock(of: volume.uuid)
      }
      await expectError(.notFound, mentioning: ["store-t"]) { try await api.mdSuperblock(of: .random()) }
    }
  }

  /// Leg `index` (of `generation`) of a replicated volume `set`, as the controller creates it.
  static func createLeg(
    _ api: any TargetAPI, of set: ObjectUUID, index: Int = 1, generation: Int = 0
  ) async throws -> TargetVolume {
    var attributes = ["replica/index": "\(index)", "replica/targets": "a,b"]
    if generation > 0 { attributes["replica/generation"] = "\(generation)" }
    var request = NewVolume(
      name: "pvc-lm~replica-\(index)-\(generation)", sizeBytes: ReplicaLayout.legBytes(forVolume: 4 * MiB), source: nil,
      attributes: attributes)
    request.uuid = ReplicaLayout.legUUID(of: set, index: index, generation: generation)
    return try await api.createVolume(request).volume
  }

  static func legMap(of set: ObjectUUID, version: UInt64, on targets: [String] = ["a", "c"]) throws -> LegMap {
    LegMap(
      set: set, version: version,
      legs: try targets.enumerated().map { LegMap.Leg(target: try TargetName($1), generation: $0) },
      replaced: version > 0 ? [LegMap.ReplacedLeg(index: 1, target: try TargetName("b"), generation: 0)] : [])
  }

  static func mapBlock(of volume: ObjectUUID, on target: LocalTarget) throws -> [UInt8] {
    try UncachedRead.bytes(at: LegMap.blockOffset, count: LegMap.blockBytes, from: target.dataPath(of: volume))
  }

  @Test(
    "A leg's map: none at first; written, it reads back; a repeat succeeds; only a newer version replaces it",
    arguments: TargetAPIFactory.all)
  func legMapCompareAndSet(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let set = ObjectUUID.random()
      let leg = try await Self.createLeg(api, of: set)
      #expect(try await api.legMap(of: leg.uuid) == nil)

      let first = try Self.legMap(of: set, version: 1)
      try await api.writeLegMap(first, to: leg.uuid)
      #expect(try await api.legMap(of: leg.uuid) == first)
      try await api.writeLegMap(first, to: leg.uuid)
      #expect(try Self.mapBlock(of: leg.uuid, on: target) == first.block())

      // Another repair's map at the same version loses.
      let rival = try Self.legMap(of: set, version: 1, on: ["a", "d"])
      await expectError(.failedPrecondition, mentioning: ["store-t", "version 1"]) {
        try await api.writeLegMap(rival, to: leg.uuid)
      }
      #expect(try await api.legMap(of: leg.uuid) == first)

      let second = try Self.legMap(of: set, version: 2, on: ["a", "d"])
      try await api.writeLegMap(second, to: leg.uuid)
      #expect(try await api.legMap(of: leg.uuid) == second)
      await expectError(.failedPrecondition, mentioning: ["version 2"]) {
        try await api.writeLegMap(first, to: leg.uuid)
      }
      #expect(try await api.legMap(of: leg.uuid) == second)

      let third = try Self.legMap(of: set, version: 3, on: ["e", "d"])
      try await api.writeLegMap(third, to: leg.uuid)
      #expect(try await api.legMap(of: leg.uuid) == third)

      // A replacement leg (a later generation) belongs to the same set.
      let replacement = try await Self.createLeg(api, of: set, index: 0, generation: 1)
      try await api.writeLegMap(third, to: replacement.uuid)
      #expect(try await api.legMap(of: replacement.uuid) == third)
    }
  }

  @Test(
    "A single-copy volume has no map block: reading or writing one is refused and its data stays",
    arguments: TargetAPIFactory.all)
  func legMapOnSingleCopy(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let volume = try await api.createVolume(newVolume("pvc-single", size: 8 * MiB)).volume
      let data = (0..<LegMap.blockBytes).map { UInt8(truncatingIfNeeded: $0 &* 13) }
      try writeBytes(data, at: LegMap.blockOffset, to: target.dataPath(of: volume.uuid))
      await expectError(.failedPrecondition, mentioning: ["replica/index"]) {
        try await api.writeLegMap(try Self.legMap(of: volume.uuid, version: 1), to: volume.uuid)
      }
      await expectError(.failedPrecondition, mentioning: ["replica/index"]) { try await api.legMap(of: volume.uuid) }
      #expect(try Self.mapBlock(of: volume.uuid, on: target) == data)
    }
  }

  @Test(
    "Foreign bytes in the map block are refused and kept; a torn map of ours and a copied leg's map are overwritten",
    arguments: TargetAPIFactory.all)
  func legMapOverWhatIsThere(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let set = ObjectUUID.random()
      let leg = try await Self.createLeg(api, of: set)
      let path = target.dataPath(of: leg.uuid)
      let map = try Self.legMap(of: set, version: 1)

      var foreign = [UInt8](repeating: 0, count: LegMap.blockBytes)
      foreign[100] = 0x42
      try writeBytes(foreign, at: LegMap.blockOffset, to: path)
      await expectError(.failedPrecondition, mentioning: ["not a leg map"]) { try await api.legMap(of: leg.uuid) }
      await expectError(.failedPrecondition, mentioning: ["not a leg map"]) {
        try await api.writeLegMap(map, to: leg.uuid)
      }
      #expect(try Self.mapBlock(of: leg.uuid, on: target) == foreign)

      var torn = try Self.legMap(of: set, version: 5).block()
      torn[40] ^= 0x04
      try writeBytes(torn, at: LegMap.blockOffset, to: path)
      await expectError(.failedPrecondition, mentioning: ["damaged"]) { try await api.legMap(of: leg.uuid) }
      try await api.writeLegMap(map, to: leg.uuid)
      #expect(try await api.legMap(of: leg.uuid) == map)

      // A leg copied from another set's (a clone of a leg) carries that set's map.
      let copied = try Self.legMap(of: .random(), version: 9)
      try writeBytes(try copied.block(), at: LegMap.blockOffset, to: path)
      #expect(try await api.legMap(of: leg.uuid) == nil)
      try await api.writeLegMap(map, to: leg.uuid)
      #expect(try await api.legMap(of: leg.uuid) == map)
    }
  }

  @Test(
    "Leg maps of an unknown volume are notFound; a map of another set is invalidArgument and writes nothing",
    arguments: TargetAPIFactory.all)
  func legMapRefusals(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let set = ObjectUUID.random()
      let leg = try await Self.createLeg(api, of: set)
      let unknown = ObjectUUID.random()
      await expectError(.notFound, mentioning: ["store-t", unknown.value]) { try await api.legMap(of: unknown) }
      await expectError(.notFound, mentioning: [unknown.value]) {
        try await api.writeLegMap(try Self.legMap(of: set, version: 1), to: unknown)
      }
      let other = ObjectUUID.random()
      await expectError(.invalidArgument, mentioning: [other.value, set.value]) {
        try await api.writeLegMap(try Self.legMap(of: other, version: 1), to: leg.uuid)
      }
      // The leg's own UUID is not its set's (only leg 0 of generation 0 shares it).
      await expectError(.invalidArgument, mentioning: [set.value]) {
        try await api.writeLegMap(try Self.legMap(of: leg.uuid, version: 1), to: leg.uuid)
      }
      var unbounded = try Self.legMap(of: set, version: 1)
      unbounded.legs.removeLast()
      await expectError(.invalidArgument, mentioning: ["2 to 3 legs"]) {
        try await api.writeLegMap(unbounded, to: leg.uuid)
      }
      #expect(try Self.mapBlock(of: leg.uuid, on: target).allSatisfy { $0 == 0 })
    }
  }

  @Test("Expansion grows a volume and never shrinks it", arguments: TargetAPIFactory.all)
  func expand(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      let volume = try await api.createVolume(newVolume("pvc-e")).volume
      #expect(try await api.expandVolume(volume.uuid, to: 16 * MiB).record.sizeBytes == 16 * MiB)
      #expect(try await api.expandVolume(volume.uuid, to: 8 * MiB).record.sizeBytes == 16 * MiB)
    }
  }

  @Test(
    "Updating attributes sets the given keys, keeps the others, survives a restart and reaches publish",
    arguments: TargetAPIFactory.all)
  func updateAttributes(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let volume = try await api.createVolume(newVolume("pvc-u")).volume
      let updated = try await api.updateVolumeAttributes(volume.uuid, setting: ["m": "1", "k": "w"])
      #expect(updated.record.attributes == ["k": "w", "m": "1"])
      #expect(try await api.updateVolumeAttributes(volume.uuid, setting: ["m": "1"]).record == updated.record)
      #expect(try await api.volume(volume.uuid).record.attributes == ["k": "w", "m": "1"])
      let export = try await api.publishVolume(volume.uuid, to: try node(1), readonly: false, exclusive: true)
      #expect(export.attributes == ["k": "w", "m": "1"])
      let reopened = try LocalTarget(name: "store-t", store: target.store, configfs: target.configfs)
      #expect(try await reopened.api.volume(volume.uuid).record.attributes == ["k": "w", "m": "1"])
      // Past the limits, or for an unknown volume: refused, and nothing changes.
      let tooMany = Dictionary(uniqueKeysWithValues: (0..<64).map { ("n\($0)", "x") })
      await expectError(.invalidArgument, mentioning: ["at most 64"]) {
        try await api.updateVolumeAttributes(volume.uuid, setting: tooMany)
      }
      await expectError(.invalidArgument) { try await api.updateVolumeAttributes(volume.uuid, setting: ["": "x"]) }
      await expectError(.notFound) { try await api.updateVolumeAttributes(.random(), setting: ["m": "2"]) }
      #expect(try await api.volume(volume.uuid).record.attributes == ["k": "w", "m": "1"])
    }
  }

  @Test("A volume whose data is gone is reported with the problem", arguments: TargetAPIFactory.all)
  func missingData(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, target in
      let volume = try await api.createVolume(newVolume("pvc-m")).volume
      try FileManager.default.removeItem(atPath: target.store + "/volumes/\(volume.uuid.value).img")
      let problem = try await api.volume(volume.uuid).problem
      #expect(problem?.contains("missing") == true)
    }
  }

  @Test("Info names the store, the exporter and the portals", arguments: TargetAPIFactory.all)
  func info(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      let info = try await api.info()
      #expect(info.storeKind == "file")
      #expect(info.exporterKind == "simulated")
      #expect(info.portals == [HostPort(host: "127.0.0.1", port: 4420)])
      #expect(info.totalBytes >= info.availableBytes)
      #expect(info.availableBytes > 0)
    }
  }

  @Test("Malformed names are invalid arguments and create nothing", arguments: TargetAPIFactory.all)
  func badNames(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { (api, _) throws in
      for name in ["", String(repeating: "n", count: 254), "a\nb"] {
        await expectError(.invalidArgument) { try await api.createVolume(newVolume(name)) }
      }
      await expectError(.invalidArgument) {
        try await api.createVolume(NewVolume(name: "z", sizeBytes: 0, source: nil, attributes: [:]))
      }
      let bloated = [
        ["big": String(repeating: "x", count: 3 << 20)],
        Dictionary(uniqueKeysWithValues: (0..<65).map { ("k\($0)", "v") }),
        ["": "empty key"],
      ]
      for attributes in bloated {
        await expectError(.invalidArgument, mentioning: ["attribute"]) {
          try await api.createVolume(NewVolume(name: "bloated", sizeBytes: MiB, source: nil, attributes: attributes))
        }
      }
      #expect(try await api.volumes(named: nil).isEmpty)
    }
  }
}
