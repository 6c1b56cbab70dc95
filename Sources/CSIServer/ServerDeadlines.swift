import GRPCCore
import GRPCNIOTransportCore
import NIOCore
import Synchronization

/// Serves each call's deadline (the client's `grpc-timeout` header) with one timer on
/// an event loop, which marks the call cancelled when it passes, as grpc-swift would.
///
/// grpc-swift races every call that has a deadline against a child task sleeping until
/// it. A call that answers first cancels the sleep, but a sleep that had begun (any call
/// that waits, as CreateVolume waits for its target) stays queued until its time,
/// holding about 1.3 KB. The sidecars and kubelet send a deadline with every call, so
/// the controller held one such task per call for the whole timeout: 45 MB of its
/// 56 MB after `make bench`'s workload (heaptrack), 13 MB in all with this. Here the
/// header is taken out before grpc-swift sees it, and the timer is dropped the moment
/// the call ends.
///
/// Like grpc-swift's, the timer only marks the call cancelled (`ServerContext.cancellation`,
/// `withRPCCancellationHandler`); it does not cancel the handler's task, so a mutation
/// that has begun runs to its end and the client's retry finds it done.
struct DeadlineServerTransport<Base: ListeningServerTransport>: ListeningServerTransport {
  typealias Bytes = Base.Bytes

  let base: Base
  /// Where the timers run.
  let timers: any EventLoop

  var listeningAddress: GRPCNIOTransportCore.SocketAddress {
    get async throws { try await base.listeningAddress }
  }

  func configure(context: GRPCServerContext) { base.configure(context: context) }

  func beginGracefulShutdown() { base.beginGracefulShutdown() }

  func listen(
    streamHandler: @escaping @Sendable (_ stream: RPCStream<Inbound, Outbound>, _ context: ServerContext) async -> Void
  ) async throws {
    try await base.listen { [timers] stream, context in
      let deadline = ServerDeadlineTimer(timers: timers, cancellation: context.cancellation)
      let inbound = RPCAsyncSequence(wrapping: DeadlineTakingSequence(base: stream.inbound, deadline: deadline))
      await streamHandler(
        RPCStream(descriptor: stream.descriptor, inbound: inbound, outbound: stream.outbound), context)
      deadline.stop()
    }
  }
}

/// One call's deadline timer: started when its metadata arrives, stopped when it ends.
final class ServerDeadlineTimer: Sendable {
  private let timers: any EventLoop
  private let cancellation: ServerContext.RPCCancellationHandle
  private let state = Mutex<(timer: Scheduled<Void>?, stopped: Bool)>((nil, false))

  init(timers: any EventLoop, cancellation: ServerContext.RPCCancellationHandle) {
    self.timers = timers
    self.cancellation = cancellation
  }

  func start(_ timeout: Duration) {
    let timer = timers.scheduleTask(in: TimeAmount(timeout)) { [cancellation] in cancellation.cancel() }
    let stopped = state.withLock { state in
      if !state.stopped { state.timer = timer }
      return state.stopped
    }
    if stopped { timer.cancel() }
  }

  func stop() {
    state.withLock { state in
      state.stopped = true
      return state.timer.take()
    }?.cancel()
  }
}

/// The call's request parts, with the deadline taken out of its metadata and handed to
/// the timer.
struct DeadlineTakingSequence<Bytes: GRPCContiguousBytes & Sendable>: AsyncSequence, Sendable {
  typealias Element = RPCRequestPart<Bytes>
  typealias Failure = any Error

  let base: RPCAsyncSequence<RPCRequestPart<Bytes>, any Error>
  let deadline: ServerDeadlineTimer

  func makeAsyncIterator() -> Iterator { Iterator(base: base.makeAsyncIterator(), deadline: deadline) }

  struct Iterator: AsyncIteratorProtocol {
    var base: RPCAsyncSequence<RPCRequestPart<Bytes>, any Error>.AsyncIterator
    let deadline: ServerDeadlineTimer
    var first = true

    mutating func next(isolation actor: isolated (any Actor)?) async throws(any Error) -> Element? {
      let part = try await base.next(isolation: actor)
      guard first else { return part }
      first = false
      // The metadata comes first; a header that does not parse is left to grpc-swift
      // (which then ignores it too).
      guard case .metadata(var metadata)? = part,
        let text = metadata[stringValues: GRPCTimeout.header].first(where: { _ in true }),
        let timeout = GRPCTimeout.duration(text)
      else { return part }
      metadata.removeAllValues(forKey: GRPCTimeout.header)
      deadline.start(timeout)
      return .metadata(metadata)
    }

    mutating func next() async throws -> Element? { try await next(isolation: nil) }
  }
}

/// gRPC's `grpc-timeout` header: at most 8 digits and a unit (H, M, S, m, u, n).
enum GRPCTimeout {
  static let header = "grpc-timeout"

  static func duration(_ text: String) -> Duration? {
    let utf8 = Array(text.utf8)
    guard (2...9).contains(utf8.count), let unit = utf8.last else { return nil }
    var value: Int64 = 0
    for digit in utf8.dropLast() {
      guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else { return nil }
      value = value * 10 + Int64(digit - UInt8(ascii: "0"))
    }
    switch unit {
    case UInt8(ascii: "H"): return .seconds(value * 3600)
    case UInt8(ascii: "M"): return .seconds(value * 60)
    case UInt8(ascii: "S"): return .seconds(value)
    case UInt8(ascii: "m"): return .milliseconds(value)
    case UInt8(ascii: "u"): return .microseconds(value)
    case UInt8(ascii: "n"): return .nanoseconds(value)
    default: return nil
    }
  }
}
