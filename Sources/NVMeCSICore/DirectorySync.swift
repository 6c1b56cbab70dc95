import Foundation

/// Makes the changes to one directory's entries durable (renames, creations, removals),
/// sharing each fsync of the directory among every caller waiting for one: group
/// commit for a store's records, so concurrent creates do not each pay a directory
/// sync (on a loop-mounted XFS, 16 concurrent creates spent half the machine's CPU in
/// the kernel, syncing).
///
/// A caller's change is durable once a sync that *started* after it has succeeded: a
/// sync already running when the caller asks may have begun before the change, so the
/// caller waits for the next one, which it may run itself. Blocks: call it where
/// blocking work runs (a `BlockingPool` thread).
public final class DirectorySync: @unchecked Sendable {  // state guarded by `condition`
  public let path: String
  /// fsync of the directory (tests count and hold them).
  private let syncDirectory: @Sendable (String) throws(NVMeCSIError) -> Void
  private let condition = NSCondition()
  /// Syncs started and finished; each one is numbered by the count at its start.
  private var started: UInt64 = 0
  private var finished: UInt64 = 0
  private var running = false
  /// The latest sync that failed, and why.
  private var failure: (sync: UInt64, error: NVMeCSIError)?

  public init(
    path: String,
    syncingWith syncDirectory: @escaping @Sendable (String) throws(NVMeCSIError) -> Void = DurableFile.syncDirectory
  ) {
    self.path = path
    self.syncDirectory = syncDirectory
  }

  /// Returns once every change made to the directory before the call is durable.
  /// Throws when a sync that could carry the caller's change failed (also when a later
  /// one failed: an error after a success only makes the caller repeat itself).
  public func sync() throws(NVMeCSIError) {
    condition.lock()
    defer { condition.unlock() }
    let needed = started + 1
    while finished < needed {
      if running {
        condition.wait()
        continue
      }
      running = true
      started += 1
      let number = started
      condition.unlock()
      let outcome = Result { () throws(NVMeCSIError) in try syncDirectory(path) }
      condition.lock()
      running = false
      finished = number
      if case .failure(let error) = outcome { failure = (number, error) }
      condition.broadcast()
    }
    if let failure, failure.sync >= needed { throw failure.error }
  }
}
