import Foundation
import NVMeCSICore

public struct StoreCapacity: Sendable, Equatable {
  public var totalBytes: UInt64
  public var availableBytes: UInt64
}

/// What `reconcile()` found and repaired at startup.
public struct StoreRepairs: Sendable, Equatable {
  public var removedDebris: [String] = []
  public var missingData: [String] = []
  public init() {}
}

/// Keeps volumes and snapshots, each with a record, crash-safely.
///
/// Contract (every implementation passes `VolumeStoreContract` in the tests):
/// - Objects are keyed by UUID; a record exists exactly when the object is complete.
///   A crash at any point leaves the old state or the new one; debris of an
///   unfinished step is invisible and removed by `reconcile()`.
/// - Every mutation is idempotent: creating an existing UUID returns the existing
///   record, deleting a missing one succeeds.
/// - Callers serialize operations on one object (the target agent locks per volume);
///   operations on different objects may run concurrently.
public protocol VolumeStore: Sendable {
  /// "file", later "lvm".
  var kind: String { get }
  /// Whether snapshots and clones share blocks with their source (else full copies).
  var sharesBlocks: Bool { get }

  func capacity() throws(NVMeCSIError) -> StoreCapacity

  func volumes() throws(NVMeCSIError) -> [VolumeRecord]
  func volume(_ uuid: ObjectUUID) throws(NVMeCSIError) -> VolumeRecord?
  /// Creates the volume's data (empty, or a copy of `record.source`, grown to the
  /// record's size) and then its record.
  func createVolume(_ record: VolumeRecord) throws(NVMeCSIError) -> VolumeRecord
  /// Replaces a volume's record (publications, attributes); the data is untouched.
  func updateVolume(_ record: VolumeRecord) throws(NVMeCSIError)
  /// Grows the volume's data to `sizeBytes` (never shrinks) and records it.
  func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) throws(NVMeCSIError) -> VolumeRecord
  func deleteVolume(_ uuid: ObjectUUID) throws(NVMeCSIError)
  /// The block device or file an exporter serves for this volume.
  func devicePath(of uuid: ObjectUUID) -> String
  /// Whether the volume's data is present (a record without data is reported abnormal).
  func hasData(_ uuid: ObjectUUID) -> Bool

  func snapshots() throws(NVMeCSIError) -> [SnapshotRecord]
  func createSnapshot(_ record: SnapshotRecord) throws(NVMeCSIError) -> SnapshotRecord
  func deleteSnapshot(_ uuid: ObjectUUID) throws(NVMeCSIError)

  /// Removes debris left by interrupted operations; reports records whose data is gone.
  func reconcile() throws(NVMeCSIError) -> StoreRepairs
}
