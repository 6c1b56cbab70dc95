import Foundation
import Logging
import NVMeCSICore
import NVMetExporter
import TargetContract
import VolumeStore

/// The storage target's logic, over a store and an exporter; no gRPC here.
///
/// The store's records are the desired state; after every change the exporter is
/// converged to them, and `start()` converges everything again after a restart. So
/// a crash between "record changed" and "export changed" heals itself.
/// Calls on one name or one object are serialized; different ones run concurrently.
public final class TargetAgent: TargetAPI {
  let store: any VolumeStore
  let exporter: any VolumeExporter
  private let version: String
  private let locks = KeyedLock<String>()
  private let logger: Logger

  public init(store: any VolumeStore, exporter: any VolumeExporter, version: String = BuildInfo.version, logger: Logger)
  {
    self.store = store
    self.exporter = exporter
    self.version = version
    self.logger = logger
  }

  public func info() throws(NVMeCSIError) -> TargetInfo {
    let capacity = try store.capacity()
    return TargetInfo(
      storeKind: store.kind, exporterKind: exporter.kind.rawValue, totalBytes: capacity.totalBytes,
      availableBytes: capacity.availableBytes, sharesBlocks: store.sharesBlocks,
      portals: exporter.portals, version: version)
  }

  /// Repairs what an earlier crash left behind: store debris, exports without
  /// records, records whose export is missing or stale.
  public func start() throws(NVMeCSIError) {
    logger.info("reconciling store and exports", metadata: ["store": "\(store.kind)", "exporter": "\(exporter.kind)"])
    let repairs = try store.reconcile()
    for path in repairs.removedDebris {
      logger.notice("removed debris of an interrupted operation", metadata: ["path": "\(path)"])
    }
    for path in repairs.missingData {
      logger.error("volume data is missing; the volume is reported abnormal", metadata: ["path": "\(path)"])
    }
    let records = try store.volumes()
    let recorded = Set(records.map(\.uuid))
    for volume in exporter.exportedVolumes() where !recorded.contains(volume) {
      logger.notice("removing export of a volume that no longer exists", metadata: ["volume": "\(volume)"])
      try exporter.remove(volume)
    }
    for record in records where store.hasData(record.uuid) {
      try exporter.apply(exportSpec(record))
    }
    logger.info(
      "target ready",
      metadata: [
        "volumes": "\(records.count)", "store": "\(store.kind)", "exporter": "\(exporter.kind)",
        "reflink": "\(store.sharesBlocks)",
      ])
  }

  // MARK: volumes

