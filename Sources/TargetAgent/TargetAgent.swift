import Foundation
import Logging
import NVMeCSICore
import NVMetExporter
import Synchronization
import TargetContract
import VolumeStore

/// The storage target's logic, over a store and an exporter; no gRPC here.
///
/// The store's records are the desired state; after every change the exporter is
/// converged to them, and `start()` converges everything again after a restart. So
/// a crash between "record changed" and "export changed" heals itself.
/// One call at a time per name or object (a second is Aborted at once); different ones
/// run concurrently.
public final class TargetAgent: TargetAPI {
  let store: any VolumeStore
  let exporter: any VolumeExporter
  private let version: String
  private let locks = KeyedLock<String>()
  private let logger: Logger
  /// Volumes whose files `start()` moved aside, with why: reported abnormal, never served.
  private let quarantined = Mutex<[ObjectUUID: String]>([:])
  /// Store and exporter calls block (fsync, full copies, lvm, configfs writes): they run
  /// here, never on Swift's cooperative pool.
  private let pool: BlockingPool
  /// How far the volumes' sizes together may exceed the store's size (1: not at all).
  public let overcommitRatio: Double
  /// The sum of the volumes' sizes, kept in memory (counted at `start()`): a create or
  /// expand reserves its bytes first, so concurrent ones cannot overshoot together.
  private let provisioned = Mutex<UInt64>(0)
  /// Which node each published host NQN belongs to (rebuilt at `start()`).
  private let hosts = HostRegistry()
  /// Volume names to UUIDs, and the UUIDs in order (built at `start()`): finding a
  /// volume by name reads one record, not all of them; a page of volumes reads its own.
  private let names = Mutex(VolumeNames())
  /// Every snapshot record, by UUID (also in order), name and source (loaded at `start()`).
  private let snapshotIndex = SnapshotIndex()
  /// Where the names whose home is this target were placed (loaded at `start()`).
  private let placementsPath: String
  private let placements = Mutex<PlacementJournal?>(nil)

  /// The overcommit ratios a target accepts: none below 1 (that would refuse space
  /// that is there) and none so large the limit means nothing.
  public static let overcommitRatios: ClosedRange<Double> = 1...100

  /// - Parameter placementsPath: the placement journal's file (next to the store).
  public init(
    store: any VolumeStore, exporter: any VolumeExporter, pool: BlockingPool, placementsPath: String,
    overcommitRatio: Double = 1, version: String = BuildInfo.version, logger: Logger
  ) {
    // Records are read on every call and listed by the thousand: from memory.
    self.store = RecordCachingStore(store)
    self.placementsPath = placementsPath
    self.exporter = exporter
    self.pool = pool
    self.overcommitRatio = min(max(overcommitRatio, Self.overcommitRatios.lowerBound), Self.overcommitRatios.upperBound)
    self.version = version
    self.logger = logger
  }

  public func info() async throws(NVMeCSIError) -> TargetInfo {
    let capacity = try await onPool { [self] () throws(NVMeCSIError) in try store.capacity() }
    return TargetInfo(
      storeKind: store.kind, exporterKind: exporter.kind.rawValue, totalBytes: capacity.totalBytes,
      availableBytes: capacity.availableBytes, sharesBlocks: store.sharesBlocks,
      portals: exporter.portals, version: version, provisionedBytes: provisioned.withLock { $0 },
      overcommitRatio: overcommitRatio, placesAsHome: true)
  }

