import Foundation
import Logging
import NVMeCSICore
import NVMetExporter
import VolumeStore

/// The storage target's logic, over a store and an exporter; no gRPC here.
///
/// The store's records are the desired state; after every change the exporter is
/// converged to them, and `start()` converges everything again after a restart. So
/// a crash between "record changed" and "export changed" heals itself.
/// Calls on one name or one object are serialized; different ones run concurrently.
public final class TargetAgent: Sendable {
  public let store: any VolumeStore
  public let exporter: any VolumeExporter
  private let locks = KeyedLock<String>()
  private let logger: Logger

  public init(store: any VolumeStore, exporter: any VolumeExporter, logger: Logger) {
    self.store = store
    self.exporter = exporter
    self.logger = logger
  }

  /// Repairs what an earlier crash left behind: store debris, exports without
  /// records, records whose export is missing or stale.
  public func start() throws(NVMeCSIError) {
    logger.info("reconciling store and exports", metadata: ["store": "\(store.kind)", "exporter": "\(exporter.kind)"])
    let repairs = try store.reconcile()
    for path in repairs.removedDebris { logger.notice("removed debris of an interrupted operation", metadata: ["path": "\(path)"]) }
    for path in repairs.missingData { logger.error("volume data is missing; the volume is reported abnormal", metadata: ["path": "\(path)"]) }
    let records = try store.volumes()
    let recorded = Set(records.map(\.uuid))
    for volume in exporter.exportedVolumes() where !recorded.contains(volume.value) {
      logger.notice("removing export of a volume that no longer exists", metadata: ["volume": "\(volume)"])
      try exporter.remove(volume)
    }
    for record in records {
      let spec = try exportSpec(record)
      guard store.hasData(spec.volume) else { continue }
      try exporter.apply(spec)
    }
    logger.info(
      "target ready",
      metadata: ["volumes": "\(records.count)", "store": "\(store.kind)", "exporter": "\(exporter.kind)", "reflink": "\(store.sharesBlocks)"])
  }

  // MARK: volumes

  public struct CreateVolume: Sendable {
    public var name: String
    public var sizeBytes: UInt64
    public var source: VolumeSource?
    public var attributes: [String: String]
    public init(name: String, sizeBytes: UInt64, source: VolumeSource?, attributes: [String: String]) {
      self.name = name
      self.sizeBytes = sizeBytes
      self.source = source
      self.attributes = attributes
    }
  }

  /// Creates a volume, or returns the one that already has this name (`existed`).
  public func createVolume(_ request: CreateVolume) async throws -> (volume: VolumeRecord, existed: Bool) {
    try validateName(request.name, what: "volume")
    guard request.sizeBytes > 0 else { throw NVMeCSIError.invalidArgument("volume size must be positive") }
    return try await locks.withLock("volume-name:" + request.name) {
      if let existing = try store.volumes().first(where: { $0.name == request.name }) {
        return (existing, true)
      }
      if let sourceSize = try sourceSize(request.source), request.sizeBytes < sourceSize {
        throw NVMeCSIError.outOfRange("requested size \(request.sizeBytes) bytes is smaller than the source (\(sourceSize) bytes)")
      }
      let capacity = try store.capacity()
      if request.source == nil || !store.sharesBlocks, request.sizeBytes > capacity.availableBytes {
        throw NVMeCSIError.resourceExhausted(
          "target has \(capacity.availableBytes) bytes free, volume needs \(request.sizeBytes): free space or add a target")
      }
      let record = VolumeRecord(
        uuid: .random(), name: request.name, sizeBytes: request.sizeBytes, source: request.source,
        attributes: request.attributes)
      let created = try store.createVolume(record)
      try exporter.apply(try exportSpec(created))
      logger.info("volume created", metadata: ["volume": "\(created.uuid)", "name": "\(created.name)", "bytes": "\(created.sizeBytes)"])
      return (created, false)
    }
  }

  /// Removes a volume; an unknown one is success. Refuses while any host may use it.
  public func deleteVolume(_ uuid: ObjectUUID) async throws {
    try await locks.withLock("volume:" + uuid.value) {
      guard let record = try store.volume(uuid) else {
        try exporter.remove(uuid)  // an export left by a crash mid-delete
        return
      }
      if !record.publications.isEmpty {
        let nodes = record.publications.map(\.nodeID).joined(separator: ", ")
        throw NVMeCSIError.failedPrecondition("volume \(uuid) is still published to node(s) \(nodes): unpublish it first")
      }
      try exporter.remove(uuid)
      try store.deleteVolume(uuid)
      logger.info("volume deleted", metadata: ["volume": "\(uuid)"])
    }
  }

  public func volume(_ uuid: ObjectUUID) throws(NVMeCSIError) -> VolumeRecord {
    guard let record = try store.volume(uuid) else { throw .notFound("volume \(uuid) does not exist") }
    return record
  }

  public func volumes(named name: String?) throws(NVMeCSIError) -> [VolumeRecord] {
    let all = try store.volumes()
    guard let name else { return all }
    return all.filter { $0.name == name }
  }

  /// Nil when healthy, else what is wrong with the volume.
  public func problem(with record: VolumeRecord) -> String? {
    guard let spec = try? exportSpec(record) else { return "record is corrupt" }
    if !store.hasData(spec.volume) { return "backing data \(store.devicePath(of: spec.volume)) is missing on the target" }
    return exporter.problem(with: spec)
  }

