import Foundation
import NVMeCSICore

public struct StoreCapacity: Sendable, Equatable {
  public var totalBytes: UInt64
  public var availableBytes: UInt64
}

/// What `reconcile()` found and repaired at startup.
public struct StoreRepairs: Sendable, Equatable {
  /// Hidden files of interrupted steps, removed (they never held committed data).
  public var removedDebris: [String] = []
  /// Interrupted steps finished or undone from their hidden files.
  public var completed: [String] = []
  /// Records whose data is gone: those volumes are reported abnormal.
  public var missingData: [String] = []
  /// What could not be explained (data without a record, a corrupt record): moved aside,
  /// never deleted, for a person to look at.
  public var quarantined: [Quarantined] = []
  /// Every volume record as reconciled, when the store read them all to reconcile (the
  /// file store does): what `volumes()` would answer now, without reading them again.
  public var volumes: [VolumeRecord]?
  public init() {}

  /// Nothing was repaired, finished, found missing or moved aside.
  public var isEmpty: Bool { removedDebris.isEmpty && completed.isEmpty && missingData.isEmpty && quarantined.isEmpty }
}

/// A file moved aside by `reconcile()`.
public struct Quarantined: Sendable, Equatable {
  /// The volume it belonged to (nil for a snapshot's files).
  public var volume: ObjectUUID?
  public var originalPath: String
  public var movedTo: String
  public var reason: String

  public init(volume: ObjectUUID?, originalPath: String, movedTo: String, reason: String) {
    self.volume = volume
    self.originalPath = originalPath
    self.movedTo = movedTo
    self.reason = reason
  }
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
  /// Whether opening it found nothing at all (no marker, no data): a store used for the
  /// first time, or a file system that is not mounted where the store should be.
  var isNew: Bool { get }

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

  /// Volumes whose files sit in quarantine (moved aside by this or an earlier
  /// `reconcile()`), with where: they stay reported until a person resolves them.
  func quarantinedVolumes() throws(NVMeCSIError) -> [ObjectUUID: String]

  /// Finishes or removes what interrupted operations left (only what they are known to
  /// leave), moves aside what it cannot explain, and reports records whose data is gone.
  /// Never deletes data it cannot account for.
  func reconcile() throws(NVMeCSIError) -> StoreRepairs
}
