import Foundation
import NVMeCSICore
import SwiftProtobuf
import TargetProto

// The target API's wire format, both directions, in one place: `init(proto:)` reads a
// proto message into a domain value (throwing on malformed input), `.proto` writes one.
// The server reads requests and writes responses; the client does the reverse.

extension HostPort {
  public init(proto portal: Nvmecsi_Target_V1_Portal) throws(NVMeCSIError) {
    guard let port = UInt16(exactly: portal.port), portal.transport == "tcp" else {
      throw .internalError(
        "portal \(quoted(portal.address)) port \(portal.port) over \(quoted(portal.transport)) is not a TCP portal")
    }
    self.init(host: portal.address, port: port)
  }

  public var proto: Nvmecsi_Target_V1_Portal {
    .with {
      $0.transport = "tcp"
      $0.address = host
      $0.port = UInt32(port)
    }
  }
}

extension TargetInfo {
  public init(proto info: Nvmecsi_Target_V1_GetInfoResponse) throws(NVMeCSIError) {
    var portals: [HostPort] = []
    for portal in info.portals { portals.append(try HostPort(proto: portal)) }
    self.init(
      storeKind: info.storeKind, exporterKind: info.exporterKind, totalBytes: info.totalBytes,
      availableBytes: info.availableBytes, sharesBlocks: info.reflink, portals: portals, version: info.version,
      provisionedBytes: info.provisionedBytes, overcommitRatio: info.overcommitRatio,
      placesAsHome: info.placesAsHome)
  }

  public var proto: Nvmecsi_Target_V1_GetInfoResponse {
    .with {
      $0.storeKind = storeKind
      $0.exporterKind = exporterKind
      $0.totalBytes = totalBytes
      $0.availableBytes = availableBytes
      $0.provisionedBytes = provisionedBytes
      $0.overcommitRatio = overcommitRatio
      $0.reflink = sharesBlocks
      $0.portals = portals.map(\.proto)
      $0.version = version
      $0.placesAsHome = placesAsHome
    }
  }
}

extension VolumeSource {
  /// From the wire's `source` oneof, read through its two fields ("" when not set).
  init?(snapshotUUID: String, volumeUUID: String) throws(NVMeCSIError) {
    if !snapshotUUID.isEmpty {
      self = .snapshot(try ObjectUUID(snapshotUUID))
    } else if !volumeUUID.isEmpty {
      self = .volume(try ObjectUUID(volumeUUID))
    } else {
      return nil
    }
  }
}

extension TargetVolume {
  public init(proto volume: Nvmecsi_Target_V1_Volume) throws(NVMeCSIError) {
    var publications: [Publication] = []
    for p in volume.publications {
      publications.append(Publication(nodeID: try NodeID(parsing: p.nodeID), readonly: p.readonly))
    }
    let record = VolumeRecord(
      uuid: try ObjectUUID(volume.uuid), name: volume.name, sizeBytes: volume.sizeBytes,
      source: try VolumeSource(snapshotUUID: volume.sourceSnapshotUuid, volumeUUID: volume.sourceVolumeUuid),
      created: volume.created.date, publications: publications,
      attributes: volume.attributes, sharing: volume.sharing.isEmpty ? nil : try VolumeSharing(text: volume.sharing))
    self.init(record: record, problem: volume.abnormalReason.isEmpty ? nil : volume.abnormalReason)
  }

  public var proto: Nvmecsi_Target_V1_Volume {
    .with {
      $0.uuid = record.uuid.value
      $0.name = record.name
      $0.sizeBytes = record.sizeBytes
      switch record.source {
      case .snapshot(let s)?: $0.sourceSnapshotUuid = s.value
      case .volume(let v)?: $0.sourceVolumeUuid = v.value
      case nil: break
      }
      $0.created = Google_Protobuf_Timestamp(date: record.created)
      $0.publications = record.publications.map { p in
        .with {
          $0.nodeID = p.nodeID.description
          $0.hostNqn = p.hostNQN.value
          $0.readonly = p.readonly
        }
      }
      $0.subsystemNqn = SubsystemNaming.nqn(for: record.uuid)
      $0.namespaceUuid = SubsystemNaming.namespaceUUID(for: record.uuid).value
      $0.abnormalReason = problem ?? ""
      $0.attributes = record.attributes
      $0.sharing = record.sharing?.rawValue ?? ""
    }
  }
}

