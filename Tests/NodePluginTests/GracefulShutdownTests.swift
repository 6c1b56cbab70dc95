import CSIProto
import CSIServer
import Foundation
import Logging
import ServiceLifecycle
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite("Graceful shutdown of an endpoint")
struct GracefulShutdownTests {
  @Test(
    "A call in flight finishes, and a client that never speaks HTTP/2 does not hold the endpoint open",
    .timeLimit(.minutes(1)))
  func shutdownFinishesCallsAndClosesSilentClients() async throws {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let socketPath = directory + "/csi.sock"
    let logger = Logger(label: "test.shutdown") { _ in SwiftLogNoOpLogHandler() }
    let (probesBegun, probeBegins) = AsyncStream.makeStream(of: Void.self)
    let identity = IdentityService(
      driverName: "nvme.csi.dev", version: "test", capabilities: [],
      isReady: {
        probeBegins.yield()
        try? await Task.sleep(for: .milliseconds(500))
        return true
      })
    let server = try GRPCService(
      endpoint: .unix(path: socketPath), services: [identity], shutdownGrace: .seconds(2), logger: logger)
    let group = ServiceGroup(services: [server], gracefulShutdownSignals: [], logger: logger)
    try await withThrowingTaskGroup(of: Void.self) { tasks in
      tasks.addTask { try await group.run() }
      let silent = try await connectWhenListening(to: socketPath)
      defer { close(silent) }
      let asked = try await withClient(to: .unix(path: socketPath)) { client in
        let probe = Task { try await Csi_V1_Identity.Client(wrapping: client).probe(.init()) }
        _ = await probesBegun.first { _ in true }  // the call has reached the plugin
        let asked = ContinuousClock.now
        await group.triggerGracefulShutdown()
        let answer = try await probe.value
        #expect(answer.ready.value == true, "the call begun before the shutdown is answered")
        return asked
      }
      try await tasks.waitForAll()
      #expect(ContinuousClock.now - asked < .seconds(20))
    }
  }

  /// A unix-socket connection to `path` that sends nothing.
  private func connectWhenListening(to path: String) async throws -> Int32 {
    for _ in 0..<500 {
      let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
      var address = sockaddr_un()
      address.sun_family = sa_family_t(AF_UNIX)
      withUnsafeMutableBytes(of: &address.sun_path) { raw in
        path.utf8CString.withUnsafeBytes {
          raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(raw.count)))
        }
      }
      let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
      }
      if connected == 0 { return fd }
      close(fd)
      try await Task.sleep(for: .milliseconds(20))
    }
    throw NotListening(path: path)
  }
}

struct NotListening: Error { let path: String }
