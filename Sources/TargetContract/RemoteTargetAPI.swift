import GRPCCore
import NVMeCSICore
import TargetProto

/// The target API over gRPC, on any client transport (HTTP/2 over TCP or a unix
/// socket in production; transport setup lives in `CSIServer`).
public struct RemoteTargetAPI<Transport: ClientTransport>: TargetAPI {
  let name: TargetName
  let client: Nvmecsi_Target_V1_Target.Client<Transport>
  let deadline: CallDeadline

  /// - Parameter eventLoop: where the client's connections run (`makeClient`); its
  ///   calls and their timers run there too (nil: NIO's shared threads).
  public init(
    name: TargetName, client: GRPCClient<Transport>, timeout: Duration = .seconds(30), eventLoop: RPCEventLoop? = nil
  ) {
    self.name = name
    self.client = .init(wrapping: client)
    deadline = CallDeadline(timeout: timeout, eventLoop: eventLoop)
  }

  /// Runs one call: bounded, its errors in the domain and naming the target.
  private func call<T: Sendable>(_ body: @escaping @Sendable (CallOptions) async throws -> T) async throws -> T {
    do { return try await deadline.run { try await body(.defaults) } } catch let error as RPCError {
      throw Self.domainError(error, target: name)
    } catch let error as NVMeCSIError {
      // Only the wire decoding throws these: the target answered something malformed.
      throw NVMeCSIError.internalError("target \(name) answered malformed data: \(error.message)")
    }
  }

  /// The target speaks the same code table as CSI; keep the code, name the target.
  static func domainError(_ error: RPCError, target: TargetName) -> NVMeCSIError {
    let kind: NVMeCSIError.Kind
    switch error.code {
    case .invalidArgument: kind = .invalidArgument
    case .notFound: kind = .notFound
    case .alreadyExists: kind = .alreadyExists
    case .failedPrecondition: kind = .failedPrecondition
    case .resourceExhausted: kind = .resourceExhausted
    case .outOfRange: kind = .outOfRange
    case .aborted: kind = .aborted
    case .unimplemented: kind = .unimplemented
    case .unavailable, .deadlineExceeded, .cancelled:
      return .unavailable("target \(target) is unreachable (\(error.code)): \(error.message)")
    case .permissionDenied, .unauthenticated:
      // A configuration fault (certificate names, flags), not the caller's: retried
      // until an operator fixes it, and the message says what to fix.
      return .unavailable(
        "target \(target) refused the controller (\(error.code)): \(error.message);"
          + " check the controller's certificate and the target's --controller-identity")
    default: kind = .internalError
    }
    return NVMeCSIError(kind, error.message).from(target: target)
  }

  public func info() async throws -> TargetInfo {
    try await call { try TargetInfo(proto: try await client.getInfo(.init(), options: $0)) }
  }

  public func createVolume(_ request: NewVolume) async throws -> (volume: TargetVolume, existed: Bool) {
    try await call {
      let response = try await client.createVolume(request.proto, options: $0)
      return (try TargetVolume(proto: response.volume), response.existed)
    }
  }

  public func createVolume(_ request: NewVolume, asHome home: TargetName) async throws -> HomeCreation {
    var message = request.proto
    message.recordPlacementAs = home.value
    return try await call { [message] in try await client.createVolume(message, options: $0).homeCreation }
  }

  public func deleteVolume(_ uuid: ObjectUUID) async throws {
    _ = try await call { try await client.deleteVolume(.with { $0.uuid = uuid.value }, options: $0) }
  }

  public func deleteVolume(_ uuid: ObjectUUID, asHome home: TargetName) async throws {
    let message = Nvmecsi_Target_V1_DeleteVolumeRequest.with {
      $0.uuid = uuid.value
      $0.releasePlacementAs = home.value
    }
    _ = try await call { try await client.deleteVolume(message, options: $0) }
  }

  public func volume(_ uuid: ObjectUUID) async throws -> TargetVolume {
    try await call {
      try TargetVolume(proto: try await client.getVolume(.with { $0.uuid = uuid.value }, options: $0).volume)
    }
  }

  public func volumes(named name: String?) async throws -> [TargetVolume] {
    try await call { options in
      try await ListPaging.all { after in
        let request = Nvmecsi_Target_V1_ListVolumesRequest.with {
          $0.name = name ?? ""
          $0.startingAfter = after
        }
        let page = try await client.listVolumes(request, options: options)
        return (try page.volumes.map { (v) throws(NVMeCSIError) in try TargetVolume(proto: v) }, page.nextStartingAfter)
      }
    }
  }

  public func volumes(after startingAfter: ObjectUUID?, limit: Int) async throws
    -> (volumes: [TargetVolume], more: Bool)
  {
    try await call { options in
      let request = Nvmecsi_Target_V1_ListVolumesRequest.with {
        $0.startingAfter = startingAfter?.value ?? ""
        $0.maxEntries = UInt32(clamping: max(limit, 1))
      }
      let page = try await client.listVolumes(request, options: options)
      let volumes = try page.volumes.map { (v) throws(NVMeCSIError) in try TargetVolume(proto: v) }
      return (Array(volumes.prefix(max(limit, 0))), !page.nextStartingAfter.isEmpty || volumes.count > limit)
    }
  }