  /// Repairs what an earlier crash left behind, then exports every recorded volume.
  ///
  /// Never destroys on doubt: the store moves what it cannot explain aside; an export
  /// of a volume the store has no record of is left in place and reported; and a store
  /// with no volume at all while nvmet exports ours (its file system not mounted yet,
  /// the wrong directory) stops the target before it touches anything.
  public func start() throws(NVMeCSIError) {
    logger.info("reconciling store and exports", metadata: ["store": "\(store.kind)", "exporter": "\(exporter.kind)"])
    let repairs = try store.reconcile()
    for path in repairs.removedDebris {
      logger.notice("removed debris of an interrupted operation", metadata: ["path": "\(path)"])
    }
    for step in repairs.completed {
      logger.notice("finished an interrupted operation", metadata: ["step": "\(step)"])
    }
    for path in repairs.missingData {
      logger.error("volume data is missing; the volume is reported abnormal", metadata: ["path": "\(path)"])
    }
    for item in repairs.quarantined {
      logger.error(
        "moved aside what the store cannot explain; nothing was deleted: inspect it, then restore or remove it",
        metadata: ["path": "\(item.originalPath)", "movedTo": "\(item.movedTo)", "reason": "\(item.reason)"])
    }
    // Reported until a person resolves them, across restarts: what sits in quarantine now.
    var reasons = try store.quarantinedVolumes().mapValues { "quarantined: \($0)" }
    for item in repairs.quarantined {
      if let volume = item.volume { reasons[volume] = "quarantined: \(item.reason); its files are in \(item.movedTo)" }
    }
    for (volume, reason) in reasons where !repairs.quarantined.contains(where: { $0.volume == volume }) {
      logger.error("volume is still in quarantine", metadata: ["volume": "\(volume)", "reason": "\(reason)"])
    }
    quarantined.withLock { $0 = reasons }
    let records = try store.volumes()
    provisioned.withLock { $0 = records.reduce(0) { $0.addingReportingOverflow($1.sizeBytes).partialValue } }
    for nqn in hosts.rebuild(from: records) {
      logger.error(
        "several nodes share one host NQN in the records: new publishes to any but one are refused",
        metadata: ["hostnqn": "\(nqn)"])
    }
    names.withLock { $0 = VolumeNames(records) }
    snapshotIndex.load(try store.snapshots())
    let placedHere = records.compactMap { record in
      record.attributes[PlacementJournal.homeAttribute].flatMap { try? TargetName($0) }.map { (record.name, $0) }
    }
    let journal = try PlacementJournal(path: placementsPath, placedHere: placedHere)
    placements.withLock { $0 = journal }
    let recorded = Set(records.map(\.uuid))
    let unexplained = exporter.exportedVolumes().filter { !recorded.contains($0) }
    if records.isEmpty && !unexplained.isEmpty {
      let some = unexplained.prefix(3).map(\.value).joined(separator: ", ")
      throw .failedPrecondition(
        "the \(store.kind) store \(store.isNew ? "is new" : "holds no volume"), yet nvmet exports \(unexplained.count)"
          + " volume(s) of this driver (\(some)): its file system is probably not mounted yet, or --store names the"
          + " wrong place; refusing to start so that no export is touched")
    }
    for volume in unexplained {
      let message = "nvmet exports a volume this store has no record of: left in place, never removed on doubt"
      logger.warning("\(message) (DeleteVolume of it removes the export)", metadata: ["volume": "\(volume)"])
    }
    try applyExports(records)
    logger.info(
      "target ready",
      metadata: [
        "volumes": "\(records.count)", "store": "\(store.kind)", "exporter": "\(exporter.kind)",
        "reflink": "\(store.sharesBlocks)", "quarantined": "\(repairs.quarantined.count)",
      ])
  }

  /// Exports every volume that has data, on every core: with 100,000 volumes this is
  /// the longest step of a start. Throws the first failure, once all have run.
  private func applyExports(_ records: [VolumeRecord]) throws(NVMeCSIError) {
    let failures = records.mapOnEveryCore { record -> NVMeCSIError? in
      guard store.hasData(record.uuid) else { return nil }
      do throws(NVMeCSIError) { try exporter.apply(exportSpec(record)) } catch { return error }
      return nil
    }
    if let failure = failures.lazy.compactMap({ $0 }).first { throw failure }
  }

  /// What this target holds, from memory only (metrics read it at every scrape).
  public func statistics() -> TargetStatistics {
    let (publications, hostCount) = hosts.counts()
    return TargetStatistics(
      volumes: names.withLock { $0.count }, quarantined: quarantined.withLock { $0.count },
      snapshots: snapshotIndex.count, publications: publications, hosts: hostCount,
      provisionedBytes: provisioned.withLock { $0 })
  }

  // MARK: volumes

  public func createVolume(_ request: NewVolume) async throws -> (volume: TargetVolume, existed: Bool) {
    switch try await create(request, home: nil) {
    case .volume(let volume, let existed): return (volume, existed)
    case .placedOn(let target):
      throw NVMeCSIError.internalError("a create with no home answered that the name is placed on \(target)")
    }
  }

  public func createVolume(_ request: NewVolume, asHome home: TargetName) async throws -> HomeCreation {
    try await create(request, home: home)
  }

  /// Creates the volume, or finds it; as the name's `home` (this target's name in the
  /// controller's targets file), places the name here first (unless it is placed
  /// elsewhere already), under the name's lock: the new volume's record says so.
  private func create(_ request: NewVolume, home: TargetName?) async throws -> HomeCreation {
    try validateName(request.name, what: "volume")
    try validateSize(request.sizeBytes)
    try validateAttributes(request.attributes)
    let placements: PlacementJournal? = home == nil ? nil : try journal()
    return try await locks.withLock("volume-name:" + request.name) { [self] in
      try await onPool { [self] () throws(NVMeCSIError) in
        if let existing = try volumeRecord(named: request.name) {
          if let uuid = request.uuid, uuid != existing.uuid {
            throw NVMeCSIError.alreadyExists(
              "volume name \(quoted(request.name)) belongs to volume \(existing.uuid), not \(uuid)")
          }
          return .volume(status(existing), existed: true)
        }
        guard let home, let placements else { return try createNew(request, home: nil) }
        // An earlier record wins: the volume is (to be) created where it says. Else the
        // new volume's record is its placement (no journal line; `claim`).
        let placed = placements.claim(request.name, for: home)
        if placed != home { return .placedOn(placed) }
        do throws(NVMeCSIError) { return try createNew(request, home: home) } catch {
          if names.withLock({ $0[request.name] }) == nil { placements.unclaim(request.name, for: home) }
          throw error
        }
      }
    }
  }

