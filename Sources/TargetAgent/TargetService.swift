import GRPCCore
import NVMeCSICore
import TargetContract
import TargetProto

/// The target API over gRPC: read the request off the wire, call the target, write
/// the answer. It serves any `TargetAPI` (the agent in production). Errors are
/// `NVMeCSIError`s; CSIServer turns them into statuses.
public struct TargetService: Nvmecsi_Target_V1_Target.SimpleServiceProtocol {
  let target: any TargetAPI

  public init(target: any TargetAPI) { self.target = target }

  /// The calls that change nothing: all a read-only identity may make.
  public static let readMethods: Set<MethodDescriptor> = [
    Nvmecsi_Target_V1_Target.Method.GetInfo.descriptor, Nvmecsi_Target_V1_Target.Method.GetVolume.descriptor,
    Nvmecsi_Target_V1_Target.Method.ListVolumes.descriptor, Nvmecsi_Target_V1_Target.Method.ListSnapshots.descriptor,
    Nvmecsi_Target_V1_Target.Method.GetPlacement.descriptor,
    Nvmecsi_Target_V1_Target.Method.ReadMDSuperblock.descriptor,
    Nvmecsi_Target_V1_Target.Method.ReadLegMap.descriptor,
  ]

  public func getInfo(request: Nvmecsi_Target_V1_GetInfoRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_GetInfoResponse
  {
    try await target.info().proto
  }

  public func createVolume(request: Nvmecsi_Target_V1_CreateVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_CreateVolumeResponse
  {
    let volume = try NewVolume(proto: request)
    guard !request.recordPlacementAs.isEmpty else { return .init(try await target.createVolume(volume)) }
    return .init(try await target.createVolume(volume, asHome: try TargetName(request.recordPlacementAs)))
  }

  public func deleteVolume(request: Nvmecsi_Target_V1_DeleteVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_DeleteVolumeResponse
  {
    let uuid = try ObjectUUID(request.uuid)
    if request.releasePlacementAs.isEmpty {
      try await target.deleteVolume(uuid)
    } else {
      try await target.deleteVolume(uuid, asHome: try TargetName(request.releasePlacementAs))
    }
    return .init()
  }

  public func getVolume(request: Nvmecsi_Target_V1_GetVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_GetVolumeResponse
  {
    let volume = try await target.volume(try ObjectUUID(request.uuid))
    return .with { $0.volume = volume.proto }
  }

  public func listVolumes(request: Nvmecsi_Target_V1_ListVolumesRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_ListVolumesResponse
  {
    let limit = ListPaging.limit(request.maxEntries)
    if !request.name.isEmpty {
      let volumes = try await target.volumes(named: request.name)
      let page = try ListPaging.page(
        volumes.map(\.proto), uuid: \.uuid, maxEntries: request.maxEntries, startingAfter: request.startingAfter)
      return .with {
        $0.volumes = page.items
        $0.nextStartingAfter = page.next
      }
    }
    let after = request.startingAfter.isEmpty ? nil : try ObjectUUID(request.startingAfter)
    let page = try await target.volumes(after: after, limit: limit)
    let capped = ListPaging.capped(page.volumes.map(\.proto), more: page.more, uuid: \.uuid)
    return .with {
      $0.volumes = capped.items
      $0.nextStartingAfter = capped.next
    }
  }

  public func expandVolume(request: Nvmecsi_Target_V1_ExpandVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_ExpandVolumeResponse
  {
    let volume = try await target.expandVolume(try ObjectUUID(request.uuid), to: request.sizeBytes)
    return .with { $0.volume = volume.proto }
  }

  public func updateVolumeAttributes(
    request: Nvmecsi_Target_V1_UpdateVolumeAttributesRequest, context: ServerContext
  ) async throws -> Nvmecsi_Target_V1_UpdateVolumeAttributesResponse {
    let volume = try await target.updateVolumeAttributes(try ObjectUUID(request.uuid), setting: request.set)
    return .with { $0.volume = volume.proto }
  }

  public func publishVolume(request: Nvmecsi_Target_V1_PublishVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_PublishVolumeResponse
  {
    let node = try NodeID(parsing: request.nodeID)
    guard node.hostNQN.value == request.hostNqn else {
      throw NVMeCSIError.invalidArgument("host NQN \(quoted(request.hostNqn)) does not match node \(node)")
    }
    let export = try await target.publishVolume(
      try ObjectUUID(request.uuid), to: node, readonly: request.readonly, exclusive: request.exclusive)
    return export.proto
  }

  public func unpublishVolume(request: Nvmecsi_Target_V1_UnpublishVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_UnpublishVolumeResponse
  {
    // "Every node" must be asked for: an empty node ID is a mistake, not a wildcard.
    let node: NodeID?
    switch (request.nodeID.isEmpty, request.allNodes) {
    case (false, false): node = try NodeID(parsing: request.nodeID)
    case (true, true): node = nil
    case (true, false): throw NVMeCSIError.invalidArgument("node_id is required (or all_nodes)")
    case (false, true): throw NVMeCSIError.invalidArgument("node_id and all_nodes exclude each other")
    }
    try await target.unpublishVolume(try ObjectUUID(request.uuid), from: node)
    return .init()
  }

  public func createSnapshot(request: Nvmecsi_Target_V1_CreateSnapshotRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_CreateSnapshotResponse
  {
    .init(
      try await target.createSnapshot(
        named: request.name, of: try ObjectUUID(request.sourceVolumeUuid), attributes: request.attributes))
  }

  public func deleteSnapshot(request: Nvmecsi_Target_V1_DeleteSnapshotRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_DeleteSnapshotResponse
  {
    try await target.deleteSnapshot(try ObjectUUID(request.uuid))
    return .init()
  }

  public func listSnapshots(request: Nvmecsi_Target_V1_ListSnapshotsRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_ListSnapshotsResponse
  {
    let filter = try SnapshotFilter(proto: request)
    if filter != SnapshotFilter() {
      // A filter matches a handful (by UUID, name or source volume): paged here.
      let snapshots = try await target.snapshots(matching: filter)
      let page = try ListPaging.page(
        snapshots.map(\.proto), uuid: \.uuid, maxEntries: request.maxEntries, startingAfter: request.startingAfter)
      return .with {
        $0.snapshots = page.items
        $0.nextStartingAfter = page.next
      }
    }
    // All of them: a page of the target's index, costing what it returns.
    let after = request.startingAfter.isEmpty ? nil : try ObjectUUID(request.startingAfter)
    let page = try await target.snapshots(after: after, limit: ListPaging.limit(request.maxEntries))
    let capped = ListPaging.capped(page.snapshots.map(\.proto), more: page.more, uuid: \.uuid)
    return .with {
      $0.snapshots = capped.items
      $0.nextStartingAfter = capped.next
    }
  }

  public func readMDSuperblock(request: Nvmecsi_Target_V1_ReadMDSuperblockRequest, context: ServerContext)
    async throws -> Nvmecsi_Target_V1_ReadMDSuperblockResponse
  {
    .init(try await target.mdSuperblock(of: try ObjectUUID(request.uuid)))
  }

  public func readLegMap(request: Nvmecsi_Target_V1_ReadLegMapRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_ReadLegMapResponse
  {
    try .init(try await target.legMap(of: try ObjectUUID(request.uuid)))
  }

  public func writeLegMap(request: Nvmecsi_Target_V1_WriteLegMapRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_WriteLegMapResponse
  {
    let volume = try ObjectUUID(request.uuid)
    try await target.writeLegMap(try request.legMap(), to: volume)
    return .init()
  }

  public func getPlacement(request: Nvmecsi_Target_V1_GetPlacementRequest, context: ServerContext) async throws
    -> Nvmecsi_Target_V1_GetPlacementResponse
  {
    let placement = try await target.placement(of: request.name)
    return .with {
      $0.target = placement.target?.value ?? ""
      $0.volumeHere = placement.volumeHere
    }
  }

  public func reservePlacements(request: Nvmecsi_Target_V1_ReservePlacementsRequest, context: ServerContext)
    async throws -> Nvmecsi_Target_V1_ReservePlacementsResponse
  {
    guard request.placements.count <= Placements.maximumBatch else {
      throw NVMeCSIError.invalidArgument(
        "\(request.placements.count) placements in one call: at most \(Placements.maximumBatch)")
    }
    let placements = try request.placements.map { (p) throws(NVMeCSIError) in try Placement(proto: p) }
    let recorded = try await target.reservePlacements(placements)
    return .with { $0.placements = recorded.map(\.proto) }
  }

  public func releasePlacement(request: Nvmecsi_Target_V1_ReleasePlacementRequest, context: ServerContext)
    async throws -> Nvmecsi_Target_V1_ReleasePlacementResponse
  {
    try await target.releasePlacement(of: request.name, on: try TargetName(request.target))
    return .init()
  }
}
