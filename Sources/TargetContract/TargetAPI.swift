import NVMeCSICore

// The seam between the controller and a storage target, in domain types. The target
// agent implements it; the target's gRPC service serves any implementation of it; the
// controller calls it through `RemoteTargetAPI` (gRPC) or, in tests and in-process
// setups, directly on an agent (`NamedTarget`). The proto types stay at the wire.

/// What a target says about itself.
public struct TargetInfo: Sendable, Equatable {
  public var storeKind: String
  /// "nvmet" (kernel configfs) or "simulated" (a plain directory).
  public var exporterKind: String
  public var totalBytes: UInt64
  public var availableBytes: UInt64
  /// Snapshots and clones share blocks with their source (else full copies).
  public var sharesBlocks: Bool
  public var portals: [HostPort]
  public var version: String
  /// The sum of the volumes' sizes.
  public var provisionedBytes: UInt64
  /// How far `provisionedBytes` may exceed `totalBytes` (1: not at all).
  public var overcommitRatio: Double
  /// `createVolume(_:asHome:)` records the placement and `deleteVolume(_:asHome:)`
  /// releases it (false from targets older than them, which ignore the home).
  public var placesAsHome: Bool

  public init(
    storeKind: String, exporterKind: String, totalBytes: UInt64, availableBytes: UInt64, sharesBlocks: Bool,
    portals: [HostPort], version: String, provisionedBytes: UInt64 = 0, overcommitRatio: Double = 1,
    placesAsHome: Bool = false
  ) {
    self.storeKind = storeKind
    self.exporterKind = exporterKind
    self.totalBytes = totalBytes
    self.availableBytes = availableBytes
    self.sharesBlocks = sharesBlocks
    self.portals = portals
    self.version = version
    self.provisionedBytes = provisionedBytes
    self.overcommitRatio = overcommitRatio
    self.placesAsHome = placesAsHome
  }

  /// The most a new volume may take: what the overcommit ratio still allows, and
  /// never more than is physically free.
  public var allocatableBytes: UInt64 {
    let allowed = Capacity.provisioningLimit(total: totalBytes, overcommitRatio: overcommitRatio)
    return min(availableBytes, allowed > provisionedBytes ? allowed - provisionedBytes : 0)
  }
}

/// A volume as its target reports it: the record and, when something is wrong, what.
public struct TargetVolume: Sendable, Equatable {
  public var record: VolumeRecord
  /// Nil when the volume is healthy (data present, exported as recorded).
  public var problem: String?

  public init(record: VolumeRecord, problem: String?) {
    self.record = record
    self.problem = problem
  }

  public var uuid: ObjectUUID { record.uuid }
}

/// A CreateVolume request to a target.
public struct NewVolume: Sendable, Equatable {
  public var name: String
  public var sizeBytes: UInt64
  public var source: VolumeSource?
  /// Opaque to the target: what the controller keeps with the volume.
  public var attributes: [String: String]
  /// Recorded with the volume; publish enforces it, whatever a caller says later. Nil
  /// only in requests from controllers older than sharing.
  public var sharing: VolumeSharing?
  /// The UUID the volume must have (a replicated volume's leg); nil: the target picks.
  public var uuid: ObjectUUID?

  public init(
    name: String, sizeBytes: UInt64, source: VolumeSource?, attributes: [String: String] = [:],
    sharing: VolumeSharing? = .singleNode, uuid: ObjectUUID? = nil
  ) {
    self.name = name
    self.sizeBytes = sizeBytes
    self.source = source
    self.attributes = attributes
    self.sharing = sharing
    self.uuid = uuid
  }
}

/// How a node reaches a published volume.
public struct VolumeExport: Sendable, Equatable {
  public var subsystemNQN: String
  public var namespaceUUID: ObjectUUID
  public var portals: [HostPort]
  /// The volume's attributes (what the controller keeps with it), so a publish needs
  /// no second call to learn them. Empty from targets older than this field.
  public var attributes: [String: String]

  public init(
    subsystemNQN: String, namespaceUUID: ObjectUUID, portals: [HostPort], attributes: [String: String] = [:]
  ) {
    self.subsystemNQN = subsystemNQN
    self.namespaceUUID = namespaceUUID
    self.portals = portals
    self.attributes = attributes
  }
}

