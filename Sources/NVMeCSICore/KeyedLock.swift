/// Serializes work per key (a volume name, a volume ID) while letting different keys
/// run concurrently. Waiters queue in arrival order.
///
/// Use `withLock(_:_:)`; there is deliberately no lock()/unlock() pair to misuse.
public actor KeyedLock<Key: Hashable & Sendable> {
  private var holders: Set<Key> = []
  private var waiters: [Key: [CheckedContinuation<Void, Never>]] = [:]

  public init() {}

  public func withLock<T: Sendable>(
    _ key: Key, _ body: @Sendable () async throws -> T
  ) async throws -> T {
    await acquire(key)
    defer { release(key) }
    return try await body()
  }

  private func acquire(_ key: Key) async {
    if !holders.contains(key) {
      holders.insert(key)
      return
    }
    // Ownership passes directly from the releaser to the first waiter.
    await withCheckedContinuation { waiters[key, default: []].append($0) }
  }

  private func release(_ key: Key) {
    if var queue = waiters[key], !queue.isEmpty {
      let next = queue.removeFirst()
      waiters[key] = queue.isEmpty ? nil : queue
      next.resume()
    } else {
      holders.remove(key)
    }
  }
}
