import Foundation
import NVMeCSICore
import Synchronization
import Testing

@Suite("Blocking pool")
struct BlockingPoolTests {
  @Test("Work runs on the pool and its result or error comes back")
  func results() async throws {
    let pool = BlockingPool(threads: 2)
    #expect(try await pool.run { () throws(NVMeCSIError) in 6 * 7 } == 42)
    await #expect(throws: NVMeCSIError.notFound("gone")) {
      try await pool.run { () throws(NVMeCSIError) -> Int in throw .notFound("gone") }
    }
    await pool.shutdown()
  }

  @Test("A caller cancelled while its work waits for a thread is Aborted, and the work never runs")
  func cancelledBeforeStart() async throws {
    let pool = BlockingPool(threads: 1)
    let release = DispatchSemaphore(value: 0)
    let ran = Mutex(false)
    // Hold the only thread.
    let holder = Task { try await pool.run { () throws(NVMeCSIError) in release.wait() } }
    try await Task.sleep(for: .milliseconds(50))
    let waiting = Task { try await pool.run { () throws(NVMeCSIError) in ran.withLock { $0 = true } } }
    try await Task.sleep(for: .milliseconds(50))
    waiting.cancel()
    await #expect(throws: NVMeCSIError.self) { try await waiting.value }
    do { try await waiting.value } catch let error as NVMeCSIError { #expect(error.kind == .aborted) }
    release.signal()
    try await holder.value
    // The cancelled work would have run right after the holder: give it the chance.
    #expect(try await pool.run { () throws(NVMeCSIError) in 1 } == 1)
    #expect(!ran.withLock { $0 })
    await pool.shutdown()
  }

  @Test("A caller cancelled after its work began waits for the work's own result")
  func cancelledAfterStart() async throws {
    let pool = BlockingPool(threads: 1)
    let started = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)
    let work = Task {
      try await pool.run { () throws(NVMeCSIError) -> String in
        started.signal()
        release.wait()
        return "finished"
      }
    }
    await withCheckedContinuation { continuation in
      DispatchQueue.global().async {
        started.wait()
        continuation.resume()
      }
    }
    work.cancel()
    release.signal()
    #expect(try await work.value == "finished")
    await pool.shutdown()
  }

  @Test("Cleanup work (runToEnd) runs even for a caller that was cancelled first")
  func runToEndIgnoresCancellation() async throws {
    let pool = BlockingPool(threads: 1)
    let ran = Mutex(false)
    let cleanup = Task {
      withUnsafeCurrentTask { $0?.cancel() }
      return try await pool.runToEnd { () throws(NVMeCSIError) in ran.withLock { $0 = true } }
    }
    try await cleanup.value
    #expect(ran.withLock { $0 })
    await pool.shutdown()
  }

  @Test("After shutdown, work is refused as Unavailable")
  func afterShutdown() async throws {
    let pool = BlockingPool(threads: 1)
    await pool.shutdown()
    do {
      _ = try await pool.run { () throws(NVMeCSIError) in 1 }
      Issue.record("work ran on a pool that was shut down")
    } catch {
      #expect(error.kind == .unavailable)
    }
  }
}
