import Foundation

// What a storage target keeps about each volume and snapshot, next to its data. The
// store persists these (JSON files, LVM tags); the target API carries them to the
// controller. Typed all the way: a record that decodes is well-formed.

/// One host allowed to reach a volume.
public struct Publication: Codable, Hashable, Sendable {
  public var nodeID: NodeID
  public var readonly: Bool

  public init(nodeID: NodeID, readonly: Bool) {
    self.nodeID = nodeID
    self.readonly = readonly
  }

  public var hostNQN: HostNQN { nodeID.hostNQN }

  // Stored as {"nodeID", "hostNQN", "readonly"}: the host NQN is written out so a
  // person reading the record sees which host has access.
  enum CodingKeys: String, CodingKey { case nodeID, hostNQN, readonly }

  public init(from decoder: any Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    self.nodeID = try container.decode(NodeID.self, forKey: .nodeID)
    self.readonly = try container.decode(Bool.self, forKey: .readonly)
  }

  public func encode(to encoder: any Encoder) throws {
    var container = encoder.container(keyedBy: CodingKeys.self)
    try container.encode(nodeID, forKey: .nodeID)
    try container.encode(hostNQN.value, forKey: .hostNQN)
    try container.encode(readonly, forKey: .readonly)
  }
}

/// Where a volume's first contents came from.
public enum VolumeSource: Codable, Hashable, Sendable {
  case snapshot(ObjectUUID)
  case volume(ObjectUUID)
}

/// What the store remembers about a volume, next to its data.
public struct VolumeRecord: Codable, Hashable, Sendable {
  public var uuid: ObjectUUID
  public var name: String
  public var sizeBytes: UInt64
  public var source: VolumeSource?
  public var created: Date
  public var publications: [Publication]
  /// Opaque to the store: what the controller keeps with the volume.
  public var attributes: [String: String]
  /// How many hosts may have it at once, decided at create; nil in records written
  /// before it was recorded.
  public var sharing: VolumeSharing?

  public init(
    uuid: ObjectUUID, name: String, sizeBytes: UInt64, source: VolumeSource? = nil,
    created: Date = Date(), publications: [Publication] = [], attributes: [String: String] = [:],
    sharing: VolumeSharing? = nil
  ) {
    self.uuid = uuid
    self.name = name
    self.sizeBytes = sizeBytes
    self.source = source
    self.created = created
    self.publications = publications
    self.attributes = attributes
    self.sharing = sharing
  }
}

/// How many hosts may have a volume at once: the target enforces it at publish.
public enum VolumeSharing: String, Codable, Hashable, Sendable {
  /// One host at a time (the CSI single-node access modes).
  case singleNode = "single-node"
  /// Several hosts (the multi-node access modes).
  case multiNode = "multi-node"
}

public struct SnapshotRecord: Codable, Hashable, Sendable {
  public var uuid: ObjectUUID
  public var name: String
  public var sourceVolume: ObjectUUID
  public var sizeBytes: UInt64
  public var created: Date
  /// Opaque to the store: what the controller keeps with the snapshot.
  public var attributes: [String: String]

  public init(
    uuid: ObjectUUID, name: String, sourceVolume: ObjectUUID, sizeBytes: UInt64, created: Date = Date(),
    attributes: [String: String] = [:]
  ) {
    self.uuid = uuid
    self.name = name
    self.sourceVolume = sourceVolume
    self.sizeBytes = sizeBytes
    self.created = created
    self.attributes = attributes
  }

  enum CodingKeys: String, CodingKey { case uuid, name, sourceVolume, sizeBytes, created, attributes }

  // Records written before snapshots had attributes have no such key: they have none.
  public init(from decoder: any Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    self.uuid = try container.decode(ObjectUUID.self, forKey: .uuid)
    self.name = try container.decode(String.self, forKey: .name)
    self.sourceVolume = try container.decode(ObjectUUID.self, forKey: .sourceVolume)
    self.sizeBytes = try container.decode(UInt64.self, forKey: .sizeBytes)
    self.created = try container.decode(Date.self, forKey: .created)
    self.attributes = try container.decodeIfPresent([String: String].self, forKey: .attributes) ?? [:]
  }
}