extension SnapshotRecord {
  public init(proto snapshot: Nvmecsi_Target_V1_Snapshot) throws(NVMeCSIError) {
    self.init(
      uuid: try ObjectUUID(snapshot.uuid), name: snapshot.name, sourceVolume: try ObjectUUID(snapshot.sourceVolumeUuid),
      sizeBytes: snapshot.sizeBytes, created: snapshot.created.date, attributes: snapshot.attributes)
  }

  public var proto: Nvmecsi_Target_V1_Snapshot {
    .with {
      $0.uuid = uuid.value
      $0.name = name
      $0.sourceVolumeUuid = sourceVolume.value
      $0.sizeBytes = sizeBytes
      $0.created = Google_Protobuf_Timestamp(date: created)
      $0.readyToUse = true
      $0.attributes = attributes
    }
  }
}

extension NewVolume {
  public init(proto request: Nvmecsi_Target_V1_CreateVolumeRequest) throws(NVMeCSIError) {
    self.init(
      name: request.name, sizeBytes: request.sizeBytes,
      source: try VolumeSource(snapshotUUID: request.sourceSnapshotUuid, volumeUUID: request.sourceVolumeUuid),
      attributes: request.attributes,
      // An older controller sends none: such volumes are recorded as before sharing was.
      sharing: request.sharing.isEmpty ? nil : try VolumeSharing(text: request.sharing),
      uuid: request.uuid.isEmpty ? nil : try ObjectUUID(request.uuid))
  }

  public var proto: Nvmecsi_Target_V1_CreateVolumeRequest {
    .with {
      $0.name = name
      $0.sizeBytes = sizeBytes
      switch source {
      case .snapshot(let s)?: $0.sourceSnapshotUuid = s.value
      case .volume(let v)?: $0.sourceVolumeUuid = v.value
      case nil: break
      }
      $0.attributes = attributes
      $0.sharing = sharing?.rawValue ?? ""
      $0.uuid = uuid?.value ?? ""
    }
  }
}

extension VolumeSharing {
  /// "single-node" or "multi-node"; anything else (empty included) is `invalidArgument`.
  public init(text: String) throws(NVMeCSIError) {
    guard let sharing = VolumeSharing(rawValue: text) else {
      throw .invalidArgument("sharing \(quoted(text)) is not \"single-node\" or \"multi-node\"")
    }
    self = sharing
  }
}

extension VolumeExport {
  public init(proto response: Nvmecsi_Target_V1_PublishVolumeResponse) throws(NVMeCSIError) {
    var portals: [HostPort] = []
    for portal in response.portals { portals.append(try HostPort(proto: portal)) }
    self.init(
      subsystemNQN: response.subsystemNqn, namespaceUUID: try ObjectUUID(response.namespaceUuid), portals: portals,
      attributes: response.attributes)
  }

  public var proto: Nvmecsi_Target_V1_PublishVolumeResponse {
    .with {
      $0.subsystemNqn = subsystemNQN
      $0.namespaceUuid = namespaceUUID.value
      $0.portals = portals.map(\.proto)
      $0.attributes = attributes
    }
  }
}

extension SnapshotFilter {
  /// Empty fields match everything.
  public init(proto request: Nvmecsi_Target_V1_ListSnapshotsRequest) throws(NVMeCSIError) {
    self.init(
      name: request.name.isEmpty ? nil : request.name,
      uuid: request.uuid.isEmpty ? nil : try ObjectUUID(request.uuid),
      sourceVolume: request.sourceVolumeUuid.isEmpty ? nil : try ObjectUUID(request.sourceVolumeUuid))
  }

  public var proto: Nvmecsi_Target_V1_ListSnapshotsRequest {
    .with {
      $0.name = name ?? ""
      $0.uuid = uuid?.value ?? ""
      $0.sourceVolumeUuid = sourceVolume?.value ?? ""
    }
  }
}

extension Nvmecsi_Target_V1_CreateVolumeResponse {
  public init(_ result: (volume: TargetVolume, existed: Bool)) {
    self.init()
    volume = result.volume.proto
    existed = result.existed
  }

  public init(_ result: HomeCreation) {
    switch result {
    case .volume(let volume, let existed): self.init((volume, existed))
    case .placedOn(let target):
      self.init()
      placedOn = target.value
    }
  }