  /// Creates a volume of a name this target has none of (under the name's lock, on
  /// the pool); as the name's `home`, its record says so.
  private func createNew(_ request: NewVolume, home: TargetName?) throws(NVMeCSIError) -> HomeCreation {
    if let uuid = request.uuid, let other = try store.volume(uuid) {
      throw NVMeCSIError.alreadyExists("volume \(uuid) exists already, named \(quoted(other.name))")
    }
    let sourceSize = try sourceSize(request.source)
    if let sourceSize, request.sizeBytes < sourceSize {
      throw NVMeCSIError.outOfRange(
        "requested size \(request.sizeBytes) bytes is smaller than the source (\(sourceSize) bytes)")
    }
    // A clone that shares blocks costs only what it adds beyond its source.
    let needed = store.sharesBlocks ? request.sizeBytes - (sourceSize ?? 0) : request.sizeBytes
    let capacity = try store.capacity()
    if needed > capacity.availableBytes {
      throw NVMeCSIError.resourceExhausted(
        "target has \(capacity.availableBytes) bytes free, volume needs \(needed): free space or add a target")
    }
    try reserve(request.sizeBytes, total: capacity.totalBytes)
    // The home attribute is this target's own: one in the request (a leg copied from
    // another, say) says nothing about this volume.
    var attributes = request.attributes
    attributes[PlacementJournal.homeAttribute] = home?.value
    let record = VolumeRecord(
      uuid: request.uuid ?? .random(), name: request.name, sizeBytes: request.sizeBytes, source: request.source,
      attributes: attributes, sharing: request.sharing)
    let created: VolumeRecord
    do throws(NVMeCSIError) { created = try store.createVolume(record) } catch {
      // A failure after the volume came to exist leaves it counted and findable by
      // name, so a retry returns it instead of creating a second one.
      if (try? store.volume(record.uuid)) != nil {
        names.withLock { $0.set(record.name, record.uuid) }
      } else {
        release(request.sizeBytes)
      }
      throw error
    }
    names.withLock { $0.set(created.name, created.uuid) }
    adjust(by: Int64(created.sizeBytes) - Int64(request.sizeBytes))  // a store may round up
    try exporter.apply(exportSpec(created))
    logger.info(
      "volume created",
      metadata: ["volume": "\(created.uuid)", "name": "\(created.name)", "bytes": "\(created.sizeBytes)"])
    return .volume(status(created), existed: false)
  }

  /// Removes a volume; an unknown one is success. Refuses while any host may use it.
  public func deleteVolume(_ uuid: ObjectUUID) async throws { try await delete(uuid, home: nil) }

  public func deleteVolume(_ uuid: ObjectUUID, asHome home: TargetName) async throws {
    try await delete(uuid, home: home)
  }

  /// Removes a volume; as the name's `home`, then releases the name's placement if it
  /// names this target, under the name's lock too: a create of the name must not find
  /// the placement between the delete and the release.
  private func delete(_ uuid: ObjectUUID, home: TargetName?) async throws {
    let placements: PlacementJournal? = home == nil ? nil : try journal()
    try await locks.withLock("volume:" + uuid.value) { [self] in
      let delete = { @Sendable [self] () async throws in
        try await onPool { [self] () throws(NVMeCSIError) in
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
          release(record.sizeBytes)
          names.withLock { $0.remove(record.name, ifUUID: uuid) }
          logger.info("volume deleted", metadata: ["volume": "\(uuid)"])
          guard let home, let placements else { return }
          // As the controller's own release: a record left behind only points a later
          // create of the name here, which keeps one volume per name.
          do throws(NVMeCSIError) { try placements.release(record.name, on: home) } catch {
            logger.warning(
              "placement not released: the name's record keeps pointing at this target",
              metadata: ["name": "\(record.name)", "error": "\(error.message)"])
          }
        }
      }
      guard home != nil else { return try await delete() }
      let name = try await onPool { [self] () throws(NVMeCSIError) in try store.volume(uuid)?.name }
      guard let name, !name.isEmpty else { return try await delete() }
      try await locks.withLock("volume-name:" + name) { try await delete() }
    }
  }

  public func volume(_ uuid: ObjectUUID) async throws(NVMeCSIError) -> TargetVolume {
    if let reason = quarantined.withLock({ $0[uuid] }) { return Self.quarantinedVolume(uuid, reason) }
    return try await onPool { [self] () throws(NVMeCSIError) in status(try record(uuid)) }
  }

