import Foundation
import NVMeCSICore
import TestSupport
import Testing
import VolumeStore

/// The contract of `VolumeStore` (see its doc comment), run against every
/// implementation `makeStores()` returns.
@Suite("VolumeStore contract")
struct VolumeStoreContractTests {
  func volumeRecord(
    _ uuid: ObjectUUID = .random(), name: String = "pvc-1", size: UInt64 = 4 * MiB, source: VolumeSource? = nil
  )
    -> VolumeRecord
  {
    VolumeRecord(uuid: uuid, name: name, sizeBytes: size, source: source, created: created)
  }

  @Test("A new store is empty and reports a sane capacity", arguments: makeStores())
  func emptyStore(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      #expect(!store.kind.isEmpty)
      #expect(try store.volumes().isEmpty)
      #expect(try store.snapshots().isEmpty)
      #expect(try store.volume(.random()) == nil)
      let capacity = try store.capacity()
      #expect(capacity.totalBytes > 0)
      #expect(capacity.availableBytes <= capacity.totalBytes)
    }
  }

  @Test("A created volume is listed, found by UUID and has a zeroed device of its size", arguments: makeStores())
  func createVolume(_ factory: StoreFactory) throws {
    try withStore(factory) { (store, _) throws in
      var record = volumeRecord(size: 8 * MiB)
      record.attributes = ["fsType": "xfs"]
      let other = volumeRecord(name: "pvc-2", size: 2 * MiB)
      #expect(try store.createVolume(record) == record)
      #expect(try store.createVolume(other) == other)

      #expect(try store.volume(record.uuid) == record)
      #expect(try Set(store.volumes()) == [record, other])
      let uuid = record.uuid
      #expect(store.hasData(uuid))
      #expect(!store.hasData(.random()))
      let device = store.devicePath(of: uuid)
      #expect(try Device.size(of: device) == 8 * MiB)
      #expect(try Device.read(4096, at: 0, from: device) == zeros(4096))
      #expect(try Device.read(4096, at: 8 * MiB - 4096, from: device) == zeros(4096))
      #expect(store.devicePath(of: uuid) != store.devicePath(of: other.uuid))
    }
  }

  @Test(
    "A create answers exactly what later reads return, a date finer than the store keeps included",
    arguments: makeStores())
  func createAnswersWhatIsStored(_ factory: StoreFactory) throws {
    try withStore(factory) { (store, _) throws in
      // One of the instants whose milliseconds do not survive JSON's round trip exactly.
      let now = Date(timeIntervalSince1970: 1_700_000_000.0056)
      let record = VolumeRecord(uuid: .random(), name: "pvc-now", sizeBytes: 4 * MiB, created: now)
      let created = try store.createVolume(record)
      #expect(try store.volume(record.uuid) == created)
      let snapshot = try store.createSnapshot(
        SnapshotRecord(uuid: .random(), name: "snap-now", sourceVolume: record.uuid, sizeBytes: 4 * MiB, created: now))
      #expect(try store.snapshots() == [snapshot])
    }
  }

  @Test("Creating a volume again with the same UUID returns the existing one unchanged", arguments: makeStores())
  func createIsIdempotent(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let uuid = ObjectUUID.random()
      let first = try store.createVolume(volumeRecord(uuid, name: "first", size: 4 * MiB))
      try Device.write(pattern(512, seed: 1), at: 0, to: store.devicePath(of: uuid))

      let again = try store.createVolume(volumeRecord(uuid, name: "second", size: 16 * MiB))
      #expect(again == first)
      #expect(try store.volumes() == [first])
      #expect(try Device.size(of: store.devicePath(of: uuid)) == 4 * MiB)
      #expect(try Device.read(512, at: 0, from: store.devicePath(of: uuid)) == pattern(512, seed: 1))
    }
  }

  @Test("A snapshot freezes the volume's bytes and a volume restored from it holds them", arguments: makeStores())
  func snapshotAndRestore(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let source = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(source, size: 8 * MiB))
      let device = store.devicePath(of: source)
      try Device.write(pattern(4096, seed: 1), at: 0, to: device)
      try Device.write(pattern(4096, seed: 2), at: 5 * MiB + 123, to: device)

      let snapshotUUID = ObjectUUID.random()
      let snapshot = SnapshotRecord(
        uuid: snapshotUUID, name: "snap-1", sourceVolume: source, sizeBytes: 8 * MiB, created: created)
      #expect(try store.createSnapshot(snapshot) == snapshot)
      #expect(try store.snapshots() == [snapshot])

      // Later writes to the volume do not reach the snapshot.
      try Device.write(pattern(4096, seed: 3), at: 0, to: device)

      let restored = ObjectUUID.random()
      _ = try store.createVolume(
        volumeRecord(restored, name: "pvc-restored", size: 8 * MiB, source: .snapshot(snapshotUUID)))
      let restoredDevice = store.devicePath(of: restored)
      #expect(try Device.size(of: restoredDevice) == 8 * MiB)
      #expect(try Device.read(4096, at: 0, from: restoredDevice) == pattern(4096, seed: 1))
      #expect(try Device.read(4096, at: 5 * MiB + 123, from: restoredDevice) == pattern(4096, seed: 2))
      #expect(try Device.read(4096, at: 2 * MiB, from: restoredDevice) == zeros(4096))
      #expect(try store.volume(restored)?.source == .snapshot(snapshotUUID))
    }
  }

  @Test("Creating a snapshot again with the same UUID returns the existing one", arguments: makeStores())
  func snapshotIsIdempotent(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let source = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(source))
      let uuid = ObjectUUID.random()
      let first = try store.createSnapshot(
        SnapshotRecord(uuid: uuid, name: "a", sourceVolume: source, sizeBytes: 4 * MiB, created: created))
      let again = try store.createSnapshot(
        SnapshotRecord(uuid: uuid, name: "b", sourceVolume: source, sizeBytes: 4 * MiB, created: created))
      #expect(again == first)
      #expect(try store.snapshots() == [first])
    }
  }

  @Test("A snapshot's attributes are kept with it, across reopening the store", arguments: makeStores())
  func snapshotAttributes(_ factory: StoreFactory) throws {
    try withTemporaryDirectory { directory in
      let location = directory + "/store"
      let source = ObjectUUID.random()
      let attributes = ["replica/leg": "1", "note": "ünïcödé: and = signs, commas"]
      let snapshot = SnapshotRecord(
        uuid: .random(), name: "snap-attrs", sourceVolume: source, sizeBytes: 4 * MiB, created: created,
        attributes: attributes)
      let plain = SnapshotRecord(
        uuid: .random(), name: "snap-plain", sourceVolume: source, sizeBytes: 4 * MiB, created: created)
      do {
        let store = try factory.open(location)
        _ = try store.createVolume(volumeRecord(source))
        #expect(try store.createSnapshot(snapshot) == snapshot)
        #expect(try store.createSnapshot(plain) == plain)
      }
      let reopened = try factory.open(location)
      #expect(try Set(reopened.snapshots()) == [snapshot, plain])
    }
  }

  @Test("A clone larger than its source holds the source's bytes followed by zeros", arguments: makeStores())
  func largerClone(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let source = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(source, size: 4 * MiB))
      try Device.write(pattern(8192, seed: 7), at: 4 * MiB - 8192, to: store.devicePath(of: source))

      let clone = ObjectUUID.random()
      let record = try store.createVolume(
        volumeRecord(clone, name: "pvc-clone", size: 12 * MiB, source: .volume(source)))
      #expect(record.sizeBytes == 12 * MiB)
      let device = store.devicePath(of: clone)
      #expect(try Device.size(of: device) == 12 * MiB)
      #expect(try Device.read(8192, at: 4 * MiB - 8192, from: device) == pattern(8192, seed: 7))
      #expect(try Device.read(8192, at: 4 * MiB, from: device) == zeros(8192))
      #expect(try Device.read(4096, at: 12 * MiB - 4096, from: device) == zeros(4096))

      // The clone is independent of its source, both ways.
      try Device.write(pattern(4096, seed: 8), at: 0, to: device)
      #expect(try Device.read(4096, at: 0, from: store.devicePath(of: source)) == zeros(4096))
      try Device.write(pattern(4096, seed: 9), at: 4 * MiB - 8192, to: store.devicePath(of: source))
      #expect(try Device.read(8192, at: 4 * MiB - 8192, from: device) == pattern(8192, seed: 7))
    }
  }

  @Test("Expanding grows the device and the record, keeps the data and never shrinks", arguments: makeStores())
  func expand(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let uuid = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(uuid, size: 4 * MiB))
      try Device.write(pattern(4096, seed: 4), at: 4 * MiB - 4096, to: store.devicePath(of: uuid))

      let grown = try store.expandVolume(uuid, to: 10 * MiB)
      #expect(grown.sizeBytes == 10 * MiB)
      #expect(try store.volume(uuid)?.sizeBytes == 10 * MiB)
      #expect(try Device.size(of: store.devicePath(of: uuid)) == 10 * MiB)
      #expect(try Device.read(4096, at: 4 * MiB - 4096, from: store.devicePath(of: uuid)) == pattern(4096, seed: 4))
      #expect(try Device.read(4096, at: 10 * MiB - 4096, from: store.devicePath(of: uuid)) == zeros(4096))

      for smallerOrSame in [10 * MiB, 6 * MiB, MiB] {
        let unchanged = try store.expandVolume(uuid, to: smallerOrSame)
        #expect(unchanged.sizeBytes == 10 * MiB)
        #expect(try store.volume(uuid)?.sizeBytes == 10 * MiB)
        #expect(try Device.size(of: store.devicePath(of: uuid)) == 10 * MiB)
      }
      #expect(try Device.read(4096, at: 4 * MiB - 4096, from: store.devicePath(of: uuid)) == pattern(4096, seed: 4))
    }
  }

  @Test("Updating replaces publications and attributes and leaves the data alone", arguments: makeStores())
  func update(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let uuid = ObjectUUID.random()
      var record = try store.createVolume(volumeRecord(uuid))
      try Device.write(pattern(4096, seed: 5), at: 0, to: store.devicePath(of: uuid))

      let a = Publication(nodeID: try node("nqn.2014-08.org.example:a"), readonly: false)
      let b = Publication(nodeID: try node("nqn.2014-08.org.example:b"), readonly: true)
      record.publications = [a, b]
      record.attributes = ["k": "v"]
      try store.updateVolume(record)
      #expect(try store.volume(uuid) == record)

      record.publications = [b]
      record.attributes = [:]
      try store.updateVolume(record)
      #expect(try store.volume(uuid)?.publications == [b])
      #expect(try store.volume(uuid)?.attributes == [:])
      #expect(try store.volumes() == [record])
      #expect(try Device.read(4096, at: 0, from: store.devicePath(of: uuid)) == pattern(4096, seed: 5))
      #expect(try Device.size(of: store.devicePath(of: uuid)) == 4 * MiB)
    }
  }

  @Test("Updating or expanding a missing volume is notFound", arguments: makeStores())
  func missingVolume(_ factory: StoreFactory) throws {
    try withStore(factory) { (store, _) throws in
      let uuid = ObjectUUID.random()
      expectError(.notFound, mentioning: [uuid.value]) { try store.updateVolume(volumeRecord(uuid)) }
      expectError(.notFound, mentioning: [uuid.value]) { try store.expandVolume(uuid, to: 8 * MiB) }
      #expect(try store.volumes().isEmpty)
      #expect(!store.hasData(uuid))
    }
  }

  @Test("Deleting a volume removes it and deleting it again succeeds", arguments: makeStores())
  func deleteVolume(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let keep = try store.createVolume(volumeRecord(name: "keep"))
      let uuid = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(uuid, name: "gone"))
      try store.deleteVolume(uuid)
      #expect(try store.volume(uuid) == nil)
      #expect(!store.hasData(uuid))
      #expect(try store.volumes() == [keep])
      try store.deleteVolume(uuid)
      try store.deleteVolume(.random())
      #expect(try store.volumes() == [keep])
      #expect(store.hasData(keep.uuid))
    }
  }

  @Test("Deleting a snapshot is idempotent and spares volumes restored from it", arguments: makeStores())
  func deleteSnapshot(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let source = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(source))
      try Device.write(pattern(4096, seed: 6), at: 0, to: store.devicePath(of: source))
      let snapshot = ObjectUUID.random()
      _ = try store.createSnapshot(
        SnapshotRecord(uuid: snapshot, name: "s", sourceVolume: source, sizeBytes: 4 * MiB, created: created))
      let restored = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(restored, source: .snapshot(snapshot)))

      try store.deleteSnapshot(snapshot)
      #expect(try store.snapshots().isEmpty)
      try store.deleteSnapshot(snapshot)
      try store.deleteSnapshot(.random())
      #expect(try Device.read(4096, at: 0, from: store.devicePath(of: restored)) == pattern(4096, seed: 6))
      expectError(.notFound) {
        try store.createVolume(volumeRecord(source: .snapshot(snapshot)))
      }
    }
  }

  @Test("A snapshot outlives its source volume", arguments: makeStores())
  func snapshotOutlivesSource(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let source = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(source))
      try Device.write(pattern(4096, seed: 10), at: MiB, to: store.devicePath(of: source))
      let snapshot = ObjectUUID.random()
      _ = try store.createSnapshot(
        SnapshotRecord(uuid: snapshot, name: "s", sourceVolume: source, sizeBytes: 4 * MiB, created: created))
      try store.deleteVolume(source)

      #expect(try store.snapshots().map(\.uuid) == [snapshot])
      let restored = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(restored, source: .snapshot(snapshot)))
      #expect(try Device.read(4096, at: MiB, from: store.devicePath(of: restored)) == pattern(4096, seed: 10))
    }
  }

  @Test("A missing source is notFound and leaves nothing behind", arguments: makeStores())
  func missingSource(_ factory: StoreFactory) throws {
    try withStore(factory) { (store, _) throws in
      let volume = ObjectUUID.random()
      expectError(.notFound) { try store.createVolume(volumeRecord(volume, source: .snapshot(ObjectUUID.random()))) }
      expectError(.notFound) { try store.createVolume(volumeRecord(volume, source: .volume(ObjectUUID.random()))) }
      let snapshot = ObjectUUID.random()
      expectError(.notFound) {
        try store.createSnapshot(
          SnapshotRecord(uuid: snapshot, name: "s", sourceVolume: .random(), sizeBytes: 4 * MiB, created: created))
      }
      #expect(try store.volumes().isEmpty)
      #expect(try store.snapshots().isEmpty)
      #expect(!store.hasData(volume))
      let repairs = try store.reconcile()
      #expect(repairs.isEmpty, "\(repairs)")
    }
  }

  @Test("Volumes keep separate data", arguments: makeStores())
  func separateData(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let a = ObjectUUID.random()
      let b = ObjectUUID.random()
      _ = try store.createVolume(volumeRecord(a, name: "a"))
      _ = try store.createVolume(volumeRecord(b, name: "b"))
      try Device.write(pattern(4096, seed: 11), at: 0, to: store.devicePath(of: a))
      #expect(try Device.read(4096, at: 0, from: store.devicePath(of: b)) == zeros(4096))
    }
  }

  @Test("Operations on different volumes may run concurrently", arguments: makeStores())
  func concurrentCreates(_ factory: StoreFactory) async throws {
    let directory =
      FileManager.default.temporaryDirectory.path + "/nvme-csi-store-test-" + UUID().uuidString.lowercased()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let store = try factory.open(directory)
    let uuids = (0..<8).map { _ in ObjectUUID.random() }
    try await withThrowingTaskGroup(of: Void.self) { group in
      for (i, uuid) in uuids.enumerated() {
        group.addTask {
          _ = try store.createVolume(VolumeRecord(uuid: uuid, name: "pvc-\(i)", sizeBytes: MiB, created: created))
          try Device.write(pattern(512, seed: UInt8(i)), at: 0, to: store.devicePath(of: uuid))
          _ = try store.expandVolume(uuid, to: 2 * MiB)
        }
      }
      try await group.waitForAll()
    }
    #expect(try Set(store.volumes().map(\.uuid)) == Set(uuids))
    for (i, uuid) in uuids.enumerated() {
      #expect(try store.volume(uuid)?.sizeBytes == 2 * MiB)
      #expect(try Device.read(512, at: 0, from: store.devicePath(of: uuid)) == pattern(512, seed: UInt8(i)))
    }
  }

  @Test("Records and data survive reopening the store", arguments: makeStores())
  func reopen(_ factory: StoreFactory) throws {
    try withTemporaryDirectory { directory in
      let location = directory + "/store"
      let uuid = ObjectUUID.random()
      let snapshotUUID = ObjectUUID.random()
      var record = volumeRecord(uuid, name: "pvc-persist", size: 6 * MiB)
      record.publications = [Publication(nodeID: try node("nqn.2014-08.org.example:n"), readonly: true)]
      record.attributes = ["fsType": "ext4"]
      let snapshot = SnapshotRecord(
        uuid: snapshotUUID, name: "snap", sourceVolume: uuid, sizeBytes: 6 * MiB, created: created)
      do {
        let store = try factory.open(location)
        _ = try store.createVolume(record)
        try Device.write(pattern(4096, seed: 12), at: MiB, to: store.devicePath(of: uuid))
        _ = try store.createSnapshot(snapshot)
      }

      let reopened = try factory.open(location)
      #expect(try reopened.volumes() == [record])
      #expect(try reopened.volume(uuid) == record)
      #expect(try reopened.snapshots() == [snapshot])
      #expect(reopened.hasData(uuid))
      #expect(try Device.read(4096, at: MiB, from: reopened.devicePath(of: uuid)) == pattern(4096, seed: 12))
      let repairs = try reopened.reconcile()
      #expect(repairs.isEmpty, "\(repairs)")
    }
  }

  @Test("The creation time survives storage to the millisecond", arguments: makeStores())
  func creationTime(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let now = Date()
      let uuid = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: uuid, name: "t", sizeBytes: MiB, created: now))
      let stored = try #require(try store.volume(uuid))
      #expect(abs(stored.created.timeIntervalSince(now)) < 0.001)
    }
  }

  @Test(
    "Creating twice returns equal records even when the creation time has sub-millisecond digits",
    arguments: makeStores())
  func createTwiceEqualRecords(_ factory: StoreFactory) throws {
    try withStore(factory) { store, _ in
      let uuid = ObjectUUID.random()
      let record = VolumeRecord(
        uuid: uuid, name: "t", sizeBytes: MiB, created: Date(timeIntervalSinceReferenceDate: 800_000_000.1))
      let first = try store.createVolume(record)
      let again = try store.createVolume(record)
      #expect(again == first)
      #expect(try store.volume(uuid) == first)
    }
  }
}
