import CSIServer
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NVMeCSICore
import ServiceLifecycle
import TargetContract
import Testing

/// A target that accepts connections and never answers (a hung process, a network
/// that swallows packets): the controller's calls must still come back.
@Suite("Calls to a hung target", .timeLimit(.minutes(1)))
struct CallDeadlineTests {
  @Test("a call to a target that never answers fails as unavailable, naming the target, when its timeout passes")
  func timesOut() async throws {
    try await withSilentTarget(timeout: .milliseconds(300)) { api in
      let started = ContinuousClock.now
      let error = await #expect(throws: NVMeCSIError.self) { _ = try await api.info() }
      #expect(error?.kind == .unavailable)
      #expect(error?.message.contains("target silent") == true, "\(error?.message ?? "")")
      #expect(error?.message.contains("deadlineExceeded") == true, "\(error?.message ?? "")")
      #expect(ContinuousClock.now - started >= .milliseconds(300), "it gave up before its timeout")
    }
  }

  @Test("cancelling the caller cancels its call at once, long before the call's timeout")
  func cancelledCaller() async throws {
    // With a 10-minute timeout, only the cancellation can end the call within the suite's time limit.
    try await withSilentTarget(timeout: .seconds(600)) { api in
      let call = Task { try await api.info() }
      try await Task.sleep(for: .milliseconds(100))
      call.cancel()
      await #expect(throws: (any Error).self) { _ = try await call.value }
    }
  }

  /// Serves a unix socket whose connections read and drop everything. Closing them at
  /// the end lets the client's connection, which never completed, shut down.
  private func withSilentTarget(timeout: Duration, _ body: (any TargetAPI) async throws -> Void) async throws {
    let directory = FileManager.default.temporaryDirectory.path + "/nvme-csi-silent-" + UUID().uuidString.prefix(8)
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let socket = directory + "/target.sock"
    try await RPCEventLoop.with { eventLoop in
      let accepted = NIOLockedValueBox<[any Channel]>([])
      let silent = try await ServerBootstrap(group: eventLoop.group)
        .childChannelInitializer { channel in
          accepted.withLockedValue { $0.append(channel) }
          return channel.eventLoop.makeSucceededVoidFuture()
        }
        .bind(unixDomainSocketPath: socket).get()
      let client = try makeClient(to: .unix(path: socket), eventLoop: eventLoop)
      let connections = GRPCClientService(client, eventLoop: eventLoop)
      let group = ServiceGroup(
        services: [connections], gracefulShutdownSignals: [],
        logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
      func stop() async {
        await group.triggerGracefulShutdown()
        try? await silent.close()  // first, so the client cannot connect again
        for channel in accepted.withLockedValue({ $0 }) { try? await channel.close() }
      }
      try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let api = RemoteTargetAPI(
          name: try TargetName("silent"), client: client, timeout: timeout, eventLoop: eventLoop)
        do { try await body(api) } catch {
          await stop()
          throw error
        }
        await stop()
        try await tasks.waitForAll()
      }
    }
  }
}