  public func volumes(named name: String?) async throws(NVMeCSIError) -> [TargetVolume] {
    let recorded = try await onPool { [self] () throws(NVMeCSIError) in
      guard let name else { return try store.volumes().map(status) }
      return try volumeRecord(named: name).map { [status($0)] } ?? []
    }
    guard name == nil else { return recorded }
    return recorded + quarantined.withLock { $0 }.sorted { $0.key < $1.key }.map(Self.quarantinedVolume)
  }

  /// A page of the volumes in UUID order, from the in-memory indexes (the UUIDs kept
  /// sorted): only the page's records are read from the store, and the page costs what
  /// it returns however many volumes the target holds.
  public func volumes(after startingAfter: ObjectUUID?, limit: Int) async throws(NVMeCSIError)
    -> (volumes: [TargetVolume], more: Bool)
  {
    let quarantined = self.quarantined.withLock { $0 }
    let indexed = names.withLock { names in
      let page = names.ordered.page(after: startingAfter, limit: limit)
      return (uuids: Array(page.uuids), more: page.more)  // copied: the index stays uniquely referenced
    }
    // The quarantined (few; known only by UUID) merged in: the first `limit` of both
    // are among the indexed page and every quarantined one after `startingAfter`.
    let moved = quarantined.keys.filter { uuid in startingAfter.map { uuid > $0 } ?? true }
    let uuids = Set(indexed.uuids).union(moved).sorted()
    let page = Array(uuids.prefix(max(limit, 0)))
    let volumes = try await onPool { [self] () throws(NVMeCSIError) in
      var volumes: [TargetVolume] = []
      for uuid in page {
        if let reason = quarantined[uuid] {
          volumes.append(Self.quarantinedVolume(uuid, reason))
        } else if let record = try store.volume(uuid) {  // nil: deleted since the index was read
          volumes.append(status(record))
        }
      }
      return volumes
    }
    return (volumes, indexed.more || uuids.count > page.count)
  }

  /// A quarantined volume as listed: known only by its UUID, abnormal, saying why.
  private static func quarantinedVolume(_ uuid: ObjectUUID, _ reason: String) -> TargetVolume {
    TargetVolume(
      record: VolumeRecord(uuid: uuid, name: "", sizeBytes: 0, created: Date(timeIntervalSince1970: 0)), problem: reason
    )
  }