  public var homeCreation: HomeCreation {
    get throws(NVMeCSIError) {
      if !placedOn.isEmpty { return .placedOn(try TargetName(placedOn)) }
      return .volume(try TargetVolume(proto: volume), existed: existed)
    }
  }
}

extension Nvmecsi_Target_V1_CreateSnapshotResponse {
  public init(_ result: (snapshot: SnapshotRecord, existed: Bool)) {
    self.init()
    snapshot = result.snapshot.proto
    existed = result.existed
  }
}

extension MDSuperblock {
  /// What a target answered, checked as any other input: UUIDs, a known role.
  public init(proto superblock: Nvmecsi_Target_V1_MDSuperblock) throws(NVMeCSIError) {
    let role: Role
    switch superblock.role {
    case .active: role = .active(slot: Int(superblock.slot))
    case .spare: role = .spare
    case .faulty: role = .faulty
    case .journal: role = .journal
    case .unspecified, .UNRECOGNIZED:
      throw .invalidArgument("md superblock role \(superblock.role) is not active, spare, faulty or journal")
    }
    self.init(
      arrayUUID: try ObjectUUID(superblock.arrayUuid), deviceUUID: try ObjectUUID(superblock.deviceUuid),
      events: superblock.events, legCount: Int(superblock.legCount), level: Int(superblock.level),
      dataOffsetBytes: superblock.dataOffsetBytes, role: role, isRecovering: superblock.recovering)
  }

  public var proto: Nvmecsi_Target_V1_MDSuperblock {
    .with {
      $0.arrayUuid = arrayUUID.value
      $0.deviceUuid = deviceUUID.value
      $0.events = events
      $0.legCount = UInt32(clamping: legCount)
      $0.level = Int32(clamping: level)
      $0.dataOffsetBytes = dataOffsetBytes
      switch role {
      case .active(let slot):
        $0.role = .active
        $0.slot = UInt32(clamping: slot)
      case .spare: $0.role = .spare
      case .faulty: $0.role = .faulty
      case .journal: $0.role = .journal
      }
      $0.recovering = isRecovering
    }
  }
}

extension Nvmecsi_Target_V1_ReadMDSuperblockResponse {
  public init(_ superblock: MDSuperblock?) {
    self.init()
    if let superblock {
      present = true
      self.superblock = superblock.proto
    }
  }

  /// Nil when the target found no superblock.
  public func superblockIfPresent() throws(NVMeCSIError) -> MDSuperblock? {
    present ? try MDSuperblock(proto: superblock) : nil
  }
}

extension LegMap {
  /// A map off the wire: its encoded block, exactly `blockBytes`, decoded and checked;
  /// anything but a valid map is `invalidArgument`.
  public init(wire block: Data) throws(NVMeCSIError) {
    guard block.count == Self.blockBytes else {
      throw .invalidArgument("a leg map block is \(Self.blockBytes) bytes, not \(block.count)")
    }
    switch Self.content(of: Array(block)) {
    case .map(let map): self = map
    case .empty: throw .invalidArgument("the leg map block is all zeros, not a leg map")
    case .damaged(let reason): throw .invalidArgument("the leg map block is damaged: \(reason)")
    case .foreign: throw .invalidArgument("the leg map block does not hold a leg map")
    }
  }
}

extension Nvmecsi_Target_V1_ReadLegMapResponse {
  public init(_ map: LegMap?) throws(NVMeCSIError) {
    self.init()
    if let map { block = Data(try map.block()) }
  }

  /// Nil when the target found no map of the volume's set.
  public func legMapIfPresent() throws(NVMeCSIError) -> LegMap? {
    block.isEmpty ? nil : try LegMap(wire: block)
  }
}

extension Nvmecsi_Target_V1_WriteLegMapRequest {
  /// `invalidArgument` when the map breaks a bound (it could not be read back).
  public init(_ map: LegMap, to volume: ObjectUUID) throws(NVMeCSIError) {
    self.init()
    uuid = volume.value
    block = Data(try map.block())
  }

  public func legMap() throws(NVMeCSIError) -> LegMap { try LegMap(wire: block) }
}

extension Placement {
  public init(proto: Nvmecsi_Target_V1_Placement) throws(NVMeCSIError) {
    self.init(name: proto.name, target: try TargetName(proto.target))
  }

  public var proto: Nvmecsi_Target_V1_Placement {
    .with {
      $0.name = name
      $0.target = target.value
    }
  }
}
