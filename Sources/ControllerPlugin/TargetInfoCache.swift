import Logging
import NVMeCSICore
import Synchronization
import TargetContract

/// What the targets last said about their free space, for choosing where a new volume
/// goes: asking every candidate on every CreateVolume would cost a round trip per
/// target per create. An answer is used for `maximumAge`, and what the controller
/// creates meanwhile is taken off it, so a burst of creates still spreads by free
/// space. Only a choice rests on it: the target checks its space itself and refuses a
/// volume that does not fit (then its entry is dropped and the next create asks again).
final class TargetInfoCache: Sendable {
  let maximumAge: Duration
  private struct Entry {
    var info: TargetInfo
    var asked: ContinuousClock.Instant
  }
  private let entries = Mutex<[TargetName: Entry]>([:])

  init(maximumAge: Duration = .seconds(2)) { self.maximumAge = maximumAge }

  /// Each target's info, fresh enough, asking those whose answer is older (at once);
  /// a target that does not answer is logged and left out.
  func info(of targets: [StorageTarget], in set: TargetSet, logger: Logger) async
    -> [(target: StorageTarget, info: TargetInfo)]
  {
    let now = ContinuousClock.now
    let known = entries.withLock { entries in
      targets.compactMap { target in
        entries[target.name].flatMap { now - $0.asked < maximumAge ? (target.name, $0.info) : nil }
      }
    }
    let fresh = Dictionary(uniqueKeysWithValues: known)
    let stale = targets.filter { fresh[$0.name] == nil }
    let asked = await set.reachableInfo(stale, logger: logger)
    entries.withLock { entries in
      for (target, info) in asked { entries[target.name] = Entry(info: info, asked: now) }
    }
    let answers = Dictionary(uniqueKeysWithValues: asked.map { ($0.target.name, $0.info) })
    return targets.compactMap { target in (fresh[target.name] ?? answers[target.name]).map { (target, $0) } }
  }

  /// A volume of `bytes` was created on `target`: its free space is that much less.
  func charge(_ bytes: UInt64, to target: TargetName) {
    entries.withLock { entries in
      guard var entry = entries[target] else { return }
      // Provisioned only: a new thin volume takes no physical space yet.
      entry.info.provisionedBytes = entry.info.provisionedBytes.addingReportingOverflow(bytes).partialValue
      entries[target] = entry
    }
  }

  /// Runs a create on `target` and keeps this cache honest: a refusal for want of
  /// space, or no answer, forgets what the target said (it is asked next time, and left
  /// out while it does not answer), and what a new volume takes (`newBytes`, nil when
  /// the volume existed) is charged to it.
  func creating<Result>(
    on target: TargetName, _ create: () async throws -> Result, charging newBytes: (Result) -> UInt64?
  ) async throws -> Result {
    let result: Result
    do { result = try await create() } catch let error as NVMeCSIError
      where error.kind == .resourceExhausted || error.kind == .unavailable
    {
      forget(target)
      throw error
    }
    if let bytes = newBytes(result) { charge(bytes, to: target) }
    return result
  }

  /// Forgets what a target said (it refused a volume for want of space, or is lost).
  func forget(_ target: TargetName) { _ = entries.withLock { $0.removeValue(forKey: target) } }
}
