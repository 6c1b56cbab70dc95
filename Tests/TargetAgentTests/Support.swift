import CSIServer
import Foundation
import GRPCCore
import Logging
import NVMeCSICore
import ServiceLifecycle
import TargetAgent
import TargetContract
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// One way of reaching a target under test. Both run the same agent over a file store
/// and simulated nvmet; `served` puts the gRPC service and client in between, so the
/// contract suite checks the wire format as well.
struct TargetAPIFactory: Sendable, CustomTestStringConvertible {
  let testDescription: String
  let run: @Sendable (LocalTarget, (any TargetAPI) async throws -> Void) async throws -> Void

  static let inProcess = TargetAPIFactory(testDescription: "in-process") { target, body in
    try await body(target.api)
  }

  /// Served as `nvme-csi target` serves it: connections and handlers on one event loop.
  static let served = TargetAPIFactory(testDescription: "gRPC") { target, body in
    let socket = target.store + "/../target.sock"
    var logger = Logger(label: "test.target.grpc") { _ in SwiftLogNoOpLogHandler() }
    logger.logLevel = .critical
    try await RPCEventLoop.with { eventLoop in
      let server = try GRPCService(
        endpoint: .unix(path: socket), services: [TargetService(target: target.agent)], eventLoop: eventLoop,
        logger: logger)
      let client = try makeClient(to: .unix(path: socket), eventLoop: eventLoop)
      let group = ServiceGroup(
        services: [server, GRPCClientService(client, eventLoop: eventLoop)], gracefulShutdownSignals: [],
        logger: logger)
      try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let api = RemoteTargetAPI(name: target.name, client: client, timeout: .seconds(10), eventLoop: eventLoop)
        do {
          try await waitUntilAnswering(api)
          try await body(api)
        } catch {
          await group.triggerGracefulShutdown()
          throw error
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
      }
    }
  }

  static let all = [inProcess, served]

  private static func waitUntilAnswering(_ api: any TargetAPI) async throws {
    let deadline = ContinuousClock.now + .seconds(20)
    while ContinuousClock.now < deadline {
      if (try? await api.info()) != nil { return }
      try await Task.sleep(for: .milliseconds(20))
    }
    throw CancellationError()
  }
}

/// Runs `body` against a fresh target named "store-t" in its own temp directory.
func withTarget(
  _ factory: TargetAPIFactory, overcommitRatio: Double = 1, _ body: (any TargetAPI, LocalTarget) async throws -> Void
) async throws {
  let directory = FileManager.default.temporaryDirectory.path + "/nvme-csi-target-test-" + UUID().uuidString.prefix(8)
  try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
  defer { try? FileManager.default.removeItem(atPath: directory) }
  let target = try LocalTarget(name: "store-t", directory: directory, overcommitRatio: overcommitRatio)
  try await factory.run(target) { api in try await body(api, target) }
}

func node(_ n: Int) throws -> NodeID {
  NodeID(
    hostID: try ObjectUUID(String(format: "%08d-0000-4000-8000-000000000000", n)),
    hostNQN: try HostNQN("nqn.2014-08.org.example:node-\(n)"))
}

func newVolume(
  _ name: String, size: UInt64 = 4 * MiB, source: VolumeSource? = nil, sharing: VolumeSharing = .singleNode
) -> NewVolume {
  NewVolume(name: name, sizeBytes: size, source: source, attributes: ["k": "v"], sharing: sharing)
}

/// Writes `bytes` at `offset` of a volume's data and syncs them, as a host's write through nvmet lands.
func writeBytes(_ bytes: [UInt8], at offset: UInt64, to path: String) throws {
  let fd = open(path, O_WRONLY | O_CLOEXEC)
  guard fd >= 0 else { throw NVMeCSIError(systemCall: "cannot open", path, .current) }
  defer { close(fd) }
  let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
  guard written == bytes.count, fsync(fd) == 0 else { throw NVMeCSIError(systemCall: "cannot write", path, .current) }
}