  public func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) async throws -> VolumeRecord {
    try await locks.withLock("volume:" + uuid.value) {
      let record = try volume(uuid)
      guard sizeBytes > record.sizeBytes else { return record }
      let capacity = try store.capacity()
      if sizeBytes - record.sizeBytes > capacity.availableBytes {
        throw NVMeCSIError.resourceExhausted(
          "target has \(capacity.availableBytes) bytes free, growing by \(sizeBytes - record.sizeBytes) does not fit")
      }
      let grown = try store.expandVolume(uuid, to: sizeBytes)
      try exporter.refreshSize(of: uuid)
      logger.info("volume expanded", metadata: ["volume": "\(uuid)", "bytes": "\(grown.sizeBytes)"])
      return grown
    }
  }

  // MARK: access

  public struct PublishRequest: Sendable {
    public var volume: ObjectUUID
    public var node: NodeID
    public var readonly: Bool
    public var exclusive: Bool
    public init(volume: ObjectUUID, node: NodeID, readonly: Bool, exclusive: Bool) {
      self.volume = volume
      self.node = node
      self.readonly = readonly
      self.exclusive = exclusive
    }
  }

  /// Allows the node's host NQN on the volume's subsystem.
  public func publish(_ request: PublishRequest) async throws -> ExportSpec {
    try await locks.withLock("volume:" + request.volume.value) {
      var record = try volume(request.volume)
      let nodeID = request.node.description
      if let existing = record.publications.first(where: { $0.nodeID == nodeID }) {
        if existing.readonly != request.readonly {
          throw NVMeCSIError.alreadyExists(
            "volume \(request.volume) is already published to this node with readonly=\(existing.readonly)")
        }
      } else {
        if request.exclusive, let other = record.publications.first {
          throw NVMeCSIError.failedPrecondition(
            "volume \(request.volume) has single-node access and is published to node \(other.nodeID): unpublish it there first")
        }
        record.publications.append(Publication(nodeID: nodeID, hostNQN: request.node.hostNQN.value, readonly: request.readonly))
        try store.updateVolume(record)
      }
      let spec = try exportSpec(record)
      try exporter.apply(spec)
      return spec
    }
  }

  /// Revokes a node's access (every node's when `node` is nil); idempotent.
  public func unpublish(_ uuid: ObjectUUID, node: NodeID?) async throws {
    try await locks.withLock("volume:" + uuid.value) {
      guard var record = try store.volume(uuid) else { return }
      let before = record.publications.count
      record.publications.removeAll { node == nil || $0.nodeID == node!.description }
      if record.publications.count != before { try store.updateVolume(record) }
      try exporter.apply(try exportSpec(record))
    }
  }

  // MARK: snapshots

  public func createSnapshot(name: String, of source: ObjectUUID) async throws -> (snapshot: SnapshotRecord, existed: Bool) {
    try validateName(name, what: "snapshot")
    return try await locks.withLock("snapshot-name:" + name) {
      if let existing = try store.snapshots().first(where: { $0.name == name }) { return (existing, true) }
      return try await locks.withLock("volume:" + source.value) {
        let volume = try volume(source)
        let snapshot = try store.createSnapshot(
          SnapshotRecord(uuid: .random(), name: name, sourceVolume: source, sizeBytes: volume.sizeBytes))
        logger.info("snapshot created", metadata: ["snapshot": "\(snapshot.uuid)", "volume": "\(source)"])
        return (snapshot, false)
      }
    }
  }

  public func deleteSnapshot(_ uuid: ObjectUUID) async throws {
    try await locks.withLock("snapshot:" + uuid.value) {
      try store.deleteSnapshot(uuid)
    }
  }

  public func snapshots() throws(NVMeCSIError) -> [SnapshotRecord] { try store.snapshots() }

  // MARK: internals

  private func exportSpec(_ record: VolumeRecord) throws(NVMeCSIError) -> ExportSpec {
    let uuid = try ObjectUUID(record.uuid)
    return ExportSpec(volume: uuid, devicePath: store.devicePath(of: uuid), allowedHosts: Set(record.publications.map(\.hostNQN)))
  }

  private func sourceSize(_ source: VolumeSource?) throws(NVMeCSIError) -> UInt64? {
    switch source {
    case nil: return nil
    case .volume(let v):
      return try volume(try ObjectUUID(v)).sizeBytes
    case .snapshot(let s):
      guard let snapshot = try store.snapshots().first(where: { $0.uuid == s }) else {
        throw .notFound("snapshot \(s) does not exist")
      }
      return snapshot.sizeBytes
    }
  }

  /// Names are free text from the CO, stored only inside records; still bounded and
  /// free of control characters so they cannot forge log lines or bloat records.
  private func validateName(_ name: String, what: String) throws(NVMeCSIError) {
    guard !name.isEmpty else { throw .invalidArgument("\(what) name is empty") }
    guard name.utf8.count <= 253 else { throw .invalidArgument("\(what) name is longer than 253 bytes") }
    guard !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
      throw .invalidArgument("\(what) name \(quoted(name)) contains control characters")
    }
  }
}
