import Foundation
import NVMeCSICore
import TestSupport
import Testing
import VolumeStore

#if canImport(Glibc)
  import Glibc
#endif

/// What only the file store promises: its layout, sparse files and repairs at startup.
@Suite("FileStore")
struct FileStoreTests {
  static func allocatedBytes(_ path: String) throws -> UInt64 {
    var st = stat()
    guard stat(path, &st) == 0 else { throw DeviceError("stat \(path): errno \(errno)") }
    return UInt64(st.st_blocks) * 512
  }

  func withFileStore<R>(_ body: (FileStore, String) throws -> R) throws -> R {
    try withTemporaryDirectory { directory in try body(try FileStore(root: directory), directory) }
  }

  func files(_ directory: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
  }

  @Test("A relative store directory is rejected", arguments: ["", "store", "./store", "../store", "tmp/store"])
  func relativeRoot(_ root: String) {
    expectError(.invalidArgument, mentioning: [quoted(root), "absolute"]) { try FileStore(root: root) }
  }

  @Test("Opening creates the layout and leaves no probe files behind")
  func layout() throws {
    try withTemporaryDirectory { directory in
      try FileManager.default.createDirectory(atPath: directory + "/nested", withIntermediateDirectories: false)
      let store = try FileStore(root: directory + "/nested/")
      #expect(store.root == directory + "/nested")
      #expect(store.kind == "file")
      #expect(try files(directory + "/nested") == ["snapshots", "store.json", "volumes"])
      #expect(try files(directory + "/nested/volumes").isEmpty)
      let uuid = ObjectUUID.random()
      #expect(store.devicePath(of: uuid) == directory + "/nested/volumes/\(uuid.value).img")
    }
  }

