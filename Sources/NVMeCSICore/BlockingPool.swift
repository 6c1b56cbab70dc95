import NIOPosix
import Synchronization

/// Where blocking work runs: file I/O with fsync, full copies of volumes, mount(2),
/// external tools, libnvme. A bounded pool of threads of its own, so that blocking
/// never starves Swift's cooperative pool, which serves every RPC (with 4 concurrent
/// 1 GiB copies on it, a trivial GetInfo once waited 9.8 s).
///
/// A caller cancelled while its work waits for a thread is answered at once (Aborted)
/// and the work never starts; work that has started runs to its end (a syscall cannot
/// be taken back) and its caller waits for it, keeping its locks.
/// One pool per process, made by the command that runs the role and handed down.
public final class BlockingPool: Sendable {
  private let pool: NIOThreadPool
  /// The thread counts a role's `--blocking-threads` accepts.
  public static let threadCounts: ClosedRange<Int> = 1...256

  public init(threads: Int) {
    pool = NIOThreadPool(numberOfThreads: max(1, threads))
    pool.start()
  }

  /// Runs `body` on a pool thread and returns its result.
  public func run<T: Sendable>(_ body: @escaping @Sendable () throws(NVMeCSIError) -> T) async throws(NVMeCSIError)
    -> T
  {
    try await run(cancellable: true, body)
  }

  /// Like `run`, but the work starts even when the caller was cancelled: for undo and
  /// cleanup steps, which must happen whatever became of the request.
  public func runToEnd<T: Sendable>(_ body: @escaping @Sendable () throws(NVMeCSIError) -> T)
    async throws(NVMeCSIError) -> T
  {
    try await run(cancellable: false, body)
  }

  private func run<T: Sendable>(cancellable: Bool, _ body: @escaping @Sendable () throws(NVMeCSIError) -> T)
    async throws(NVMeCSIError) -> T
  {
    let waiter = Waiter<T>()
    let result = await withTaskCancellationHandler {
      await withCheckedContinuation { continuation in
        guard waiter.wait(continuation) else { return }
        pool.submit { state in
          guard state == .active else {
            return waiter.finish(.failure(.unavailable("the blocking-work pool is shut down: the process is stopping")))
          }
          // Cancelled meanwhile: the caller has its answer, and the work must not start.
          guard waiter.begin() else { return }
          waiter.finish(Result { () throws(NVMeCSIError) in try body() })
        }
      }
    } onCancel: {
      if cancellable { waiter.cancel(.aborted("the call was cancelled before its work started")) }
    }
    return try result.get()
  }

  /// Runs `body` on a pool thread without waiting; `active` is false when the pool is
  /// stopping (or the work was cancelled) and `body` must only report that.
  public func execute(_ body: @escaping @Sendable (_ active: Bool) -> Void) {
    pool.submit { state in body(state == .active) }
  }

  /// Stops the threads once running work has finished; queued work is answered
  /// Unavailable.
  public func shutdown() async {
    try? await pool.shutdownGracefully()
  }
}

/// One caller waiting for its work, answered exactly once: by the work, by the pool
/// shutting down, or by cancellation, which counts only before the work has begun.
private final class Waiter<T: Sendable>: Sendable {
  private typealias Continuation = CheckedContinuation<Result<T, NVMeCSIError>, Never>
  private enum State {
    case idle
    case waiting(Continuation)
    case running(Continuation)
    case finished(Result<T, NVMeCSIError>)
  }
  private let state = Mutex<State>(.idle)

  /// Stores the continuation; false (and answered at once) when already cancelled.
  func wait(_ continuation: CheckedContinuation<Result<T, NVMeCSIError>, Never>) -> Bool {
    let early: Result<T, NVMeCSIError>? = state.withLock { state in
      if case .finished(let result) = state { return result }
      state = .waiting(continuation)
      return nil
    }
    if let early { continuation.resume(returning: early) }
    return early == nil
  }

  /// Marks the work as begun; false when the caller was answered already.
  func begin() -> Bool {
    state.withLock { state in
      guard case .waiting(let continuation) = state else { return false }
      state = .running(continuation)
      return true
    }
  }

  /// Answers the caller unless the work has begun (it then answers itself).
  func cancel(_ error: NVMeCSIError) {
    finish(.failure(error), evenIfRunning: false)
  }

  func finish(_ result: Result<T, NVMeCSIError>, evenIfRunning: Bool = true) {
    let continuation: Continuation? = state.withLock { state in
      switch state {
      case .idle:
        state = .finished(result)
        return nil
      case .waiting(let continuation):
        state = .finished(result)
        return continuation
      case .running(let continuation):
        guard evenIfRunning else { return nil }
        state = .finished(result)
        return continuation
      case .finished: return nil
      }
    }
    continuation?.resume(returning: result)
  }
}