  public func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) async throws -> TargetVolume {
    try validateSize(sizeBytes)
    return try await locks.withLock("volume:" + uuid.value) { [self] in
      try await onPool { [self] () throws(NVMeCSIError) in
        let record = try record(uuid)
        guard sizeBytes > record.sizeBytes else { return status(record) }
        let capacity = try store.capacity()
        if sizeBytes - record.sizeBytes > capacity.availableBytes {
          throw NVMeCSIError.resourceExhausted(
            "target has \(capacity.availableBytes) bytes free, growing by \(sizeBytes - record.sizeBytes) does not fit")
        }
        try reserve(sizeBytes - record.sizeBytes, total: capacity.totalBytes)
        let grown: VolumeRecord
        do throws(NVMeCSIError) { grown = try store.expandVolume(uuid, to: sizeBytes) } catch {
          // Counted as far as the store really grew it.
          let now = (try? store.volume(uuid))?.sizeBytes ?? record.sizeBytes
          release(sizeBytes - max(record.sizeBytes, min(now, sizeBytes)))
          throw error
        }
        adjust(by: Int64(grown.sizeBytes) - Int64(sizeBytes))
        try exporter.refreshSize(of: uuid)
        logger.info("volume expanded", metadata: ["volume": "\(uuid)", "bytes": "\(grown.sizeBytes)"])
        return status(grown)
      }
    }
  }

  public func updateVolumeAttributes(_ uuid: ObjectUUID, setting changes: [String: String]) async throws
    -> TargetVolume
  {
    try validateAttributes(changes)
    // The home attribute is this target's own (set at create), never changed by a request.
    let changes = changes.filter { $0.key != PlacementJournal.homeAttribute }
    return try await locks.withLock("volume:" + uuid.value) { [self] in
      try await onPool { [self] () throws(NVMeCSIError) in
        var record = try record(uuid)
        let updated = record.attributes.merging(changes) { $1 }
        guard updated != record.attributes else { return status(record) }  // a repeat
        try validateAttributes(updated.filter { $0.key != PlacementJournal.homeAttribute })
        record.attributes = updated
        try store.updateVolume(record)
        logger.info(
          "volume attributes updated", metadata: ["volume": "\(uuid)", "keys": "\(changes.keys.sorted())"])
        return status(record)
      }
    }
  }

  // MARK: access

  /// Allows the node's host NQN on the volume's subsystem.
  public func publishVolume(_ uuid: ObjectUUID, to node: NodeID, readonly: Bool, exclusive: Bool) async throws
    -> VolumeExport
  {
    try await locks.withLock("volume:" + uuid.value) { [self] in
      try await onPool { [self] () throws(NVMeCSIError) in
        var record = try record(uuid)
        if let existing = record.publications.first(where: { $0.nodeID == node }) {
          if existing.readonly != readonly {
            throw NVMeCSIError.alreadyExists(
              "volume \(uuid) is already published to this node with readonly=\(existing.readonly)")
          }
        } else {
          // A caller can make a publish stricter (a single-node mode on a volume that
          // allows more), never looser than the volume's recorded sharing.
          let singleNode = record.sharing == .singleNode || exclusive
          if singleNode, let other = record.publications.first {
            throw NVMeCSIError.failedPrecondition(
              "volume \(uuid) has single-node access and is published to node \(other.nodeID): unpublish it there first"
            )
          }
          try hosts.claim(node)
          record.publications.append(Publication(nodeID: node, readonly: readonly))
          do throws(NVMeCSIError) { try store.updateVolume(record) } catch {
            hosts.release(node)
            throw error
          }
        }
        let spec = exportSpec(record)
        try exporter.apply(spec)
        return VolumeExport(
          subsystemNQN: spec.subsystemNQN, namespaceUUID: SubsystemNaming.namespaceUUID(for: uuid),
          portals: exporter.portals, attributes: record.attributes)
      }
    }
  }

  /// Revokes a node's access (every node's when `node` is nil); idempotent.
  public func unpublishVolume(_ uuid: ObjectUUID, from node: NodeID?) async throws {
    try await locks.withLock("volume:" + uuid.value) { [self] in
      try await onPool { [self] () throws(NVMeCSIError) in
        guard var record = try store.volume(uuid) else { return }
        let leaving = record.publications.filter { node == nil || $0.nodeID == node }
        record.publications.removeAll { node == nil || $0.nodeID == node }
        if !leaving.isEmpty {
          try store.updateVolume(record)
          for publication in leaving { hosts.release(publication.nodeID) }
        }
        try exporter.apply(exportSpec(record))
      }
    }
  }

  // MARK: snapshots

  public func createSnapshot(named name: String, of source: ObjectUUID, attributes: [String: String]) async throws
    -> (snapshot: SnapshotRecord, existed: Bool)
  {
    try validateName(name, what: "snapshot")
    try validateAttributes(attributes, of: "snapshot")
    return try await locks.withLock("snapshot-name:" + name) { [self] in
      try await reloadSnapshotsIfStale()
      if let existing = snapshotIndex.named(name) { return (existing, true) }
      return try await locks.withLock("volume:" + source.value) { [self] in
        try await onPool { [self] () throws(NVMeCSIError) in
          let volume = try record(source)
          let snapshot: SnapshotRecord
          do throws(NVMeCSIError) {
            snapshot = try store.createSnapshot(
              SnapshotRecord(
                uuid: .random(), name: name, sourceVolume: source, sizeBytes: volume.sizeBytes, attributes: attributes))
          } catch {
            // It may have come to exist before the failure: a retry must find it by name.
            reloadSnapshotsAfterFailure()
            throw error
          }
          snapshotIndex.insert(snapshot)
          logger.info("snapshot created", metadata: ["snapshot": "\(snapshot.uuid)", "volume": "\(source)"])
          return (snapshot, false)
        }
      }
    }
  }

  public func deleteSnapshot(_ uuid: ObjectUUID) async throws {
    try await locks.withLock("snapshot:" + uuid.value) { [self] in
      try await onPool { [self] () throws(NVMeCSIError) in
        do throws(NVMeCSIError) { try store.deleteSnapshot(uuid) } catch {
          // A delete that failed part-way may have removed the record (the commit).
          reloadSnapshotsAfterFailure()
          throw error
        }
        snapshotIndex.remove(uuid)
      }
    }
  }

  public func snapshots(matching filter: SnapshotFilter) async throws(NVMeCSIError) -> [SnapshotRecord] {
    try await reloadSnapshotsIfStale()
    return snapshotIndex.matching(filter)
  }

  /// A page of the snapshots in UUID order, from the in-memory index (sorted by UUID):
  /// it costs what it returns, however many snapshots the target holds.
  public func snapshots(after startingAfter: ObjectUUID?, limit: Int) async throws(NVMeCSIError)
    -> (snapshots: [SnapshotRecord], more: Bool)
  {
    try await reloadSnapshotsIfStale()
    return snapshotIndex.page(after: startingAfter, limit: limit)
  }

  /// After a store call failed part-way: the index as the store has it now, or marked
  /// stale (reloaded before the next lookup) when the store cannot be read either.
  private func reloadSnapshotsAfterFailure() {
    do { snapshotIndex.load(try store.snapshots()) } catch { snapshotIndex.invalidate() }
  }

  private func reloadSnapshotsIfStale() async throws(NVMeCSIError) {
    guard snapshotIndex.isStale else { return }
    let records = try await onPool { [self] () throws(NVMeCSIError) in try store.snapshots() }
    snapshotIndex.load(records)
  }

  // MARK: md superblocks

  /// Reads the superblock from the store's device directly, not through the page
  /// cache: what the node's md wrote over NVMe/TCP is on the device. No lock: a read
  /// racing a write of the superblock sees a torn one, which its checksum reports.
  public func mdSuperblock(of volume: ObjectUUID) async throws(NVMeCSIError) -> MDSuperblock? {
    try await onPool { [self] () throws(NVMeCSIError) in
      _ = try record(volume)
      let path = store.devicePath(of: volume)
      guard store.hasData(volume) else {
        throw NVMeCSIError.failedPrecondition("volume \(volume)'s backing data \(path) is missing on the target")
      }
      let bytes = try UncachedRead.bytes(at: MDSuperblock.offsetBytes, count: MDSuperblock.sizeBytes, from: path)
      do throws(NVMeCSIError) { return try MDSuperblock.parse(bytes) } catch {
        throw NVMeCSIError(error.kind, "volume \(volume): \(error.message)", cause: error.cause)
      }
    }
  }

  // MARK: leg maps

  /// Reads the map block from the store's device directly, as `mdSuperblock` does. No
  /// lock: a read racing `writeLegMap` may see a torn block, reported as damaged
  /// (`failedPrecondition`); the caller reads again.
  public func legMap(of volume: ObjectUUID) async throws(NVMeCSIError) -> LegMap? {
    try await onPool { [self] () throws(NVMeCSIError) in
      let block = try mapBlock(of: try record(volume))
      let bytes = try UncachedRead.bytes(at: LegMap.blockOffset, count: LegMap.blockBytes, from: block.path)
      switch LegMap.content(of: bytes) {
      case .empty: return nil
      case .map(let map): return map.set == block.set ? map : nil  // another set's: a copied leg
      case .damaged(let reason):
        throw NVMeCSIError.failedPrecondition("volume \(volume)'s leg map block is damaged: \(reason)")
      case .foreign:
        throw NVMeCSIError.failedPrecondition(
          "volume \(volume)'s leg map block (at \(LegMap.blockOffset) bytes) holds something that is not a leg map")
      }
    }
  }

  /// Compare-and-set on the map's version, under the volume's lock: read the block, then
  /// write over it only when it holds nothing of value (empty, another set's map, a torn
  /// map of ours) or an older map of this set.
  public func writeLegMap(_ map: LegMap, to volume: ObjectUUID) async throws {
    let block = try map.block()
    try await locks.withLock("volume:" + volume.value) { [self] in
      try await onPool { [self] () throws(NVMeCSIError) in
        let leg = try mapBlock(of: try record(volume))
        guard map.set == leg.set else {
          throw NVMeCSIError.invalidArgument(
            "the leg map is of volume set \(map.set), but volume \(volume) is a leg of set \(leg.set)")
        }
        let current = try UncachedRead.bytes(at: LegMap.blockOffset, count: LegMap.blockBytes, from: leg.path)
        switch LegMap.content(of: current) {
        case .empty, .damaged: break
        case .map(let held) where held.set != map.set: break  // a copied leg's: not this set's
        case .map(let held) where held == map: return  // a repeat
        case .map(let held) where held.version >= map.version:
          throw NVMeCSIError.failedPrecondition(
            "volume \(volume) holds version \(held.version) of its set's leg map, not older than version"
              + " \(map.version) with other content: another repair won; read the map again")
        case .map: break
        case .foreign:
          throw NVMeCSIError.failedPrecondition(
            "volume \(volume)'s leg map block (at \(LegMap.blockOffset) bytes) holds something that is not a leg map:"
              + " left as it is")
        }
        try UncachedWrite.bytes(block, at: LegMap.blockOffset, to: leg.path)
        logger.info(
          "leg map written", metadata: ["volume": "\(volume)", "set": "\(map.set)", "version": "\(map.version)"])
      }
    }
  }

  /// Where a leg's map block is and which set the leg belongs to, from its record's
  /// `replica/index` and `replica/generation`; `failedPrecondition` for a single-copy
  /// volume (that block is its data), a record whose attributes are not a leg's, or
  /// data too small or missing.
  private func mapBlock(of record: VolumeRecord) throws(NVMeCSIError) -> (path: String, set: ObjectUUID) {
    let volume = record.uuid
    guard let indexValue = record.attributes[ReplicaLayout.indexAttribute] else {
      throw .failedPrecondition(
        "volume \(volume) is not a leg of a replicated volume (no \(ReplicaLayout.indexAttribute) attribute):"
          + " it has no leg map block, that block is its data")
    }
    let generationValue = record.attributes[ReplicaLayout.generationAttribute]
    guard let index = Int(indexValue), (0..<ReplicaLayout.maximumReplicas).contains(index),
      let generation = generationValue.map({ Int($0) }) ?? 0,  // absent: 0; not a number: nil
      (0...LegMap.maximumGeneration).contains(generation)
    else {
      throw .failedPrecondition(
        "volume \(volume)'s record has \(ReplicaLayout.indexAttribute)=\(quoted(indexValue)) and"
          + " \(ReplicaLayout.generationAttribute)=\(quoted(generationValue ?? "")), not a leg's index and generation")
    }
    let path = store.devicePath(of: volume)
    guard record.sizeBytes >= ReplicaLayout.dataOffsetBytes else {
      throw .failedPrecondition(
        "volume \(volume) is \(record.sizeBytes) bytes, smaller than a leg's \(ReplicaLayout.dataOffsetBytes)-byte"
          + " metadata area: it has no leg map block")
    }
    guard store.hasData(volume) else {
      throw .failedPrecondition("volume \(volume)'s backing data \(path) is missing on the target")
    }
    return (path, ReplicaLayout.legUUID(of: volume, index: index, generation: generation))
  }

  // MARK: placements

  public func placement(of name: String) async throws(NVMeCSIError) -> NamePlacement {
    try validateName(name, what: "volume")
    let here = names.withLock { $0[name] != nil }
    return NamePlacement(target: try journal().placement(of: name), volumeHere: here)
  }

  public func reservePlacements(_ requested: [Placement]) async throws(NVMeCSIError) -> [Placement] {
    guard requested.count <= Placements.maximumBatch else {
      throw .invalidArgument("\(requested.count) placements in one call: at most \(Placements.maximumBatch)")
    }
    for placement in requested { try validateName(placement.name, what: "volume") }
    let journal = try journal()
    return try await onPool { () throws(NVMeCSIError) in try journal.reserve(requested) }
  }

  public func releasePlacement(of name: String, on target: TargetName) async throws(NVMeCSIError) {
    try validateName(name, what: "volume")
    let journal = try journal()
    try await onPool { () throws(NVMeCSIError) in try journal.release(name, on: target) }
  }

  private func journal() throws(NVMeCSIError) -> PlacementJournal {
    guard let journal = placements.withLock({ $0 }) else {
      throw .unavailable("the target is starting: its placement journal is not loaded yet")
    }
    return journal
  }

  // MARK: internals

  /// The volume with this name, found through the name index.
  private func volumeRecord(named name: String) throws(NVMeCSIError) -> VolumeRecord? {
    guard let uuid = names.withLock({ $0[name] }) else { return nil }
    // Deleted meanwhile (a delete holds the volume's lock, not its name's): not there.
    guard let record = try store.volume(uuid), record.name == name else { return nil }
    return record
  }

  private func onPool<T: Sendable>(_ body: @escaping @Sendable () throws(NVMeCSIError) -> T) async throws(NVMeCSIError)
    -> T
  {
    try await pool.run(body)
  }

  /// Counts `bytes` as provisioned if the overcommit ratio allows them.
  private func reserve(_ bytes: UInt64, total: UInt64) throws(NVMeCSIError) {
    let limit = Capacity.provisioningLimit(total: total, overcommitRatio: overcommitRatio)
    let ratio = overcommitRatio
    try provisioned.withLock { (current: inout UInt64) throws(NVMeCSIError) in
      let (after, overflow) = current.addingReportingOverflow(bytes)
      guard !overflow, after <= limit else {
        throw .resourceExhausted(
          "target has \(current) of \(limit) bytes provisioned (store \(total) bytes, overcommit ratio \(ratio)): "
            + "\(bytes) more bytes do not fit; free space, raise --overcommit-ratio or add a target")
      }
      current = after
    }
  }

  private func release(_ bytes: UInt64) {
    adjust(by: -Int64(clamping: bytes))
  }

  /// Corrects the count by what the store really allocated (it may round sizes up).
  private func adjust(by bytes: Int64) {
    guard bytes != 0 else { return }
    let drifted = provisioned.withLock { current -> Bool in
      let magnitude = bytes.magnitude
      if bytes > 0 {
        current = current.addingReportingOverflow(magnitude).partialValue
        return false
      }
      defer { current = current >= magnitude ? current - magnitude : 0 }
      return current < magnitude
    }
    if drifted { logger.warning("provisioned bytes would drop below zero: the count drifted; a restart recounts") }
  }

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
      if snapshotIndex.isStale { snapshotIndex.load(try store.snapshots()) }
      guard let snapshot = snapshotIndex.snapshot(s) else {
        throw .notFound("snapshot \(s) does not exist")
      }
      return snapshot.sizeBytes
    }
  }

  /// Limits on what the controller keeps with a volume or snapshot: records stay small,
  /// so a list of many stays far below gRPC's message limit.
  static let maximumAttributes = 64
  static let maximumAttributeKeyBytes = 256
  static let maximumAttributeValueBytes = 4096

  private func validateAttributes(_ attributes: [String: String], of what: String = "volume") throws(NVMeCSIError) {
    guard attributes.count <= Self.maximumAttributes else {
      throw .invalidArgument(
        "\(attributes.count) attributes: at most \(Self.maximumAttributes) are kept with a \(what)")
    }
    for (key, value) in attributes {
      guard !key.isEmpty, key.utf8.count <= Self.maximumAttributeKeyBytes,
        value.utf8.count <= Self.maximumAttributeValueBytes
      else {
        throw .invalidArgument(
          "attribute \(quoted(key)): keys must be 1-\(Self.maximumAttributeKeyBytes) bytes and values at most"
            + " \(Self.maximumAttributeValueBytes) bytes")
      }
    }
  }

  /// Sizes must fit a file offset (and so every store): larger is `outOfRange`, never a trap.
  private func validateSize(_ size: UInt64) throws(NVMeCSIError) {
    guard size > 0 else { throw .invalidArgument("volume size must be positive") }
    guard size <= Capacity.maximumSize else {
      throw .outOfRange("volume size \(size) bytes is above the largest supported (\(Capacity.maximumSize) bytes)")
    }
  }

  /// Names are free text from the CO, stored only inside records; still bounded and
  /// free of control characters so they cannot forge log lines or bloat records.
  private func validateName(_ name: String, what: String) throws(NVMeCSIError) {
    guard !name.isEmpty else { throw .invalidArgument("\(what) name is empty") }
    guard name.utf8.count <= ReplicaLayout.maximumNameBytes else {
      throw .invalidArgument("\(what) name is longer than \(ReplicaLayout.maximumNameBytes) bytes")
    }
    guard !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
      throw .invalidArgument("\(what) name \(quoted(name)) contains control characters")
    }
  }
}