  public func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) async throws -> TargetVolume {
    try await call {
      let request = Nvmecsi_Target_V1_ExpandVolumeRequest.with {
        $0.uuid = uuid.value
        $0.sizeBytes = sizeBytes
      }
      return try TargetVolume(proto: try await client.expandVolume(request, options: $0).volume)
    }
  }

  public func updateVolumeAttributes(_ uuid: ObjectUUID, setting changes: [String: String]) async throws
    -> TargetVolume
  {
    try await call {
      let request = Nvmecsi_Target_V1_UpdateVolumeAttributesRequest.with {
        $0.uuid = uuid.value
        $0.set = changes
      }
      return try TargetVolume(proto: try await client.updateVolumeAttributes(request, options: $0).volume)
    }
  }

  public func publishVolume(_ uuid: ObjectUUID, to node: NodeID, readonly: Bool, exclusive: Bool) async throws
    -> VolumeExport
  {
    try await call {
      let request = Nvmecsi_Target_V1_PublishVolumeRequest.with {
        $0.uuid = uuid.value
        $0.nodeID = node.description
        $0.hostNqn = node.hostNQN.value
        $0.readonly = readonly
        $0.exclusive = exclusive
      }
      return try VolumeExport(proto: try await client.publishVolume(request, options: $0))
    }
  }

  public func unpublishVolume(_ uuid: ObjectUUID, from node: NodeID?) async throws {
    let request = Nvmecsi_Target_V1_UnpublishVolumeRequest.with {
      $0.uuid = uuid.value
      $0.nodeID = node?.description ?? ""
      $0.allNodes = node == nil
    }
    _ = try await call { try await client.unpublishVolume(request, options: $0) }
  }

  public func createSnapshot(named name: String, of volume: ObjectUUID, attributes: [String: String]) async throws
    -> (snapshot: SnapshotRecord, existed: Bool)
  {
    let request = Nvmecsi_Target_V1_CreateSnapshotRequest.with {
      $0.name = name
      $0.sourceVolumeUuid = volume.value
      $0.attributes = attributes
    }
    return try await call {
      let response = try await client.createSnapshot(request, options: $0)
      return (try SnapshotRecord(proto: response.snapshot), response.existed)
    }
  }

  public func deleteSnapshot(_ uuid: ObjectUUID) async throws {
    _ = try await call { try await client.deleteSnapshot(.with { $0.uuid = uuid.value }, options: $0) }
  }

  public func snapshots(matching filter: SnapshotFilter) async throws -> [SnapshotRecord] {
    try await call { options in
      try await ListPaging.all { after in
        var request = filter.proto
        request.startingAfter = after
        let page = try await client.listSnapshots(request, options: options)
        return (
          try page.snapshots.map { (s) throws(NVMeCSIError) in try SnapshotRecord(proto: s) }, page.nextStartingAfter
        )
      }
    }
  }

  public func snapshots(after startingAfter: ObjectUUID?, limit: Int) async throws
    -> (snapshots: [SnapshotRecord], more: Bool)
  {
    try await call { options in
      // No filter: the target pages its snapshot index (older targets page the full
      // list; the answer is the same).
      let request = Nvmecsi_Target_V1_ListSnapshotsRequest.with {
        $0.startingAfter = startingAfter?.value ?? ""
        $0.maxEntries = UInt32(clamping: max(limit, 1))
      }
      let page = try await client.listSnapshots(request, options: options)
      let snapshots = try page.snapshots.map { (s) throws(NVMeCSIError) in try SnapshotRecord(proto: s) }
      // The caller's next page starts after the last UUID: a page out of order would
      // skip or repeat snapshots.
      var previous = startingAfter
      for snapshot in snapshots {
        if let previous, snapshot.uuid <= previous {
          throw NVMeCSIError.internalError(
            "the target's snapshot page after \(quoted(startingAfter?.value ?? "")) is not in UUID order"
              + " (\(snapshot.uuid) after \(previous))")
        }
        previous = snapshot.uuid
      }
      return (Array(snapshots.prefix(max(limit, 0))), !page.nextStartingAfter.isEmpty || snapshots.count > limit)
    }
  }

  public func mdSuperblock(of volume: ObjectUUID) async throws -> MDSuperblock? {
    try await call {
      try await client.readMDSuperblock(.with { $0.uuid = volume.value }, options: $0).superblockIfPresent()
    }
  }

  public func legMap(of volume: ObjectUUID) async throws -> LegMap? {
    try await call { try await client.readLegMap(.with { $0.uuid = volume.value }, options: $0).legMapIfPresent() }
  }

  public func writeLegMap(_ map: LegMap, to volume: ObjectUUID) async throws {
    // Encoded here: a map out of bounds is the caller's invalidArgument, not the target's answer.
    let request = try Nvmecsi_Target_V1_WriteLegMapRequest(map, to: volume)
    try await call { _ = try await client.writeLegMap(request, options: $0) }
  }

  public func placement(of name: String) async throws -> NamePlacement {
    try await call {
      let response = try await client.getPlacement(.with { $0.name = name }, options: $0)
      return NamePlacement(
        target: response.target.isEmpty ? nil : try TargetName(response.target), volumeHere: response.volumeHere)
    }
  }

  public func reservePlacements(_ placements: [Placement]) async throws -> [Placement] {
    try await call {
      let response = try await client.reservePlacements(.with { $0.placements = placements.map(\.proto) }, options: $0)
      guard response.placements.count == placements.count else {
        throw NVMeCSIError.internalError(
          "\(placements.count) placements reserved, \(response.placements.count) answered")
      }
      return try response.placements.map { (p) throws(NVMeCSIError) in try Placement(proto: p) }
    }
  }

  public func releasePlacement(of name: String, on target: TargetName) async throws {
    let request = Nvmecsi_Target_V1_ReleasePlacementRequest.with {
      $0.name = name
      $0.target = target.value
    }
    _ = try await call { try await client.releasePlacement(request, options: $0) }
  }
}
