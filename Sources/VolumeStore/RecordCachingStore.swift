import NVMeCSICore
import Synchronization

/// A `VolumeStore` whose volume records are also kept in memory, so that reading one
/// (every publish, lookup and listed volume) is a dictionary lookup instead of a file
/// read and a JSON decode (or an `lvs` run). The store underneath stays the truth:
/// - the cache is filled by `volumes()` (the target calls it at start) and, until then,
///   every read goes to the store;
/// - each mutation passed on updates the cache once the store has committed it;
/// - a mutation that fails may or may not have reached the disk, so that volume's
///   record is read again from the store; `reconcile()` (which may move records
///   aside) fills the cache with the records it reconciled when the store reports
///   them (`StoreRepairs.volumes`), else empties it until the next `volumes()`.
/// Snapshots are not cached: the target keeps its own snapshot index.
public final class RecordCachingStore: VolumeStore {
  private let base: any VolumeStore

  private struct Cache {
    /// nil until `volumes()` has read every record.
    var records: [ObjectUUID: VolumeRecord]?
    /// Counts mutations, so that a `volumes()` that raced one does not install what it
    /// read before it.
    var generation = 0
  }
  private let cache = Mutex(Cache())

  public init(_ base: any VolumeStore) { self.base = base }

  public var kind: String { base.kind }
  public var sharesBlocks: Bool { base.sharesBlocks }
  public var isNew: Bool { base.isNew }

  public func capacity() throws(NVMeCSIError) -> StoreCapacity { try base.capacity() }

  public func volumes() throws(NVMeCSIError) -> [VolumeRecord] {
    let cached = cache.withLock { cache in cache.records.map { Array($0.values) } }
    if let cached { return cached.sorted { $0.uuid < $1.uuid } }
    let generation = cache.withLock { $0.generation }
    let records = try base.volumes()
    cache.withLock { cache in
      guard cache.generation == generation else { return }
      cache.records = Dictionary(records.map { ($0.uuid, $0) }, uniquingKeysWith: { first, _ in first })
    }
    return records
  }

  public func volume(_ uuid: ObjectUUID) throws(NVMeCSIError) -> VolumeRecord? {
    let cached: VolumeRecord?? = cache.withLock { cache in cache.records.map { $0[uuid] } }
    if let cached { return cached }
    return try base.volume(uuid)
  }

  public func createVolume(_ record: VolumeRecord) throws(NVMeCSIError) -> VolumeRecord {
    try mutating(record.uuid, { () throws(NVMeCSIError) in try base.createVolume(record) }, leaves: { $0 })
  }

  public func updateVolume(_ record: VolumeRecord) throws(NVMeCSIError) {
    try mutating(record.uuid, { () throws(NVMeCSIError) in try base.updateVolume(record) }, leaves: { record })
  }

  public func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) throws(NVMeCSIError) -> VolumeRecord {
    try mutating(uuid, { () throws(NVMeCSIError) in try base.expandVolume(uuid, to: sizeBytes) }, leaves: { $0 })
  }

  public func deleteVolume(_ uuid: ObjectUUID) throws(NVMeCSIError) {
    try mutating(uuid, { () throws(NVMeCSIError) in try base.deleteVolume(uuid) }, leaves: { nil })
  }

  public func devicePath(of uuid: ObjectUUID) -> String { base.devicePath(of: uuid) }
  public func hasData(_ uuid: ObjectUUID) -> Bool { base.hasData(uuid) }

  public func snapshots() throws(NVMeCSIError) -> [SnapshotRecord] { try base.snapshots() }
  public func createSnapshot(_ record: SnapshotRecord) throws(NVMeCSIError) -> SnapshotRecord {
    try base.createSnapshot(record)
  }
  public func deleteSnapshot(_ uuid: ObjectUUID) throws(NVMeCSIError) { try base.deleteSnapshot(uuid) }

  public func quarantinedVolumes() throws(NVMeCSIError) -> [ObjectUUID: String] { try base.quarantinedVolumes() }

  public func reconcile() throws(NVMeCSIError) -> StoreRepairs {
    let repairs: StoreRepairs
    do { repairs = try base.reconcile() } catch {
      cache.withLock { cache in
        cache.records = nil
        cache.generation += 1
      }
      throw error
    }
    // A start reads every record once: reconciling them, not again for the cache.
    cache.withLock { cache in
      cache.records = repairs.volumes.map { records in
        Dictionary(records.map { ($0.uuid, $0) }, uniquingKeysWith: { first, _ in first })
      }
      cache.generation += 1
    }
    return repairs
  }

  /// Runs a mutation of volume `uuid` on the store, then caches the record it `leaves`
  /// (nil: the volume is gone), or after a failure what the store now holds.
  private func mutating<R>(
    _ uuid: ObjectUUID, _ body: () throws(NVMeCSIError) -> R, leaves: (R) -> VolumeRecord?
  ) throws(NVMeCSIError) -> R {
    do {
      let answer = try body()
      cache.withLock { cache in
        cache.generation += 1
        cache.records?[uuid] = leaves(answer)
      }
      return answer
    } catch {
      let now = Result { () throws(NVMeCSIError) in try base.volume(uuid) }
      cache.withLock { cache in
        cache.generation += 1
        switch now {
        case .success(let record): cache.records?[uuid] = record
        case .failure: cache.records = nil  // unknown: every read goes to the store until `volumes()`
        }
      }
      throw error
    }
  }
}
