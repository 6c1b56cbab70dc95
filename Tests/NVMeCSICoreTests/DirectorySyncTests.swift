import Dispatch
import Foundation
import NVMeCSICore
import Synchronization
import Testing

/// A directory's fsync for tests: records when each sync starts and ends, holds the
/// ones asked until released, fails the ones asked.
private final class RecordedSyncs: Sendable {
  let events = Mutex<[String]>([])
  private let held: Set<Int>
  private let failing: Set<Int>
  /// One gate per sync number (from 1).
  private let gates = (0...8).map { _ in DispatchSemaphore(value: 0) }

  init(holding held: Set<Int> = [], failing: Set<Int> = []) {
    self.held = held
    self.failing = failing
  }

  func sync(_ path: String) throws(NVMeCSIError) {
    let number = events.withLock { events in
      let number = events.count { $0.hasPrefix("start") } + 1
      events.append("start \(number)")
      return number
    }
    // Bounded: a test that fails must not hang the suite.
    if held.contains(number) { _ = gates[number].wait(timeout: .now() + 30) }
    events.withLock { $0.append("end \(number)") }
    if failing.contains(number) { throw .internalError("sync \(number) failed") }
  }

  func release(_ number: Int) { gates[number].signal() }
  func record(_ event: String) { events.withLock { $0.append(event) } }
  var syncCount: Int { events.withLock { events in events.count { $0.hasPrefix("start") } } }

  /// Waits (at most 10 s) until `count` syncs have started.
  func waitForStarts(_ count: Int) async {
    for _ in 0..<2000 where syncCount < count { try? await Task.sleep(for: .milliseconds(5)) }
  }
}

/// One blocking `sync()` on a thread of its own, as on a pool thread; the thread
/// starts at once (not when the cooperative pool gets to it).
private final class SyncCall: Sendable {
  private let outcome = Mutex<Result<Void, NVMeCSIError>?>(nil)

  init(_ directory: DirectorySync) {
    Thread.detachNewThread {
      let result = Result { () throws(NVMeCSIError) in try directory.sync() }
      self.outcome.withLock { $0 = result }
    }
  }

  /// Its result, once it returns (waits at most 30 s, then fails the test).
  func result() async -> Result<Void, NVMeCSIError> {
    for _ in 0..<6000 {
      if let result = outcome.withLock({ $0 }) { return result }
      try? await Task.sleep(for: .milliseconds(5))
    }
    return .failure(.internalError("sync() did not return within 30 s"))
  }
}

@Suite("Directory sync (group commit)")
struct DirectorySyncTests {
  @Test("A caller arriving while a sync runs returns only after a sync that started after its call")
  func waitsForALaterSync() async throws {
    let syncs = RecordedSyncs(holding: [1, 2])
    let directory = DirectorySync(path: "/dir", syncingWith: syncs.sync)
    let first = SyncCall(directory)
    await syncs.waitForStarts(1)
    syncs.record("second calls")
    let second = SyncCall(directory)
    try? await Task.sleep(for: .milliseconds(100))  // the second caller waits behind sync 1
    syncs.release(1)
    #expect(try await first.result().get() == ())
    await syncs.waitForStarts(2)
    syncs.release(2)
    #expect(try await second.result().get() == ())

    let events = syncs.events.withLock { $0 }
    let called = try #require(events.firstIndex(of: "second calls"))
    #expect(try #require(events.firstIndex(of: "start 1")) < called)
    let carrying = try #require(events.firstIndex(of: "start 2"), "no sync started after the second call")
    #expect(carrying > called)
    #expect(syncs.syncCount == 2)
  }

  @Test("Callers waiting behind a running sync share one sync")
  func waitersShareOneSync() async throws {
    let syncs = RecordedSyncs(holding: [1])
    let directory = DirectorySync(path: "/dir", syncingWith: syncs.sync)
    let first = SyncCall(directory)
    await syncs.waitForStarts(1)
    let waiters = (0..<8).map { _ in SyncCall(directory) }
    try? await Task.sleep(for: .milliseconds(200))  // all eight are waiting by now
    syncs.release(1)
    #expect(try await first.result().get() == ())
    for waiter in waiters { await #expect(throws: Never.self) { try await waiter.result().get() } }
    // Eight syncs one by one without sharing; one after the first when they share (a
    // caller slower than the pause above would add one more).
    #expect(syncs.syncCount <= 3)
  }

  @Test("A failed sync fails every caller waiting for it; the next call syncs afresh")
  func failureReachesItsWaiters() async throws {
    let syncs = RecordedSyncs(holding: [1, 2], failing: [2])
    let directory = DirectorySync(path: "/dir", syncingWith: syncs.sync)
    let first = SyncCall(directory)
    await syncs.waitForStarts(1)
    let waiters = [SyncCall(directory), SyncCall(directory)]
    try? await Task.sleep(for: .milliseconds(100))  // both wait behind sync 1
    syncs.release(1)
    #expect(try await first.result().get() == ())
    await syncs.waitForStarts(2)
    syncs.release(2)
    for waiter in waiters {
      await #expect(throws: NVMeCSIError.self) { try await waiter.result().get() }
    }
    #expect(throws: Never.self) { try directory.sync() }
    #expect(syncs.syncCount == 3)
  }

  @Test("Without contention every call runs its own sync of the directory")
  func aloneEachCallSyncs() throws {
    let syncs = RecordedSyncs()
    let directory = DirectorySync(path: "/dir", syncingWith: syncs.sync)
    for _ in 0..<3 { try directory.sync() }
    #expect(syncs.syncCount == 3)
  }
}