  @Test("A volume's data file is sparse and exactly its size")
  func sparse() throws {
    try withFileStore { store, _ in
      let uuid = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: uuid, name: "big", sizeBytes: 1 << 30, created: created))
      let path = store.devicePath(of: uuid)
      #expect(try Device.size(of: path) == 1 << 30)
      #expect(try Self.allocatedBytes(path) < MiB)
    }
  }

  @Test("Snapshots and clones of a sparse volume stay sparse")
  func copiesStaySparse() throws {
    try withFileStore { store, root in
      let uuid = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: uuid, name: "v", sizeBytes: 256 * MiB, created: created))
      try Device.write(pattern(4096, seed: 1), at: 128 * MiB, to: store.devicePath(of: uuid))
      let snapshot = ObjectUUID.random()
      _ = try store.createSnapshot(
        SnapshotRecord(uuid: snapshot, name: "s", sourceVolume: uuid, sizeBytes: 256 * MiB, created: created))
      let clone = ObjectUUID.random()
      _ = try store.createVolume(
        VolumeRecord(uuid: clone, name: "c", sizeBytes: 512 * MiB, source: .volume(uuid), created: created))

      let snapshotData = root + "/snapshots/\(snapshot.value).img"
      #expect(try Device.size(of: snapshotData) == 256 * MiB)
      #expect(try Self.allocatedBytes(snapshotData) < 4 * MiB)
      #expect(try Self.allocatedBytes(store.devicePath(of: clone)) < 4 * MiB)
      #expect(try Device.read(4096, at: 128 * MiB, from: store.devicePath(of: clone)) == pattern(4096, seed: 1))
    }
  }

  @Test("Records are files next to the data and deleting removes both")
  func recordFiles() throws {
    try withFileStore { store, root in
      let uuid = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: uuid, name: "v", sizeBytes: MiB, created: created))
      #expect(try files(root + "/volumes") == ["\(uuid.value).img", "\(uuid.value).json"])
      try store.deleteVolume(uuid)
      #expect(try files(root + "/volumes").isEmpty)
    }
  }

  @Test("A failed create leaves no temporary file")
  func failedCreateLeavesNothing() throws {
    try withFileStore { (store, root) throws in
      expectError(.notFound) {
        try store.createVolume(
          VolumeRecord(
            uuid: .random(), name: "v", sizeBytes: MiB, source: .snapshot(ObjectUUID.random()), created: created))
      }
      #expect(try files(root + "/volumes").isEmpty)
    }
  }

  @Test("A record whose source is not a UUID is corrupt, never a path to follow")
  func sourceNotUUID() throws {
    try withFileStore { store, root in
      let uuid = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: uuid, name: "v", sizeBytes: MiB, source: nil, created: created))
      let path = root + "/volumes/\(uuid.value).json"
      var text = try String(contentsOfFile: path, encoding: .utf8)
      text = text.replacingOccurrences(
        of: "\"name\"", with: "\"source\" : { \"volume\" : { \"_0\" : \"..\\/x\" } },\n  \"name\"")
      try Data(text.utf8).write(to: URL(fileURLWithPath: path))
      expectError(.internalError, mentioning: [path, "corrupt"]) { try store.volume(uuid) }
    }
  }

  @Test("A snapshot record written before snapshots had attributes reads as having none")
  func snapshotRecordWithoutAttributes() throws {
    try withFileStore { store, root in
      let source = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: source, name: "v", sizeBytes: MiB, created: created))
      let uuid = ObjectUUID.random()
      // Exactly what an older target wrote.
      let old = """
        {
          "created" : 1700000000000,
          "name" : "snap-old",
          "sizeBytes" : 1048576,
          "sourceVolume" : "\(source.value)",
          "uuid" : "\(uuid.value)"
        }
        """
      try Data(old.utf8).write(to: URL(fileURLWithPath: root + "/snapshots/\(uuid.value).json"))
      try Data(count: Int(MiB)).write(to: URL(fileURLWithPath: root + "/snapshots/\(uuid.value).img"))
      let expected = SnapshotRecord(
        uuid: uuid, name: "snap-old", sourceVolume: source, sizeBytes: MiB, created: created, attributes: [:])
      #expect(try store.snapshots() == [expected])
      let repairs = try store.reconcile()
      #expect(repairs.isEmpty, "\(repairs)")
      // Written again, the record carries the key.
      let current = SnapshotRecord(
        uuid: .random(), name: "snap-new", sourceVolume: source, sizeBytes: MiB, created: created,
        attributes: ["k": "v"])
      _ = try store.createSnapshot(current)
      let text = try String(contentsOfFile: root + "/snapshots/\(current.uuid.value).json", encoding: .utf8)
      #expect(text.contains("\"attributes\""))
      #expect(try Set(store.snapshots()) == [expected, current])
    }
  }

  @Test("Reconcile removes unfinished and uncommitted files and reports records without data")
  func reconcile() throws {
    try withFileStore { store, root in
      let kept = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: kept, name: "kept", sizeBytes: MiB, created: created))
      let keptSnapshot = ObjectUUID.random()
      _ = try store.createSnapshot(
        SnapshotRecord(uuid: keptSnapshot, name: "s", sourceVolume: kept, sizeBytes: MiB, created: created))
      try Device.write(pattern(512, seed: 3), at: 0, to: store.devicePath(of: kept))
      let dataless = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: dataless, name: "dataless", sizeBytes: MiB, created: created))
      try FileManager.default.removeItem(atPath: store.devicePath(of: dataless))

      let orphan = ObjectUUID.random().value
      let orphanSnapshot = ObjectUUID.random().value
      let debris = [
        root + "/volumes/.\(orphan).img.tmp",
        root + "/volumes/.\(kept.value).json.tmp",
        root + "/volumes/.\(orphan).img.deleting",
        root + "/snapshots/.\(orphan).img.tmp",
      ]
      let unexplained = [root + "/volumes/\(orphan).img", root + "/snapshots/\(orphanSnapshot).img"]
      for path in debris + unexplained {
        #expect(FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3])))
      }
      let foreign = root + "/volumes/.someone-elses-file"
      #expect(FileManager.default.createFile(atPath: foreign, contents: Data([4])))

      let repairs = try store.reconcile()
      #expect(Set(repairs.removedDebris) == Set(debris))
      #expect(repairs.missingData == [root + "/volumes/\(dataless.value).img"])
      for path in debris + unexplained { #expect(!FileManager.default.fileExists(atPath: path), "\(path)") }
      // Data nobody can explain is moved aside, never deleted.
      #expect(repairs.quarantined.map(\.originalPath).sorted() == unexplained.sorted())
      #expect(repairs.quarantined.first { $0.originalPath.contains("/volumes/") }?.volume?.value == orphan)
      #expect(repairs.quarantined.first { $0.originalPath.contains("/snapshots/") }?.volume == nil)
      for item in repairs.quarantined {
        #expect(FileManager.default.contents(atPath: item.movedTo) == Data([1, 2, 3]))
        #expect(item.movedTo.hasPrefix(root + "/quarantine/"))
      }
      #expect(FileManager.default.fileExists(atPath: foreign), "files the store did not make are left alone")
      #expect(try store.quarantinedVolumes().keys.map(\.value) == [orphan])

      // What was committed is untouched.
      #expect(try Device.read(512, at: 0, from: store.devicePath(of: kept)) == pattern(512, seed: 3))
      #expect(try store.snapshots().map(\.uuid) == [keptSnapshot])
      #expect(try Set(store.volumes().map(\.uuid)) == [kept, dataless])
      #expect(!store.hasData(dataless))

      let again = try store.reconcile()
      #expect(again.removedDebris.isEmpty)
      #expect(again.quarantined.isEmpty)
      #expect(again.missingData == repairs.missingData)
    }
  }

  @Test("Reconcile finishes a create whose record was written, and undoes a delete whose record was not removed")
  func reconcileRollsForwardAndBack() throws {
    try withFileStore { store, root in
      let building = ObjectUUID.random()
      let deleting = ObjectUUID.random()
      for uuid in [building, deleting] {
        _ = try store.createVolume(VolumeRecord(uuid: uuid, name: uuid.value, sizeBytes: MiB, created: created))
        try Device.write(pattern(512, seed: 9), at: 0, to: store.devicePath(of: uuid))
      }
      // As a crash leaves them: data still under its build name; data renamed for deletion.
      try FileManager.default.moveItem(
        atPath: store.devicePath(of: building), toPath: root + "/volumes/.\(building.value).img.tmp")
      try FileManager.default.moveItem(
        atPath: store.devicePath(of: deleting), toPath: root + "/volumes/.\(deleting.value).img.deleting")

      let repairs = try store.reconcile()
      #expect(repairs.completed.count == 2)
      #expect(repairs.removedDebris.isEmpty && repairs.quarantined.isEmpty && repairs.missingData.isEmpty)
      for uuid in [building, deleting] {
        #expect(try Device.read(512, at: 0, from: store.devicePath(of: uuid)) == pattern(512, seed: 9))
      }
    }
  }

  @Test("A corrupt record is moved aside with its data at reconcile; the other volumes stay")
  func reconcileQuarantinesCorruptRecord() throws {
    try withFileStore { store, root in
      let good = ObjectUUID.random()
      let bad = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: good, name: "good", sizeBytes: MiB, created: created))
      _ = try store.createVolume(VolumeRecord(uuid: bad, name: "bad", sizeBytes: MiB, created: created))
      try Device.write(pattern(512, seed: 4), at: 0, to: store.devicePath(of: bad))
      try Data("{not json".utf8).write(to: URL(fileURLWithPath: root + "/volumes/\(bad.value).json"))

      let repairs = try store.reconcile()
      #expect(repairs.quarantined.count == 2)
      #expect(repairs.quarantined.allSatisfy { $0.volume == bad && $0.reason.contains("corrupt") })
      #expect(try store.volumes().map(\.uuid) == [good])
      let data = try #require(repairs.quarantined.first { $0.movedTo.hasSuffix(".img") })
      #expect(try Device.read(512, at: 0, from: data.movedTo) == pattern(512, seed: 4))
    }
  }

  @Test("A store directory that does not exist is refused, not created")
  func missingRoot() throws {
    try withTemporaryDirectory { directory in
      expectError(.failedPrecondition, mentioning: [directory + "/absent", "not mounted"]) {
        try FileStore(root: directory + "/absent")
      }
      #expect(!FileManager.default.fileExists(atPath: directory + "/absent"))
    }
  }

  @Test("A store belongs to the target that first used it; another target's name is refused")
  func owner() throws {
    try withTemporaryDirectory { directory in
      let root = directory + "/store"
      try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: false)
      // A marker from before names is adopted by the first named target.
      let unnamed = try FileStore(root: root)
      #expect(unnamed.identity.target == nil)
      let adopted = try FileStore(root: root, target: "storage-1")
      #expect(adopted.identity.target == "storage-1")
      #expect(adopted.identity.uuid == unnamed.identity.uuid)
      #expect(try FileStore(root: root, target: "storage-1").identity == adopted.identity)
      expectError(.failedPrecondition, mentioning: ["belongs to target \"storage-1\"", "storage-2"]) {
        try FileStore(root: root, target: "storage-2")
      }
      // Unnamed (library and test use) opens any store and changes nothing.
      #expect(try FileStore(root: root).identity == adopted.identity)
    }
  }

  @Test("A new store writes its marker; reopening finds it and is no longer new")
  func marker() throws {
    try withTemporaryDirectory { directory in
      try FileManager.default.createDirectory(atPath: directory + "/store", withIntermediateDirectories: false)
      let first = try FileStore(root: directory + "/store")
      #expect(first.isNew)
      let again = try FileStore(root: directory + "/store")
      #expect(!again.isNew)
      #expect(again.identity.uuid == first.identity.uuid)
      try Data("garbage".utf8).write(to: URL(fileURLWithPath: directory + "/store/store.json"))
      expectError(.failedPrecondition, mentioning: ["store.json", "not an nvme-csi store marker"]) {
        try FileStore(root: directory + "/store")
      }
    }
  }

  @Test("Reconcile finishes an expansion whose data grew before its record")
  func reconcileFinishesExpansion() throws {
    try withFileStore { store, _ in
      let uuid = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: uuid, name: "v", sizeBytes: MiB, created: created))
      #expect(truncate(store.devicePath(of: uuid), off_t(3 * MiB)) == 0)
      _ = try store.reconcile()
      #expect(try store.volume(uuid)?.sizeBytes == 3 * MiB)
    }
  }

  @Test("Reconcile grows a new volume's data whose size a crash lost back to its record, keeping its name")
  func reconcileRestoresLostSize() throws {
    try withFileStore { store, root in
      let building = ObjectUUID.random()
      let placed = ObjectUUID.random()
      for uuid in [building, placed] {
        _ = try store.createVolume(VolumeRecord(uuid: uuid, name: uuid.value, sizeBytes: 2 * MiB, created: created))
        // As a crash before the data's first sync can leave it: the file, empty.
        #expect(truncate(store.devicePath(of: uuid), 0) == 0)
      }
      try FileManager.default.moveItem(
        atPath: store.devicePath(of: building), toPath: root + "/volumes/.\(building.value).img.tmp")

      let repairs = try store.reconcile()
      #expect(repairs.completed.count == 3)  // one rename, two sizes
      #expect(repairs.completed.filter { $0.contains("grown from 0 to its recorded 2097152 bytes") }.count == 2)
      #expect(repairs.removedDebris.isEmpty && repairs.quarantined.isEmpty && repairs.missingData.isEmpty)
      for uuid in [building, placed] {
        var st = stat()
        #expect(stat(store.devicePath(of: uuid), &st) == 0 && UInt64(st.st_size) == 2 * MiB)
        #expect(try store.volume(uuid)?.sizeBytes == 2 * MiB)
      }
      #expect(try store.reconcile().isEmpty)
    }
  }

  @Test("A corrupt record is an internal error naming the file")
  func corruptRecord() throws {
    try withFileStore { store, root in
      let uuid = ObjectUUID.random()
      _ = try store.createVolume(VolumeRecord(uuid: uuid, name: "v", sizeBytes: MiB, created: created))
      let path = root + "/volumes/\(uuid.value).json"
      try Data("{not json".utf8).write(to: URL(fileURLWithPath: path))
      expectError(.internalError, mentioning: [path]) { try store.volume(uuid) }
      expectError(.internalError, mentioning: [path]) { try store.volumes() }
    }
  }
}
