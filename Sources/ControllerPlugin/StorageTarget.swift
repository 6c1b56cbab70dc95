import GRPCCore
import GRPCNIOTransportHTTP2
import NVMeCSICore
import TargetProto

/// One storage target as the controller sees it: its name, where its volumes are
/// reachable from, and its API.
public struct StorageTarget: Sendable {
  public let name: TargetName
  /// Topology segments of the nodes that can reach this target (empty: every node).
  public let topology: [String: String]
  let api: any TargetAPI

  public init(name: TargetName, topology: [String: String], api: any TargetAPI) {
    self.name = name
    self.topology = topology
    self.api = api
  }

  /// Whether a node in `segments` can reach this target: every segment this target
  /// is constrained to must match.
  func isAccessible(from segments: [String: String]) -> Bool {
    topology.allSatisfy { key, value in segments[key] == nil || segments[key] == value }
      && segments.allSatisfy { key, value in topology[key] == nil || topology[key] == value }
  }
}

/// The target API as the controller uses it. Errors are `NVMeCSIError`s whose message
/// names the target. The real implementation is `RemoteTargetAPI` (gRPC); tests run
/// it against a real `nvme-csi target` process.
public protocol TargetAPI: Sendable {
  func getInfo() async throws -> Nvmecsi_Target_V1_GetInfoResponse
  func createVolume(_ request: Nvmecsi_Target_V1_CreateVolumeRequest) async throws -> Nvmecsi_Target_V1_CreateVolumeResponse
  func deleteVolume(uuid: String) async throws
  func getVolume(uuid: String) async throws -> Nvmecsi_Target_V1_Volume
  func listVolumes(name: String?) async throws -> [Nvmecsi_Target_V1_Volume]
  func expandVolume(uuid: String, sizeBytes: UInt64) async throws -> Nvmecsi_Target_V1_Volume
  func publishVolume(_ request: Nvmecsi_Target_V1_PublishVolumeRequest) async throws -> Nvmecsi_Target_V1_PublishVolumeResponse
  func unpublishVolume(uuid: String, nodeID: String) async throws
  func createSnapshot(name: String, sourceVolumeUUID: String) async throws -> Nvmecsi_Target_V1_CreateSnapshotResponse
  func deleteSnapshot(uuid: String) async throws
  func listSnapshots(_ filter: Nvmecsi_Target_V1_ListSnapshotsRequest) async throws -> [Nvmecsi_Target_V1_Snapshot]
}

/// The target API over gRPC. Transport setup lives in `CSIServer` (one place, so mTLS
/// can be added there).
public struct RemoteTargetAPI: TargetAPI {
  let name: TargetName
  let client: Nvmecsi_Target_V1_Target.Client<HTTP2ClientTransport.Posix>
  /// Every call is bounded: a hung target must not hang the sidecars.
  let timeout: Duration

  public init(name: TargetName, client: GRPCClient<HTTP2ClientTransport.Posix>, timeout: Duration = .seconds(30)) {
    self.name = name
    self.client = .init(wrapping: client)
    self.timeout = timeout
  }

  private func call<T: Sendable>(_ body: (CallOptions) async throws -> T) async throws -> T {
    var options = CallOptions.defaults
    options.timeout = timeout
    do { return try await body(options) } catch let error as RPCError {
      throw Self.domainError(error, target: name)
    }
  }

  /// The target speaks the same code table as CSI; keep the code, name the target.
  static func domainError(_ error: RPCError, target: TargetName) -> NVMeCSIError {
    let message = "target \(target): \(error.message)"
    switch error.code {
    case .invalidArgument: return .invalidArgument(message)
    case .notFound: return .notFound(message)
    case .alreadyExists: return .alreadyExists(message)
    case .failedPrecondition: return .failedPrecondition(message)
    case .resourceExhausted: return .resourceExhausted(message)
    case .outOfRange: return .outOfRange(message)
    case .aborted: return .aborted(message)
    case .unimplemented: return .unimplemented(message)
    case .unavailable, .deadlineExceeded, .cancelled:
      return .unavailable("target \(target) is unreachable (\(error.code)): \(error.message)")
    default: return .internalError(message)
    }
  }

  public func getInfo() async throws -> Nvmecsi_Target_V1_GetInfoResponse {
    try await call { try await client.getInfo(.init(), options: $0) }
  }

  public func createVolume(_ request: Nvmecsi_Target_V1_CreateVolumeRequest) async throws
    -> Nvmecsi_Target_V1_CreateVolumeResponse
  {
    try await call { try await client.createVolume(request, options: $0) }
  }

  public func deleteVolume(uuid: String) async throws {
    _ = try await call { try await client.deleteVolume(.with { $0.uuid = uuid }, options: $0) }
  }

  public func getVolume(uuid: String) async throws -> Nvmecsi_Target_V1_Volume {
    try await call { try await client.getVolume(.with { $0.uuid = uuid }, options: $0) }.volume
  }

  public func listVolumes(name: String?) async throws -> [Nvmecsi_Target_V1_Volume] {
    try await call { try await client.listVolumes(.with { $0.name = name ?? "" }, options: $0) }.volumes
  }

  public func expandVolume(uuid: String, sizeBytes: UInt64) async throws -> Nvmecsi_Target_V1_Volume {
    try await call {
      try await client.expandVolume(.with { $0.uuid = uuid; $0.sizeBytes = sizeBytes }, options: $0)
    }.volume
  }

  public func publishVolume(_ request: Nvmecsi_Target_V1_PublishVolumeRequest) async throws
    -> Nvmecsi_Target_V1_PublishVolumeResponse
  {
    try await call { try await client.publishVolume(request, options: $0) }
  }

  public func unpublishVolume(uuid: String, nodeID: String) async throws {
    _ = try await call {
      try await client.unpublishVolume(.with { $0.uuid = uuid; $0.nodeID = nodeID }, options: $0)
    }
  }

  public func createSnapshot(name: String, sourceVolumeUUID: String) async throws
    -> Nvmecsi_Target_V1_CreateSnapshotResponse
  {
    try await call {
      try await client.createSnapshot(.with { $0.name = name; $0.sourceVolumeUuid = sourceVolumeUUID }, options: $0)
    }
  }

  public func deleteSnapshot(uuid: String) async throws {
    _ = try await call { try await client.deleteSnapshot(.with { $0.uuid = uuid }, options: $0) }
  }

  public func listSnapshots(_ filter: Nvmecsi_Target_V1_ListSnapshotsRequest) async throws -> [Nvmecsi_Target_V1_Snapshot] {
    try await call { try await client.listSnapshots(filter, options: $0) }.snapshots
  }
}
