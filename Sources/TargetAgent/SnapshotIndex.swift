import NVMeCSICore
import Synchronization
import TargetContract

/// The target's snapshots in memory (loaded at start, kept in step with every create
/// and delete): finding one by name, UUID or source volume, counting them, or reading a
/// page of them in UUID order reads no record and costs what it returns.
/// Snapshot records never change after they are written.
final class SnapshotIndex: Sendable {
  private struct State {
    var byUUID: [ObjectUUID: SnapshotRecord] = [:]
    var byName: [String: ObjectUUID] = [:]
    var bySource: [ObjectUUID: Set<ObjectUUID>] = [:]
    /// Every UUID in `byUUID`, in order.
    var ordered = SortedUUIDs()
    /// A store call failed part-way and the index may not match the store: reload
    /// before the next lookup.
    var stale = false
  }
  private let state = Mutex(State())

  func load(_ records: [SnapshotRecord]) {
    state.withLock { state in
      state = State()
      for record in records {
        state.byUUID[record.uuid] = record
        state.byName[record.name] = record.uuid
        state.bySource[record.sourceVolume, default: []].insert(record.uuid)
      }
      state.ordered = SortedUUIDs(state.byUUID.keys)
    }
  }

  func insert(_ record: SnapshotRecord) {
    state.withLock { state in
      state.byUUID[record.uuid] = record
      state.ordered.insert(record.uuid)
      state.byName[record.name] = record.uuid
      state.bySource[record.sourceVolume, default: []].insert(record.uuid)
    }
  }

  func invalidate() { state.withLock { $0.stale = true } }

  var isStale: Bool { state.withLock { $0.stale } }

  func remove(_ uuid: ObjectUUID) {
    state.withLock { state in
      guard let record = state.byUUID.removeValue(forKey: uuid) else { return }
      if state.byName[record.name] == uuid { state.byName[record.name] = nil }
      state.bySource[record.sourceVolume]?.remove(uuid)
      if state.bySource[record.sourceVolume]?.isEmpty == true { state.bySource[record.sourceVolume] = nil }
      state.ordered.remove(uuid)
    }
  }

  func named(_ name: String) -> SnapshotRecord? {
    state.withLock { state in state.byName[name].flatMap { state.byUUID[$0] } }
  }

  func snapshot(_ uuid: ObjectUUID) -> SnapshotRecord? { state.withLock { $0.byUUID[uuid] } }

  /// Those matching `filter`; a filter by UUID, name or source volume reads only the
  /// entries it matches.
  func matching(_ filter: SnapshotFilter) -> [SnapshotRecord] {
    state.withLock { state in
      let candidates: [SnapshotRecord]
      if let uuid = filter.uuid {
        candidates = state.byUUID[uuid].map { [$0] } ?? []
      } else if let name = filter.name {
        candidates = state.byName[name].flatMap { state.byUUID[$0] }.map { [$0] } ?? []
      } else if let source = filter.sourceVolume {
        candidates = (state.bySource[source] ?? []).compactMap { state.byUUID[$0] }
      } else {
        candidates = Array(state.byUUID.values)
      }
      return candidates.filter(filter.matches)
    }
  }

  /// At most `limit` snapshots in UUID order after `startingAfter` (nil: from the
  /// start), and whether more follow: a binary search, then the page.
  func page(after startingAfter: ObjectUUID?, limit: Int) -> (snapshots: [SnapshotRecord], more: Bool) {
    state.withLock { state in
      let page = state.ordered.page(after: startingAfter, limit: limit)
      return (page.uuids.compactMap { state.byUUID[$0] }, page.more)
    }
  }

  var count: Int { state.withLock { $0.byUUID.count } }
}
