import NVMeCSICore

/// A target API used in-process (an agent in the same process), its errors naming
/// the target exactly as `RemoteTargetAPI`'s do, so the controller cannot tell the
/// two apart.
public struct NamedTarget: TargetAPI {
  let name: TargetName
  let api: any TargetAPI

  public init(name: TargetName, api: any TargetAPI) {
    self.name = name
    self.api = api
  }

  private func call<T: Sendable>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch let error as NVMeCSIError { throw error.from(target: name) }
  }

  public func info() async throws -> TargetInfo { try await call { try await api.info() } }
  public func createVolume(_ request: NewVolume) async throws -> (volume: TargetVolume, existed: Bool) {
    try await call { try await api.createVolume(request) }
  }
  public func createVolume(_ request: NewVolume, asHome home: TargetName) async throws -> HomeCreation {
    try await call { try await api.createVolume(request, asHome: home) }
  }
  public func deleteVolume(_ uuid: ObjectUUID) async throws { try await call { try await api.deleteVolume(uuid) } }
  public func deleteVolume(_ uuid: ObjectUUID, asHome home: TargetName) async throws {
    try await call { try await api.deleteVolume(uuid, asHome: home) }
  }
  public func volume(_ uuid: ObjectUUID) async throws -> TargetVolume { try await call { try await api.volume(uuid) } }
  public func volumes(named name: String?) async throws -> [TargetVolume] {
    try await call { try await api.volumes(named: name) }
  }
  public func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) async throws -> TargetVolume {
    try await call { try await api.expandVolume(uuid, to: sizeBytes) }
  }
  public func volumes(after startingAfter: ObjectUUID?, limit: Int) async throws
    -> (volumes: [TargetVolume], more: Bool)
  {
    try await call { try await api.volumes(after: startingAfter, limit: limit) }
  }
  public func updateVolumeAttributes(_ uuid: ObjectUUID, setting changes: [String: String]) async throws
    -> TargetVolume
  {
    try await call { try await api.updateVolumeAttributes(uuid, setting: changes) }
  }
  public func publishVolume(_ uuid: ObjectUUID, to node: NodeID, readonly: Bool, exclusive: Bool) async throws
    -> VolumeExport
  {
    try await call { try await api.publishVolume(uuid, to: node, readonly: readonly, exclusive: exclusive) }
  }
  public func unpublishVolume(_ uuid: ObjectUUID, from node: NodeID?) async throws {
    try await call { try await api.unpublishVolume(uuid, from: node) }
  }
  public func createSnapshot(named name: String, of volume: ObjectUUID, attributes: [String: String]) async throws
    -> (snapshot: SnapshotRecord, existed: Bool)
  {
    try await call { try await api.createSnapshot(named: name, of: volume, attributes: attributes) }
  }
  public func deleteSnapshot(_ uuid: ObjectUUID) async throws { try await call { try await api.deleteSnapshot(uuid) } }
  public func snapshots(matching filter: SnapshotFilter) async throws -> [SnapshotRecord] {
    try await call { try await api.snapshots(matching: filter) }
  }
  public func snapshots(after startingAfter: ObjectUUID?, limit: Int) async throws
    -> (snapshots: [SnapshotRecord], more: Bool)
  {
    try await call { try await api.snapshots(after: startingAfter, limit: limit) }
  }
  public func mdSuperblock(of volume: ObjectUUID) async throws -> MDSuperblock? {
    try await call { try await api.mdSuperblock(of: volume) }
  }
  public func legMap(of volume: ObjectUUID) async throws -> LegMap? {
    try await call { try await api.legMap(of: volume) }
  }
  public func writeLegMap(_ map: LegMap, to volume: ObjectUUID) async throws {
    try await call { try await api.writeLegMap(map, to: volume) }
  }
  public func placement(of name: String) async throws -> NamePlacement {
    try await call { try await api.placement(of: name) }
  }
  public func reservePlacements(_ placements: [Placement]) async throws -> [Placement] {
    try await call { try await api.reservePlacements(placements) }
  }
  public func releasePlacement(of name: String, on target: TargetName) async throws {
    try await call { try await api.releasePlacement(of: name, on: target) }
  }
}
