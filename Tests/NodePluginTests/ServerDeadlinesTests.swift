import CSIProto
import Foundation
import GRPCCore
import Logging
import NIOPosix
import Synchronization
import TestSupport
import Testing

@testable import CSIServer

@Suite("Client deadlines on the server")
struct ServerDeadlinesTests {
  @Test(
    "A call whose deadline passes is marked cancelled on the server when it passes, as grpc-swift marks it",
    .timeLimit(.minutes(1)))
  func deadlineCancelsTheCall() async throws {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let probes = ProbeRecorder()
    let identity = IdentityService(
      driverName: "nvme.csi.dev", version: "test", capabilities: [], isReady: { await probes.probe() })
    var logger = Logger(label: "test.deadlines") { _ in SwiftLogNoOpLogHandler() }
    logger.logLevel = .critical
    try await withServedPlugin(socket: directory + "/csi.sock", services: [identity], logger: logger) { client in
      let identity = Csi_V1_Identity.Client(wrapping: client)
      // The header alone, without the client's own timeout: only the server can end
      // this call, which waits until it is marked cancelled.
      probes.hang.withLock { $0 = true }
      let started = ContinuousClock.now
      let answer = try await identity.probe(.init(), metadata: ["grpc-timeout": "300m"])
      #expect(answer.ready.value == false)
      #expect(ContinuousClock.now - started >= .milliseconds(300))

      probes.hang.withLock { $0 = false }
      #expect(try await identity.probe(.init(), metadata: ["grpc-timeout": "10M"]).ready.value == true)
    }
  }

  @Test("A timer stopped before its time never cancels; one started after the stop neither")
  func stoppedTimerNeverFires() async throws {
    let loop = MultiThreadedEventLoopGroup.singleton.any()
    let answered = ServerContext.RPCCancellationHandle()
    let timer = ServerDeadlineTimer(timers: loop, cancellation: answered)
    timer.start(.milliseconds(20))
    timer.stop()
    let late = ServerContext.RPCCancellationHandle()
    let lateTimer = ServerDeadlineTimer(timers: loop, cancellation: late)
    lateTimer.stop()
    lateTimer.start(.milliseconds(20))
    let expired = ServerContext.RPCCancellationHandle()
    ServerDeadlineTimer(timers: loop, cancellation: expired).start(.milliseconds(20))
    try await Task.sleep(for: .milliseconds(300))
    #expect(!answered.isCancelled)
    #expect(!late.isCancelled)
    #expect(expired.isCancelled)
  }

  @Test(
    "grpc-timeout headers parse as gRPC defines them; anything else is no deadline",
    arguments: [
      ("1H", Duration.seconds(3600)), ("2M", .seconds(120)), ("15S", .seconds(15)), ("250m", .milliseconds(250)),
      ("7u", .microseconds(7)), ("99999999n", .nanoseconds(99_999_999)), ("99999999H", .seconds(99_999_999 * 3600)),
    ])
  func parsesTimeouts(text: String, expected: Duration) {
    #expect(GRPCTimeout.duration(text) == expected)
  }

  @Test(
    "Malformed grpc-timeout headers are no deadline",
    arguments: ["", "S", "10", "123456789S", "-1S", "1s", "1.5S", "１S"])
  func rejectsMalformed(text: String) {
    #expect(GRPCTimeout.duration(text) == nil)
  }
}

/// A Probe that, while `hang` is set, waits until its call is marked cancelled.
final class ProbeRecorder: Sendable {
  let hang = Mutex(false)

  func probe() async -> Bool {
    guard hang.withLock({ $0 }) else { return true }
    let (cancelled, continuation) = AsyncStream.makeStream(of: Void.self)
    await withRPCCancellationHandler {
      for await _ in cancelled {}
    } onCancelRPC: {
      continuation.finish()
    }
    return false
  }
}