/// Which snapshots a listing returns; every set field must match.
public struct SnapshotFilter: Sendable, Equatable {
  public var name: String?
  public var uuid: ObjectUUID?
  public var sourceVolume: ObjectUUID?

  public init(name: String? = nil, uuid: ObjectUUID? = nil, sourceVolume: ObjectUUID? = nil) {
    self.name = name
    self.uuid = uuid
    self.sourceVolume = sourceVolume
  }

  public func matches(_ snapshot: SnapshotRecord) -> Bool {
    (name == nil || snapshot.name == name) && (uuid == nil || snapshot.uuid == uuid)
      && (sourceVolume == nil || snapshot.sourceVolume == sourceVolume)
  }
}

/// One storage target's API.
///
/// Contract (every implementation; `TargetAPIContractTests` checks the in-process and
/// the gRPC ones alike): every mutation is idempotent and safe to repeat after a crash
/// or a lost reply; the target runs one call per volume (or name) at a time and
/// answers `aborted` to a second one meanwhile; calls on different volumes run
/// concurrently. Errors are `NVMeCSIError`s in the CSI code
/// table (notFound, alreadyExists, failedPrecondition, resourceExhausted, …); an
/// implementation reached over a network names the target in the message and answers
/// `unavailable` when the target cannot be reached.
public protocol TargetAPI: Sendable {
  func info() async throws -> TargetInfo

  /// Creates a volume, or returns the one that already has this name (`existed`). With
  /// a requested UUID, a volume of that name with another UUID, or of that UUID with
  /// another name, is `alreadyExists`.
  func createVolume(_ request: NewVolume) async throws -> (volume: TargetVolume, existed: Bool)
  /// `createVolume` on the name's home, which the controller calls `home`: unless a
  /// volume of that name is here already, first records the name as placed here (as
  /// `reservePlacements` would), so a retry or another controller finds the choice.
  /// Creates nothing when the name is recorded as placed on another target, and
  /// answers that target. One call instead of a placement lookup, a reservation and a
  /// create, when the home is where the volume goes anyway.
  func createVolume(_ request: NewVolume, asHome home: TargetName) async throws -> HomeCreation
  /// Removes a volume and its export; an unknown volume is success.
  /// `failedPrecondition` while it is published to any host.
  func deleteVolume(_ uuid: ObjectUUID) async throws
  /// `deleteVolume` on the home of the volume's name, which the controller calls
  /// `home`: once the volume is gone, the name's placement is released if it names
  /// this target, under the name's lock. One call instead of a delete and a release.
  func deleteVolume(_ uuid: ObjectUUID, asHome home: TargetName) async throws
  /// `notFound` when the volume does not exist.
  func volume(_ uuid: ObjectUUID) async throws -> TargetVolume
  /// Every volume, or only the one named `name`.
  func volumes(named name: String?) async throws -> [TargetVolume]
  /// At most `limit` volumes in UUID order after `startingAfter` (nil: from the
  /// start), and whether more follow. Costs what it returns, not what the target holds.
  func volumes(after startingAfter: ObjectUUID?, limit: Int) async throws -> (volumes: [TargetVolume], more: Bool)
  /// Grows a volume (never shrinks) and makes the exporter re-read its size.
  func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) async throws -> TargetVolume
  /// Sets the given attributes of a volume, keeping the others; `invalidArgument` when
  /// the result would exceed the attribute limits, `notFound` for an unknown volume.
  func updateVolumeAttributes(_ uuid: ObjectUUID, setting changes: [String: String]) async throws -> TargetVolume

  /// Allows the node's host on the volume. A single-node volume (its sharing, recorded
  /// at create) is `failedPrecondition` while another node has it, whatever the caller
  /// says; `exclusive` can only make a publish stricter. A host NQN that another node
  /// ID already uses on this target is `failedPrecondition` too.
  func publishVolume(_ uuid: ObjectUUID, to node: NodeID, readonly: Bool, exclusive: Bool) async throws
    -> VolumeExport
  /// Revokes the node's access (every node's when nil); a node without access is success.
  func unpublishVolume(_ uuid: ObjectUUID, from node: NodeID?) async throws

  /// Takes a point-in-time copy of a volume, recording `attributes` with it, or returns
  /// the snapshot that already has this name as it is, its recorded attributes included
  /// (`existed`). Attributes past the volume attribute limits are `invalidArgument`.
  func createSnapshot(named name: String, of volume: ObjectUUID, attributes: [String: String]) async throws
    -> (snapshot: SnapshotRecord, existed: Bool)
  /// Removes a snapshot; an unknown one is success.
  func deleteSnapshot(_ uuid: ObjectUUID) async throws
  /// Every snapshot matching `filter` (one by UUID or name, a source volume's, or all).
  func snapshots(matching filter: SnapshotFilter) async throws -> [SnapshotRecord]
  /// At most `limit` snapshots in UUID order after `startingAfter` (nil: from the
  /// start), and whether more follow. Costs what it returns, not what the target holds.
  func snapshots(after startingAfter: ObjectUUID?, limit: Int) async throws
    -> (snapshots: [SnapshotRecord], more: Bool)

  /// The md RAID superblock (metadata 1.2) at 4 KiB into the volume's data, read past
  /// the page cache; nil when there is none; `notFound` for an unknown volume. A
  /// superblock that is there but unreadable (torn, corrupt) is `failedPrecondition`.
  func mdSuperblock(of volume: ObjectUUID) async throws -> MDSuperblock?
  /// The leg map in the volume's map block (`LegMap.blockOffset`), read past the page
  /// cache; nil when the block is empty (all zeros) or holds another volume set's map
  /// (a copied leg). `notFound` for an unknown volume; `failedPrecondition` when the
  /// block is damaged or holds something that is not a leg map, and for a single-copy
  /// volume (no `replica/index` attribute), which has no map block.
  func legMap(of volume: ObjectUUID) async throws -> LegMap?
  /// Writes `map` into the volume's map block, durably (O_DIRECT + fsync) — only on a
  /// leg of a replicated volume (its record has the `replica/index` attribute), never on
  /// a single-copy volume, whose data that block is. Compare-and-set on the version:
  /// succeeds when the block is empty, holds another set's map, a damaged map of ours
  /// (our magic, bad checksum: a torn write), or this set's map at a lower version; the
  /// same map again is success (idempotent). A block holding this set's map at the same
  /// or a higher version with other content is `failedPrecondition` (naming the version
  /// it holds: another repair won); anything else in the block (`.foreign`) is
  /// `failedPrecondition` and nothing is written. `notFound` for an unknown volume,
  /// `invalidArgument` for a map that breaks LegMap's bounds or whose `set` is not the
  /// set this leg belongs to.
  func writeLegMap(_ map: LegMap, to volume: ObjectUUID) async throws

  /// What this target records for a volume name as its home, and whether a volume of
  /// that name is here.
  func placement(of name: String) async throws -> NamePlacement
  /// Records where each name lives unless a record exists; answers the recorded
  /// targets in order (an earlier record wins). At most `Placements.maximumBatch`.
  func reservePlacements(_ placements: [Placement]) async throws -> [Placement]
  /// Forgets a name's placement if it names `target`; anything else is success.
  func releasePlacement(of name: String, on target: TargetName) async throws
}

