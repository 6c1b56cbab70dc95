import NIOCore
import NIOPosix

/// One event-loop thread that runs a process's gRPC connections and, as their task
/// executor, the RPC handlers too.
///
/// By default NIO reads a request on an event-loop thread, Swift runs its handler on
/// another (the cooperative pool), and the reply goes back: every hop is a thread
/// wake-up, and on a busy 2-core node those wake-ups cost more than the RPC itself.
/// On one thread a call that only awaits other calls (the controller's hop to a
/// target) never changes threads. Handlers must not block: blocking work goes to a
/// `BlockingPool`, as it already must on the cooperative pool.
///
/// For the controller and the target, whose handlers await and hand blocking work to
/// pools; measured in bench/results (the controller → target round trip).
public final class RPCEventLoop: TaskExecutor {
  public let group: MultiThreadedEventLoopGroup
  /// The loop itself: its connections, handlers and timers.
  public let loop: any EventLoop

  public init() {
    group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    loop = group.next()
  }

  /// Runs `body` with a new loop, then stops its thread (a process's loop lives as
  /// long as the process; tests start many).
  public static func with<Result>(_ body: (RPCEventLoop) async throws -> Result) async throws -> Result {
    let eventLoop = RPCEventLoop()
    let result: Result
    do { result = try await body(eventLoop) } catch {
      try? await eventLoop.group.shutdownGracefully()
      throw error
    }
    try await eventLoop.group.shutdownGracefully()
    return result
  }

  public func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
  }
}
