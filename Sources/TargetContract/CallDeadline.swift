import GRPCCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NVMeCSICore

/// Bounds each call to a target in time: a hung target must not hang the sidecars.
///
/// Not grpc-swift's `CallOptions.timeout`: that races every call against a sleeping
/// child task, which measured 0.19 ms per call on the controller, and a cancelled
/// `Task.sleep` stays queued until its time comes, holding about 1.7 KB per call for
/// the full timeout (the controller's memory grew with calls per second × 30 s). A
/// timer on an event loop is dropped the moment the call answers.
struct CallDeadline: Sendable {
  let timeout: Duration
  /// Where the timers run, and the calls' task executor (nil: the default one).
  let timers: any EventLoop
  let executor: (any TaskExecutor)?

  init(timeout: Duration, eventLoop: RPCEventLoop?) {
    self.timeout = timeout
    timers = eventLoop?.loop ?? MultiThreadedEventLoopGroup.singleton.any()
    executor = eventLoop
  }

  /// Runs `call`, cancelling it when the timeout passes first: it then throws
  /// `deadlineExceeded`. Cancelling the caller cancels the call.
  func run<T: Sendable>(_ call: @escaping @Sendable () async throws -> T) async throws -> T {
    let task = Task(executorPreference: executor) { try await call() }
    let expired = NIOLockedValueBox(false)
    let timer = timers.scheduleTask(in: TimeAmount(timeout)) {
      expired.withLockedValue { $0 = true }
      task.cancel()
    }
    defer { timer.cancel() }
    do {
      return try await withTaskCancellationHandler {
        try await task.value
      } onCancel: {
        task.cancel()
      }
    } catch {
      guard expired.withLockedValue({ $0 }) else { throw error }
      throw RPCError(code: .deadlineExceeded, message: "no answer within \(timeout)")
    }
  }
}
