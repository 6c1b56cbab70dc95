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
    /// Every UUID in `byUUID`, sorted: a page starts where a binary search puts it.
    /// (An insert or removal moves the tail of the array: a memmove of 16-byte
    /// entries, far below the cost of the store write it follows.)
    var ordered: [ObjectUUID] = []
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
      state.ordered = state.byUUID.keys.sorted()
    }
  }

  func insert(_ record: SnapshotRecord) {
    state.withLock { state in
      if state.byUUID.updateValue(record, forKey: record.uuid) == nil {
        state.ordered.insert(record.uuid, at: Self.firstIndex(notBelow: record.uuid, in: state.ordered))
      }
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
      let index = Self.firstIndex(notBelow: uuid, in: state.ordered)
      if index < state.ordered.count && state.ordered[index] == uuid { state.ordered.remove(at: index) }
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
      var start = 0
      if let startingAfter {
        start = Self.firstIndex(notBelow: startingAfter, in: state.ordered)
        if start < state.ordered.count && state.ordered[start] == startingAfter { start += 1 }
      }
      let end = start + min(max(limit, 0), state.ordered.count - start)
      return (state.ordered[start..<end].compactMap { state.byUUID[$0] }, end < state.ordered.count)
    }
  }

  var count: Int { state.withLock { $0.byUUID.count } }

  /// The index of the first UUID in `sorted` that is not below `uuid` (its count if none).
  private static func firstIndex(notBelow uuid: ObjectUUID, in sorted: [ObjectUUID]) -> Int {
    var low = 0
    var high = sorted.count
    while low < high {
      let middle = (low + high) / 2
      if sorted[middle] < uuid { low = middle + 1 } else { high = middle }
    }
    return low
  }
}
