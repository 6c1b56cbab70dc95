import Foundation
import NVMeCSICore
import Synchronization
import TestSupport
import Testing
import VolumeStore

/// The record cache the target puts in front of its store answers what the disk holds:
/// after each mutation, and after a mutation that failed (whether or not it reached the
/// disk). (It also passes the whole `VolumeStore` contract: see `makeStores()`.)
@Suite("RecordCachingStore")
struct RecordCachingStoreTests {
  func record(name: String = "pvc-1") -> VolumeRecord {
    VolumeRecord(uuid: .random(), name: name, sizeBytes: 4 * MiB, created: created)
  }

  @Test("After create, update, expand and delete, it answers what a store opened afresh reads from disk")
  func followsMutations() throws {
    try withTemporaryDirectory { directory in
      let store = try cached(FileStore(root: directory))
      let onDisk = { try FileStore(root: directory) }
      var volume = try store.createVolume(record())
      #expect(try store.volume(volume.uuid) == onDisk().volume(volume.uuid))
      volume.attributes = ["fsType": "ext4"]
      try store.updateVolume(volume)
      #expect(try store.volume(volume.uuid)?.attributes == ["fsType": "ext4"])
      #expect(try store.volume(volume.uuid) == onDisk().volume(volume.uuid))
      let grown = try store.expandVolume(volume.uuid, to: 8 * MiB)
      #expect(try store.volume(volume.uuid) == grown)
      #expect(try onDisk().volume(volume.uuid)?.sizeBytes == 8 * MiB)
      let other = try store.createVolume(record(name: "pvc-2"))
      try store.deleteVolume(volume.uuid)
      #expect(try store.volume(volume.uuid) == nil)
      #expect(try store.volumes() == [other])
      #expect(try onDisk().volumes() == [other])
    }
  }

  @Test("An update that failed is answered as the disk holds it: written or not")
  func failedUpdate() throws {
    try withTemporaryDirectory { directory in
      let failing = InstrumentedStore(try FileStore(root: directory))
      let store = try cached(failing)
      let volume = try store.createVolume(record())
      var published = volume
      published.attributes = ["fsType": "xfs"]

      failing.mode.withLock { $0 = .beforeWriting }
      #expect(throws: NVMeCSIError.self) { try store.updateVolume(published) }
      #expect(try store.volume(volume.uuid) == volume)

      failing.mode.withLock { $0 = .afterWriting }
      #expect(throws: NVMeCSIError.self) { try store.updateVolume(published) }
      #expect(try store.volume(volume.uuid) == published)
      #expect(try FileStore(root: directory).volume(volume.uuid) == published)
    }
  }

  @Test("Reconciling fills it with the records as reconciled: a start reads each record once")
  func reconcileFillsIt() throws {
    try withTemporaryDirectory { directory in
      let files = try FileStore(root: directory)
      let volume = try files.createVolume(record())
      let other = try files.createVolume(record(name: "pvc-2"))
      // An expansion cut off after the data grew: reconciling finishes it.
      #expect(truncate(files.devicePath(of: volume.uuid), off_t(8 * MiB)) == 0)
      let instrumented = InstrumentedStore(try FileStore(root: directory))
      let store = RecordCachingStore(instrumented)
      _ = try store.reconcile()
      var grown = volume
      grown.sizeBytes = 8 * MiB
      #expect(try store.volumes() == [grown, other].sorted { $0.uuid < $1.uuid })
      #expect(try store.volume(volume.uuid) == grown)
      #expect(instrumented.fullReads == 0)
      #expect(try FileStore(root: directory).volume(volume.uuid) == grown)
    }
  }
}

/// A store whose `updateVolume` fails, before or after its write reached the disk (as
/// when the directory's fsync fails after the rename), and which counts its full reads.
final class InstrumentedStore: VolumeStore {
  enum Mode { case succeed, beforeWriting, afterWriting }
  let mode = Mutex(Mode.succeed)
  private let reads = Mutex(0)
  /// `volumes()` calls so far.
  var fullReads: Int { reads.withLock { $0 } }
  private let base: any VolumeStore
  init(_ base: any VolumeStore) { self.base = base }

  func updateVolume(_ record: VolumeRecord) throws(NVMeCSIError) {
    switch mode.withLock({ $0 }) {
    case .succeed: try base.updateVolume(record)
    case .beforeWriting: throw .internalError("injected: nothing written")
    case .afterWriting:
      try base.updateVolume(record)
      throw .internalError("injected: written, then failed")
    }
  }

  var kind: String { base.kind }
  var sharesBlocks: Bool { base.sharesBlocks }
  var isNew: Bool { base.isNew }
  func capacity() throws(NVMeCSIError) -> StoreCapacity { try base.capacity() }
  func volumes() throws(NVMeCSIError) -> [VolumeRecord] {
    reads.withLock { $0 += 1 }
    return try base.volumes()
  }
  func volume(_ uuid: ObjectUUID) throws(NVMeCSIError) -> VolumeRecord? { try base.volume(uuid) }
  func createVolume(_ record: VolumeRecord) throws(NVMeCSIError) -> VolumeRecord { try base.createVolume(record) }
  func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) throws(NVMeCSIError) -> VolumeRecord {
    try base.expandVolume(uuid, to: sizeBytes)
  }
  func deleteVolume(_ uuid: ObjectUUID) throws(NVMeCSIError) { try base.deleteVolume(uuid) }
  func devicePath(of uuid: ObjectUUID) -> String { base.devicePath(of: uuid) }
  func hasData(_ uuid: ObjectUUID) -> Bool { base.hasData(uuid) }
  func snapshots() throws(NVMeCSIError) -> [SnapshotRecord] { try base.snapshots() }
  func createSnapshot(_ record: SnapshotRecord) throws(NVMeCSIError) -> SnapshotRecord {
    try base.createSnapshot(record)
  }
  func deleteSnapshot(_ uuid: ObjectUUID) throws(NVMeCSIError) { try base.deleteSnapshot(uuid) }
  func quarantinedVolumes() throws(NVMeCSIError) -> [ObjectUUID: String] { try base.quarantinedVolumes() }
  func reconcile() throws(NVMeCSIError) -> StoreRepairs { try base.reconcile() }
}