/// The host NQNs published on this target and the nodes that use them. Two node IDs
/// with one host NQN are two machines with one NVMe identity (a cloned image): the
/// kernel cannot tell them apart, so a second node is refused at publish while the
/// first still has any volume here.
/// Volume names to UUIDs (one UUID a name), and those UUIDs in order.
struct VolumeNames: Sendable {
  private var byName: [String: ObjectUUID] = [:]
  private(set) var ordered = SortedUUIDs()

  init() {}

  init(_ records: [VolumeRecord]) {
    for record in records { byName[record.name] = record.uuid }
    ordered = SortedUUIDs(byName.values)
  }

  subscript(name: String) -> ObjectUUID? { byName[name] }

  var count: Int { byName.count }

  mutating func set(_ name: String, _ uuid: ObjectUUID) {
    if let old = byName.updateValue(uuid, forKey: name), old != uuid { ordered.remove(old) }
    ordered.insert(uuid)
  }

  /// Forgets the name if it is this volume's.
  mutating func remove(_ name: String, ifUUID uuid: ObjectUUID) {
    guard byName[name] == uuid else { return }
    byName[name] = nil
    ordered.remove(uuid)
  }
}

final class HostRegistry: Sendable {
  /// Host NQN → node → how many of its publications are recorded.
  private let users = Mutex<[String: [NodeID: Int]]>([:])

