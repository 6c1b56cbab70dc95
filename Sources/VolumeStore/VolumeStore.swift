import Foundation
import NVMeCSICore

/// One host allowed to reach a volume.
public struct Publication: Codable, Hashable, Sendable {
  public var nodeID: String
  public var hostNQN: String
  public var readonly: Bool

  public init(nodeID: String, hostNQN: String, readonly: Bool) {
    self.nodeID = nodeID
    self.hostNQN = hostNQN
    self.readonly = readonly
  }
}

/// Where a volume's first contents came from.
public enum VolumeSource: Codable, Hashable, Sendable {
  case snapshot(ObjectUUIDString)
  case volume(ObjectUUIDString)
}
public typealias ObjectUUIDString = String

/// What the store remembers about a volume, next to its data.
public struct VolumeRecord: Codable, Hashable, Sendable {
  public var uuid: ObjectUUIDString
  public var name: String
  public var sizeBytes: UInt64
  public var source: VolumeSource?
  public var created: Date
  public var publications: [Publication]
  /// Opaque to the store: what the controller keeps with the volume.
  public var attributes: [String: String]

  public init(
    uuid: ObjectUUID, name: String, sizeBytes: UInt64, source: VolumeSource? = nil,
    created: Date = Date(), publications: [Publication] = [], attributes: [String: String] = [:]
  ) {
    self.uuid = uuid.value
    self.name = name
    self.sizeBytes = sizeBytes
    self.source = source
    self.created = created
    self.publications = publications
    self.attributes = attributes
  }
}

public struct SnapshotRecord: Codable, Hashable, Sendable {
  public var uuid: ObjectUUIDString
  public var name: String
  public var sourceVolume: ObjectUUIDString
  public var sizeBytes: UInt64
  public var created: Date

  public init(uuid: ObjectUUID, name: String, sourceVolume: ObjectUUID, sizeBytes: UInt64, created: Date = Date()) {
    self.uuid = uuid.value
    self.name = name
    self.sourceVolume = sourceVolume.value
    self.sizeBytes = sizeBytes
    self.created = created
  }
}

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
