import CSIProto
import Foundation
import GRPCCore
import NVMeCSICore
import TestSupport
import Testing

@Suite("Snapshots, restores and clones")
struct SnapshotAndCloneTests {
  /// Writes a recognisable pattern at a few offsets of a volume's backing file, as a
  /// pod would through the device.
  static func writePattern(_ path: String, seed: UInt8) throws {
    let handle = try #require(FileHandle(forWritingAtPath: path))
    defer { try? handle.close() }
    for (i, offset) in [UInt64(0), 4096, 5 * UInt64(mebibyte) + 17].enumerated() {
      try handle.seek(toOffset: offset)
      try handle.write(contentsOf: Data(repeating: seed &+ UInt8(i), count: 4096))
    }
  }

  static func readPattern(_ path: String) throws -> [Data] {
    let handle = try #require(FileHandle(forReadingAtPath: path))
    defer { try? handle.close() }
    return try [UInt64(0), 4096, 5 * UInt64(mebibyte) + 17].map { offset in
      try handle.seek(toOffset: offset)
      return try handle.read(upToCount: 4096) ?? Data()
    }
  }

  @Test("A snapshot freezes the content; volumes restored from it and clones read back the exact bytes")
  func snapshotRestoreClone() async throws {
    try await Harness.with { h in
      let source = try await h.controller.createVolume(
        createRequest("pvc-src", bytes: 16 * mebibyte, parameters: ["target": "store-a"])
      ).volume
      try Self.writePattern(h.storeA.dataPath(ofVolume: source.volumeID), seed: 1)
      let snapshot = try await h.controller.createSnapshot(
        .with {
          $0.name = "snap-1"
          $0.sourceVolumeID = source.volumeID
        }
      ).snapshot
      #expect(snapshot.snapshotID.hasPrefix("s1.store-a."))
      #expect(snapshot.sourceVolumeID == source.volumeID)
      #expect(snapshot.sizeBytes == 16 * mebibyte)
      #expect(snapshot.readyToUse)
      #expect(snapshot.creationTime.seconds > 0)
      // Later writes to the source do not change the snapshot.
      let frozen = try Self.readPattern(h.storeA.dataPath(ofVolume: source.volumeID))
      try Self.writePattern(h.storeA.dataPath(ofVolume: source.volumeID), seed: 100)

      var restore = createRequest("pvc-restore", bytes: 32 * mebibyte)
      restore.volumeContentSource = .with { $0.snapshot = .with { $0.snapshotID = snapshot.snapshotID } }
      let restored = try await h.controller.createVolume(restore).volume
      #expect(restored.volumeID.hasPrefix("v1.store-a."))
      #expect(restored.capacityBytes == 32 * mebibyte)
      #expect(restored.contentSource.snapshot.snapshotID == snapshot.snapshotID)
      #expect(try Self.readPattern(h.storeA.dataPath(ofVolume: restored.volumeID)) == frozen)

      var clone = createRequest("pvc-clone", bytes: 0)
      clone.volumeContentSource = .with { $0.volume = .with { $0.volumeID = source.volumeID } }
      let cloned = try await h.controller.createVolume(clone).volume
      #expect(cloned.contentSource.volume.volumeID == source.volumeID)
      #expect(cloned.capacityBytes >= source.capacityBytes)
      #expect(
        try Self.readPattern(h.storeA.dataPath(ofVolume: cloned.volumeID))
          == Self.readPattern(h.storeA.dataPath(ofVolume: source.volumeID)))
    }
  }

  @Test("A restore smaller than its source is OutOfRange; a missing source is NotFound")
  func restoreErrors() async throws {
    try await Harness.with { h in
      let source = try await h.controller.createVolume(createRequest("pvc-big", bytes: 64 * mebibyte)).volume
      var small = createRequest("pvc-small", bytes: 0)
      small.capacityRange = .with {
        $0.requiredBytes = 8 * mebibyte
        $0.limitBytes = 8 * mebibyte
      }
      small.volumeContentSource = .with { $0.volume = .with { $0.volumeID = source.volumeID } }
      await expectStatus(.outOfRange) { try await h.controller.createVolume(small) }

      var missing = createRequest("pvc-missing")
      missing.volumeContentSource = .with {
        $0.snapshot = .with { $0.snapshotID = "s1.store-a.00000000-0000-4000-8000-000000000000" }
      }
      await expectStatus(.notFound) { try await h.controller.createVolume(missing) }
      missing.volumeContentSource = .with { $0.snapshot = .with { $0.snapshotID = "../../etc" } }
      await expectStatus(.notFound) { try await h.controller.createVolume(missing) }
    }
  }

  @Test("CreateSnapshot is idempotent by name; the same name for another volume is AlreadyExists")
  func snapshotIdempotency() async throws {
    try await Harness.with { h in
      let a = try await h.controller.createVolume(createRequest("pvc-a")).volume
      let b = try await h.controller.createVolume(createRequest("pvc-b")).volume
      let first = try await h.controller.createSnapshot(
        .with {
          $0.name = "snap"
          $0.sourceVolumeID = a.volumeID
        }
      ).snapshot
      let again = try await h.controller.createSnapshot(
        .with {
          $0.name = "snap"
          $0.sourceVolumeID = a.volumeID
        }
      ).snapshot
      #expect(first.snapshotID == again.snapshotID)
      await expectStatus(.alreadyExists) {
        try await h.controller.createSnapshot(
          .with {
            $0.name = "snap"
            $0.sourceVolumeID = b.volumeID
          })
      }
      await expectStatus(.notFound) {
        try await h.controller.createSnapshot(
          .with {
            $0.name = "snap-x"
            $0.sourceVolumeID = "v1.store-a.00000000-0000-4000-8000-000000000000"
          })
      }
      await expectStatus(.invalidArgument, mentioning: "name") {
        try await h.controller.createSnapshot(.with { $0.sourceVolumeID = a.volumeID })
      }
      await expectStatus(.invalidArgument, mentioning: "tier") {
        try await h.controller.createSnapshot(
          .with {
            $0.name = "snap-p"
            $0.sourceVolumeID = a.volumeID
            $0.parameters = ["tier": "gold"]
          })
      }
    }
  }

  @Test("ListSnapshots filters by ID and source and pages; GetSnapshot and DeleteSnapshot behave")
  func listGetDelete() async throws {
    try await Harness.with { h in
      let a = try await h.controller.createVolume(createRequest("pvc-a", parameters: ["target": "store-a"])).volume
      let b = try await h.controller.createVolume(createRequest("pvc-b", parameters: ["target": "store-b"])).volume
      var ids: [String] = []
      for i in 0..<3 {
        ids.append(
          try await h.controller.createSnapshot(
            .with {
              $0.name = "a-\(i)"
              $0.sourceVolumeID = a.volumeID
            }
          ).snapshot.snapshotID)
      }
      let fromB = try await h.controller.createSnapshot(
        .with {
          $0.name = "b-0"
          $0.sourceVolumeID = b.volumeID
        }
      ).snapshot

      let observed1 = try await h.controller.listSnapshots(.init()).entries.count

      #expect(observed1 == 4)
      let ofA = try await h.controller.listSnapshots(.with { $0.sourceVolumeID = a.volumeID }).entries.map(
        \.snapshot.snapshotID)
      #expect(Set(ofA) == Set(ids))
      let one = try await h.controller.listSnapshots(.with { $0.snapshotID = fromB.snapshotID }).entries
      #expect(one.map(\.snapshot.snapshotID) == [fromB.snapshotID])
      let observed2 = try await h.controller.listSnapshots(.with { $0.snapshotID = "not-an-id" }).entries.isEmpty
      #expect(observed2)

      let page1 = try await h.controller.listSnapshots(.with { $0.maxEntries = 3 })
      #expect(page1.entries.count == 3 && !page1.nextToken.isEmpty)
      let page2 = try await h.controller.listSnapshots(
        .with {
          $0.maxEntries = 3
          $0.startingToken = page1.nextToken
        })
      #expect(page2.entries.count == 1 && page2.nextToken.isEmpty)
      await expectStatus(.aborted) { try await h.controller.listSnapshots(.with { $0.startingToken = "x" }) }

      let got = try await h.controller.getSnapshot(.with { $0.snapshotID = ids[0] }).snapshot
      #expect(got.sourceVolumeID == a.volumeID)

      for _ in 0..<2 { _ = try await h.controller.deleteSnapshot(.with { $0.snapshotID = ids[0] }) }
      await expectStatus(.notFound) { try await h.controller.getSnapshot(.with { $0.snapshotID = ids[0] }) }
      _ = try await h.controller.deleteSnapshot(.with { $0.snapshotID = "garbage" })
      #expect(h.storeA.files(in: "snapshots").count == 4)  // two left, data + record each
    }
  }

  /// Takes `count` snapshots of a volume through the controller; their IDs.
  static func snapshots(
    _ count: Int, of volumeID: String, prefix: String, controller: Csi_V1_Controller.Client<some ClientTransport>
  ) async throws -> [String] {
    var ids: [String] = []
    for i in 0..<count {
      ids.append(
        try await controller.createSnapshot(
          .with {
            $0.name = "\(prefix)-\(i)"
            $0.sourceVolumeID = volumeID
          }
        ).snapshot.snapshotID)
    }
    return ids
  }

  /// Every page of ListSnapshots from `token` on, and the pages' sizes.
  static func listAll(
    _ controller: Csi_V1_Controller.Client<some ClientTransport>, maxEntries: Int32, from token: String = ""
  ) async throws -> (ids: [String], pages: [Int]) {
    var ids: [String] = []
    var pages: [Int] = []
    var token = token
    repeat {
      let page = try await controller.listSnapshots(
        .with {
          $0.maxEntries = maxEntries
          $0.startingToken = token
        })
      if maxEntries > 0 { #expect(page.entries.count <= Int(maxEntries)) }
      ids += page.entries.map(\.snapshot.snapshotID)
      pages.append(page.entries.count)
      token = page.nextToken
    } while !token.isEmpty && pages.count < 100
    return (ids, pages)
  }

  @Test(
    "ListSnapshots pages through every snapshot on every target exactly once, in ID order; the last page has no token",
    arguments: [0, 1, 2, 5])
  func pagination(maxEntries: Int32) async throws {
    try await Harness.with { h in
      let a = try await h.controller.createVolume(createRequest("pvc-a", parameters: ["target": "store-a"])).volume
      let b = try await h.controller.createVolume(createRequest("pvc-b", parameters: ["target": "store-b"])).volume
      let created =
        try await Self.snapshots(3, of: a.volumeID, prefix: "a", controller: h.controller)
        + Self.snapshots(2, of: b.volumeID, prefix: "b", controller: h.controller)
      let listed = try await Self.listAll(h.controller, maxEntries: maxEntries)
      #expect(listed.ids == created.sorted())
      let pages = maxEntries == 0 ? 1 : (5 + Int(maxEntries) - 1) / Int(maxEntries)
      #expect(listed.pages.count == pages, "a full last page must not carry a token: \(listed.pages)")
      // Each entry describes its snapshot as GetSnapshot does.
      let first = try await h.controller.listSnapshots(.with { $0.maxEntries = 1 }).entries[0].snapshot
      #expect(try await h.controller.getSnapshot(.with { $0.snapshotID = first.snapshotID }).snapshot == first)
      // A volume's ID is no snapshot token.
      await expectStatus(.aborted) { try await h.controller.listSnapshots(.with { $0.startingToken = a.volumeID }) }
      await expectStatus(.invalidArgument) { try await h.controller.listSnapshots(.with { $0.maxEntries = -1 }) }
    }
  }

  @Test("A ListSnapshots token stays good when snapshots are deleted or taken between pages")
  func tokensSurviveChanges() async throws {
    try await Harness.with { h in
      let a = try await h.controller.createVolume(createRequest("pvc-a", parameters: ["target": "store-a"])).volume
      let b = try await h.controller.createVolume(createRequest("pvc-b", parameters: ["target": "store-b"])).volume
      let created =
        (try await Self.snapshots(3, of: a.volumeID, prefix: "a", controller: h.controller)
        + Self.snapshots(3, of: b.volumeID, prefix: "b", controller: h.controller)).sorted()
      let page1 = try await h.controller.listSnapshots(.with { $0.maxEntries = 2 })
      #expect(page1.entries.map(\.snapshot.snapshotID) == Array(created.prefix(2)))
      #expect(page1.nextToken == created[1])
      // The snapshot the token names and one not listed yet are deleted; one is taken.
      for gone in [created[1], created[4]] { _ = try await h.controller.deleteSnapshot(.with { $0.snapshotID = gone }) }
      let taken = try await Self.snapshots(1, of: b.volumeID, prefix: "new", controller: h.controller)[0]
      let rest = try await Self.listAll(h.controller, maxEntries: 2, from: page1.nextToken)
      #expect(rest.ids == rest.ids.sorted() && Set(rest.ids).count == rest.ids.count)
      #expect(rest.ids.filter { $0 != taken } == [created[2], created[3], created[5]])
      #expect(rest.ids.contains(taken) == (taken > created[1]), "a new snapshot is listed if it sorts after the token")
    }
  }

  @Test("A ListSnapshots page asks each target only for what the page needs")
  func pageCost() async throws {
    try await Fleet.with(targets: 3) { fleet in
      var created: [String] = []
      for target in fleet.targets {
        let volume = try await fleet.controller.createVolume(
          createRequest("pvc-\(target.name)", bytes: mebibyte, parameters: ["target": target.name.value])
        ).volume
        created += try await Self.snapshots(
          4, of: volume.volumeID, prefix: target.name.value, controller: fleet.controller)
      }
      created.sort()
      var token = ""
      var listed: [String] = []
      repeat {
        let before = fleet.targets.map(\.snapshotPageCalls.count)
        let page = try await fleet.controller.listSnapshots(
          .with {
            $0.maxEntries = 1
            $0.startingToken = token
          })
        let calls = zip(fleet.targets, before).flatMap { $0.snapshotPageCalls.dropFirst($1) }
        // One entry, and one more to know whether another page follows: never a
        // target's whole list.
        #expect(calls.allSatisfy { $0.limit <= 2 }, "limits asked: \(calls.map(\.limit))")
        #expect(calls.reduce(0) { $0 + $1.returned } <= 2, "snapshots read for a page of 1: \(calls)")
        #expect(calls.count <= 2)
        listed += page.entries.map(\.snapshot.snapshotID)
        token = page.nextToken
      } while !token.isEmpty && listed.count < 20
      #expect(listed == created)
      // Filters still find a source's snapshots through the index, unpaged by the cursor.
      let one = try await fleet.controller.listSnapshots(.with { $0.snapshotID = created[5] }).entries
      #expect(one.map(\.snapshot.snapshotID) == [created[5]])
    }
  }
}