  public func createVolume(_ request: NewVolume) async throws -> (volume: TargetVolume, existed: Bool) {
    try validateName(request.name, what: "volume")
    guard request.sizeBytes > 0 else { throw NVMeCSIError.invalidArgument("volume size must be positive") }
    return try await locks.withLock("volume-name:" + request.name) {
      if let existing = try store.volumes().first(where: { $0.name == request.name }) {
        return (status(existing), true)
      }
      if let sourceSize = try sourceSize(request.source), request.sizeBytes < sourceSize {
        throw NVMeCSIError.outOfRange(
          "requested size \(request.sizeBytes) bytes is smaller than the source (\(sourceSize) bytes)")
      }
      let capacity = try store.capacity()
      if request.source == nil || !store.sharesBlocks, request.sizeBytes > capacity.availableBytes {
        throw NVMeCSIError.resourceExhausted(
          "target has \(capacity.availableBytes) bytes free, volume needs \(request.sizeBytes): "
            + "free space or add a target"
        )
      }
      let record = VolumeRecord(
        uuid: .random(), name: request.name, sizeBytes: request.sizeBytes, source: request.source,
        attributes: request.attributes)
      let created = try store.createVolume(record)
      try exporter.apply(exportSpec(created))
      logger.info(
        "volume created",
        metadata: ["volume": "\(created.uuid)", "name": "\(created.name)", "bytes": "\(created.sizeBytes)"])
      return (status(created), false)
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
        let nodes = record.publications.map(\.nodeID.description).joined(separator: ", ")
        throw NVMeCSIError.failedPrecondition(
          "volume \(uuid) is still published to node(s) \(nodes): unpublish it first")
      }
      try exporter.remove(uuid)
      try store.deleteVolume(uuid)
      logger.info("volume deleted", metadata: ["volume": "\(uuid)"])
    }
  }

  public func volume(_ uuid: ObjectUUID) throws(NVMeCSIError) -> TargetVolume {
    status(try record(uuid))
  }

  public func volumes(named name: String?) throws(NVMeCSIError) -> [TargetVolume] {
    try store.volumes().filter { name == nil || $0.name == name }.map(status)
  }

  public func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) async throws -> TargetVolume {
    try await locks.withLock("volume:" + uuid.value) {
      let record = try record(uuid)
      guard sizeBytes > record.sizeBytes else { return status(record) }
      let capacity = try store.capacity()
      if sizeBytes - record.sizeBytes > capacity.availableBytes {
        throw NVMeCSIError.resourceExhausted(
          "target has \(capacity.availableBytes) bytes free, growing by \(sizeBytes - record.sizeBytes) does not fit")
      }
      let grown = try store.expandVolume(uuid, to: sizeBytes)
      try exporter.refreshSize(of: uuid)
      logger.info("volume expanded", metadata: ["volume": "\(uuid)", "bytes": "\(grown.sizeBytes)"])
      return status(grown)
    }
  }

  // MARK: access

  /// Allows the node's host NQN on the volume's subsystem.
  public func publishVolume(_ uuid: ObjectUUID, to node: NodeID, readonly: Bool, exclusive: Bool) async throws
    -> VolumeExport
  {
    try await locks.withLock("volume:" + uuid.value) {
      var record = try record(uuid)
      if let existing = record.publications.first(where: { $0.nodeID == node }) {
        if existing.readonly != readonly {
          throw NVMeCSIError.alreadyExists(
            "volume \(uuid) is already published to this node with readonly=\(existing.readonly)")
        }
      } else {
        if exclusive, let other = record.publications.first {
          throw NVMeCSIError.failedPrecondition(
            "volume \(uuid) has single-node access and is published to node \(other.nodeID): unpublish it there first")
        }
        record.publications.append(Publication(nodeID: node, readonly: readonly))
        try store.updateVolume(record)
      }
      let spec = exportSpec(record)
      try exporter.apply(spec)
      return VolumeExport(
        subsystemNQN: spec.subsystemNQN, namespaceUUID: SubsystemNaming.namespaceUUID(for: uuid),
        portals: exporter.portals)
    }
  }

  /// Revokes a node's access (every node's when `node` is nil); idempotent.
  public func unpublishVolume(_ uuid: ObjectUUID, from node: NodeID?) async throws {
    try await locks.withLock("volume:" + uuid.value) {
      guard var record = try store.volume(uuid) else { return }
      let before = record.publications.count
      record.publications.removeAll { node == nil || $0.nodeID == node }
      if record.publications.count != before { try store.updateVolume(record) }
      try exporter.apply(exportSpec(record))
    }
  }

  // MARK: snapshots

  public func createSnapshot(named name: String, of source: ObjectUUID) async throws
    -> (snapshot: SnapshotRecord, existed: Bool)
  {
    try validateName(name, what: "snapshot")
    return try await locks.withLock("snapshot-name:" + name) {
      if let existing = try store.snapshots().first(where: { $0.name == name }) { return (existing, true) }
      return try await locks.withLock("volume:" + source.value) {
        let volume = try record(source)
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

  public func snapshots(matching filter: SnapshotFilter) throws(NVMeCSIError) -> [SnapshotRecord] {
    try store.snapshots().filter(filter.matches)
  }

  // MARK: internals

  private func record(_ uuid: ObjectUUID) throws(NVMeCSIError) -> VolumeRecord {
    guard let record = try store.volume(uuid) else { throw .notFound("volume \(uuid) does not exist") }
    return record
  }

  /// The record with its health: nil problem when the data is present and exported as recorded.
  private func status(_ record: VolumeRecord) -> TargetVolume {
    let problem =
      store.hasData(record.uuid)
      ? exporter.problem(with: exportSpec(record))
      : "backing data \(store.devicePath(of: record.uuid)) is missing on the target"
    return TargetVolume(record: record, problem: problem)
  }

  private func exportSpec(_ record: VolumeRecord) -> ExportSpec {
    ExportSpec(
      volume: record.uuid, devicePath: store.devicePath(of: record.uuid),
      allowedHosts: Set(record.publications.map(\.hostNQN.value)))
  }

  private func sourceSize(_ source: VolumeSource?) throws(NVMeCSIError) -> UInt64? {
    switch source {
    case nil: return nil
    case .volume(let v):
      return try record(v).sizeBytes
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
