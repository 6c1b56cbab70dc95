/// One operation at a time per key (a volume name, a volume ID), different keys
/// concurrently. A second operation on a busy key does not queue: it fails at once
/// with `aborted` ("an operation is pending for …"), the CSI answer that makes the
/// caller retry later. So nothing waits behind a hung operation, and a waiter can
/// never be left queued forever.
///
/// Use `withLock(_:_:)`; there is deliberately no lock()/unlock() pair to misuse.
public actor KeyedLock<Key: Hashable & Sendable & CustomStringConvertible> {
  /// Busy keys; true for a background holder (`withBackgroundLock`), which requests wait for.
  private var holders: [Key: Bool] = [:]

  public init() {}

  public func withLock<T: Sendable>(
    _ key: Key, _ body: @Sendable () async throws -> T
  ) async throws -> T {
    // A background check is short and not the caller's business: wait it out, bounded.
    let deadline = ContinuousClock.now + Self.backgroundWait
    while holders[key] == true && ContinuousClock.now < deadline {
      try? await Task.sleep(for: .milliseconds(5))
    }
    guard holders[key] == nil else {
      throw NVMeCSIError.aborted("an operation is pending for \(key): retry when it has finished")
    }
    holders[key] = false
    defer { holders[key] = nil }
    return try await body()
  }

  /// For background work (a periodic check): nil, without running `body`, when the key
  /// is busy; while it runs, requests for the key wait for it (up to `backgroundWait`)
  /// instead of being refused.
  public func withBackgroundLock<T: Sendable>(
    _ key: Key, _ body: @Sendable () async throws -> T
  ) async throws -> T? {
    guard holders[key] == nil else { return nil }
    holders[key] = true
    defer { holders[key] = nil }
    return try await body()
  }

  /// How long a request waits for a background holder before it is refused.
  public static var backgroundWait: Duration { .seconds(10) }
}
