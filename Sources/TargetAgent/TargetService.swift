import Foundation
import GRPCCore
import NVMeCSICore
import NVMetExporter
import SwiftProtobuf
import TargetProto
import VolumeStore

/// The target API over gRPC: decode, call the agent, encode. Errors are the agent's
/// `NVMeCSIError`s; CSIServer turns them into statuses.
public struct TargetService: Nvmecsi_Target_V1_Target.SimpleServiceProtocol {
  let agent: TargetAgent
  let version: String

  public init(agent: TargetAgent, version: String) {
    self.agent = agent
    self.version = version
  }

  public func getInfo(request: Nvmecsi_Target_V1_GetInfoRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_GetInfoResponse
  {
    let capacity = try agent.store.capacity()
    return .with {
      $0.storeKind = agent.store.kind
      $0.exporterKind = agent.exporter.kind
      $0.totalBytes = capacity.totalBytes
      $0.availableBytes = capacity.availableBytes
      $0.reflink = agent.store.sharesBlocks
      $0.portals = agent.exporter.portals.map(Self.wire)
      $0.version = version
    }
  }

  public func createVolume(request: Nvmecsi_Target_V1_CreateVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_CreateVolumeResponse
  {
    let source: VolumeSource?
    switch request.source {
    case .sourceSnapshotUuid(let s)?: source = .snapshot(try ObjectUUID(s).value)
    case .sourceVolumeUuid(let v)?: source = .volume(try ObjectUUID(v).value)
    case nil: source = nil
    }
    let result = try await agent.createVolume(
      .init(name: request.name, sizeBytes: request.sizeBytes, source: source, attributes: request.attributes))
    return .with {
      $0.volume = wire(result.volume)
      $0.existed = result.existed
    }
  }

  public func deleteVolume(request: Nvmecsi_Target_V1_DeleteVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_DeleteVolumeResponse
  {
    try await agent.deleteVolume(try ObjectUUID(request.uuid))
    return .init()
  }

  public func getVolume(request: Nvmecsi_Target_V1_GetVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_GetVolumeResponse
  {
    let record = try agent.volume(try ObjectUUID(request.uuid))
    return .with { $0.volume = wire(record) }
  }

  public func listVolumes(request: Nvmecsi_Target_V1_ListVolumesRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_ListVolumesResponse
  {
    let records = try agent.volumes(named: request.name.isEmpty ? nil : request.name)
    return .with { $0.volumes = records.map(wire) }
  }

  public func expandVolume(request: Nvmecsi_Target_V1_ExpandVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_ExpandVolumeResponse
  {
    let record = try await agent.expandVolume(try ObjectUUID(request.uuid), to: request.sizeBytes)
    return .with { $0.volume = wire(record) }
  }

  public func publishVolume(request: Nvmecsi_Target_V1_PublishVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_PublishVolumeResponse
  {
    let node = try NodeID(parsing: request.nodeID)
    guard node.hostNQN.value == request.hostNqn else {
      throw NVMeCSIError.invalidArgument("host NQN \(quoted(request.hostNqn)) does not match node \(node)")
    }
    let spec = try await agent.publish(
      .init(volume: try ObjectUUID(request.uuid), node: node, readonly: request.readonly, exclusive: request.exclusive))
    return .with {
      $0.subsystemNqn = spec.subsystemNQN
      $0.namespaceUuid = SubsystemNaming.namespaceUUID(for: spec.volume)
      $0.portals = agent.exporter.portals.map(Self.wire)
    }
  }

  public func unpublishVolume(request: Nvmecsi_Target_V1_UnpublishVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_UnpublishVolumeResponse
  {
    let node = request.nodeID.isEmpty ? nil : try NodeID(parsing: request.nodeID)
    try await agent.unpublish(try ObjectUUID(request.uuid), node: node)
    return .init()
  }

  public func createSnapshot(request: Nvmecsi_Target_V1_CreateSnapshotRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_CreateSnapshotResponse
  {
    let result = try await agent.createSnapshot(name: request.name, of: try ObjectUUID(request.sourceVolumeUuid))
    return .with {
      $0.snapshot = Self.wire(result.snapshot)
      $0.existed = result.existed
    }
  }

  public func deleteSnapshot(request: Nvmecsi_Target_V1_DeleteSnapshotRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_DeleteSnapshotResponse
  {
    try await agent.deleteSnapshot(try ObjectUUID(request.uuid))
    return .init()
  }

  public func listSnapshots(request: Nvmecsi_Target_V1_ListSnapshotsRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_ListSnapshotsResponse
  {
    let matching = try agent.snapshots().filter {
      (request.name.isEmpty || $0.name == request.name) && (request.uuid.isEmpty || $0.uuid == request.uuid)
        && (request.sourceVolumeUuid.isEmpty || $0.sourceVolume == request.sourceVolumeUuid)
    }
    return .with { $0.snapshots = matching.map(Self.wire) }
  }

  // MARK: wire formats

  static func wire(_ portal: Portal) -> Nvmecsi_Target_V1_Portal {
    .with {
      $0.transport = "tcp"
      $0.address = portal.address
      $0.port = UInt32(portal.port)
    }
  }

  func wire(_ record: VolumeRecord) -> Nvmecsi_Target_V1_Volume {
    .with {
      $0.uuid = record.uuid
      $0.name = record.name
      $0.sizeBytes = record.sizeBytes
      switch record.source {
      case .snapshot(let s)?: $0.sourceSnapshotUuid = s
      case .volume(let v)?: $0.sourceVolumeUuid = v
      case nil: break
      }
      $0.created = Google_Protobuf_Timestamp(date: record.created)
      $0.publications = record.publications.map { p in
        .with {
          $0.nodeID = p.nodeID
          $0.hostNqn = p.hostNQN
          $0.readonly = p.readonly
        }
      }
      if let uuid = try? ObjectUUID(record.uuid) {
        $0.subsystemNqn = SubsystemNaming.nqn(for: uuid)
        $0.namespaceUuid = SubsystemNaming.namespaceUUID(for: uuid)
      }
      $0.abnormalReason = agent.problem(with: record) ?? ""
      $0.attributes = record.attributes
    }
  }

  static func wire(_ record: SnapshotRecord) -> Nvmecsi_Target_V1_Snapshot {
    .with {
      $0.uuid = record.uuid
      $0.name = record.name
      $0.sourceVolumeUuid = record.sourceVolume
      $0.sizeBytes = record.sizeBytes
      $0.created = Google_Protobuf_Timestamp(date: record.created)
      $0.readyToUse = true
    }
  }
}