extension TargetAPI {
  /// A snapshot without attributes.
  public func createSnapshot(named name: String, of volume: ObjectUUID) async throws
    -> (snapshot: SnapshotRecord, existed: Bool)
  {
    try await createSnapshot(named: name, of: volume, attributes: [:])
  }
}

/// A volume name and the target that holds it.
public struct Placement: Hashable, Sendable {
  public var name: String
  public var target: TargetName

  public init(name: String, target: TargetName) {
    self.name = name
    self.target = target
  }
}

/// What `createVolume(_:asHome:)` did.
public enum HomeCreation: Sendable, Equatable {
  /// Created here, or found here already (`existed`).
  case volume(TargetVolume, existed: Bool)
  /// Nothing done: the name is recorded as placed on this target.
  case placedOn(TargetName)
}

/// What a name's home target knows of it.
public struct NamePlacement: Hashable, Sendable {
  /// Where the name was placed, if recorded here.
  public var target: TargetName?
  /// A volume of that name is on this target.
  public var volumeHere: Bool

  public init(target: TargetName?, volumeHere: Bool) {
    self.target = target
    self.volumeHere = volumeHere
  }
}

public enum Placements {
  /// Most placements in one `reservePlacements` call.
  public static let maximumBatch = 1000
}

extension NVMeCSIError {
  /// The same error, its message naming the target it came from.
  public func from(target: TargetName) -> NVMeCSIError {
    NVMeCSIError(kind, "target \(target): \(message)", cause: cause)
  }
}
