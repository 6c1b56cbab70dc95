import NVMeCSICore
import Synchronization
import TargetContract

/// The target's snapshots in memory (loaded at start, kept in step with every create
/// and delete): finding one by name or UUID, or counting them, reads no record.
/// Snapshot records never change after they are written.
final class SnapshotIndex: Sendable {
  private struct State {
    var byUUID: [ObjectUUID: SnapshotRecord] = [:]
    var byName: [String: ObjectUUID] = [:]
    /// A store call failed part-way and the index may not match the store: reload
    /// before the next lookup.
    var stale = false
  }
  private let state = Mutex(State())

  func load(_ records: [SnapshotRecord]) {
    state.withLock { state in
      state = State()
      for record in records { Self.insert(record, into: &state) }
    }
  }

  func insert(_ record: SnapshotRecord) { state.withLock { Self.insert(record, into: &$0) } }

  func invalidate() { state.withLock { $0.stale = true } }

  var isStale: Bool { state.withLock { $0.stale } }

  func remove(_ uuid: ObjectUUID) {
    state.withLock { state in
      if let record = state.byUUID.removeValue(forKey: uuid), state.byName[record.name] == uuid {
        state.byName[record.name] = nil
      }
    }
  }

  func named(_ name: String) -> SnapshotRecord? {
    state.withLock { state in state.byName[name].flatMap { state.byUUID[$0] } }
  }

  func snapshot(_ uuid: ObjectUUID) -> SnapshotRecord? { state.withLock { $0.byUUID[uuid] } }

  /// Those matching `filter`; a filter by UUID or name reads one entry.
  func matching(_ filter: SnapshotFilter) -> [SnapshotRecord] {
    state.withLock { state in
      let candidates: [SnapshotRecord]
      if let uuid = filter.uuid {
        candidates = state.byUUID[uuid].map { [$0] } ?? []
      } else if let name = filter.name {
        candidates = state.byName[name].flatMap { state.byUUID[$0] }.map { [$0] } ?? []
      } else {
        candidates = Array(state.byUUID.values)
      }
      return candidates.filter(filter.matches)
    }
  }

  var count: Int { state.withLock { $0.byUUID.count } }

  private static func insert(_ record: SnapshotRecord, into state: inout State) {
    state.byUUID[record.uuid] = record
    state.byName[record.name] = record.uuid
  }
}