  /// Recounts from the records; returns the NQNs that several nodes already share
  /// (recorded before this check existed) for the caller to report.
  @discardableResult
  func rebuild(from records: [VolumeRecord]) -> [String] {
    users.withLock { users in
      users = [:]
      for publication in records.flatMap(\.publications) {
        users[publication.hostNQN.value, default: [:]][publication.nodeID, default: 0] += 1
      }
      return users.filter { $0.value.count > 1 }.map(\.key).sorted()
    }
  }

  /// Counts one more publication of `node`'s host NQN; refused while another node uses it.
  func claim(_ node: NodeID) throws(NVMeCSIError) {
    try users.withLock { (users: inout [String: [NodeID: Int]]) throws(NVMeCSIError) in
      let nqn = node.hostNQN.value
      if let other = users[nqn]?.keys.filter({ $0 != node }).min(by: { $0.description < $1.description }) {
        throw .failedPrecondition(
          "host NQN \(nqn) of node \(node) is already used by node \(other): two machines share one NVMe host"
            + " identity (a cloned image?); give each its own /etc/nvme/hostnqn and hostid")
      }
      users[nqn, default: [:]][node, default: 0] += 1
    }
  }

  /// Publications recorded, and the distinct host NQNs they grant.
  func counts() -> (publications: Int, hosts: Int) {
    users.withLock { users in (users.values.reduce(0) { $0 + $1.values.reduce(0, +) }, users.count) }
  }

  func release(_ node: NodeID) {
    users.withLock { users in
      let nqn = node.hostNQN.value
      guard let count = users[nqn]?[node] else { return }
      users[nqn]?[node] = count > 1 ? count - 1 : nil
      if users[nqn]?.isEmpty == true { users[nqn] = nil }
    }
  }
}

/// Counts of what a target holds, for metrics.
public struct TargetStatistics: Sendable, Equatable {
  public var volumes: Int
  public var quarantined: Int
  public var snapshots: Int
  /// Volume-to-node grants recorded (each an allowed host in nvmet).
  public var publications: Int
  /// Distinct host NQNs with access to any volume here.
  public var hosts: Int
  public var provisionedBytes: UInt64
}
