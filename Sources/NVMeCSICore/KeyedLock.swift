/// One operation at a time per key (a volume name, a volume ID), different keys
/// concurrently. A second operation on a busy key does not queue: it fails at once
/// with `aborted` ("an operation is pending for …"), the CSI answer that makes the
/// caller retry later. So nothing waits behind a hung operation, and a waiter can
/// never be left queued forever.
///
/// Use `withLock(_:_:)`; there is deliberately no lock()/unlock() pair to misuse.
public actor KeyedLock<Key: Hashable & Sendable & CustomStringConvertible> {
  private var holders: Set<Key> = []

  public init() {}

  public func withLock<T: Sendable>(
    _ key: Key, _ body: @Sendable () async throws -> T
  ) async throws -> T {
    guard holders.insert(key).inserted else {
      throw NVMeCSIError.aborted("an operation is pending for \(key): retry when it has finished")
    }
    defer { holders.remove(key) }
    return try await body()
  }
}
