import CSIProto
import CSIServer
import ControllerPlugin
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NVMeCSICore
import ServiceLifecycle
import TargetContract
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Two real storage targets (store-a in zone a, store-b in zone b), each with its own
/// file store and simulated configfs in a temp directory, and a controller served on
/// a real unix socket; tests talk CSI to it with a grpc-swift client, exactly as the
/// sidecars do.
///
/// The targets run in this process (a `TargetAgent` each, called directly) unless a
/// test asks for `processes`: real `nvme-csi target` processes behind gRPC, for what
/// only a process shows (crashes, kills, restarts, the wire).
final class Harness: Sendable {
  static let zoneKey = "topology.nvme.csi.dev/zone"
  let directory: String
  let socket: String
  let controller: Csi_V1_Controller.Client<HTTP2ClientTransport.Posix>
  let identity: Csi_V1_Identity.Client<HTTP2ClientTransport.Posix>
  let targets: [TestTarget]

  private init(
    directory: String, socket: String, client: GRPCClient<HTTP2ClientTransport.Posix>, targets: [TestTarget]
  ) {
    self.directory = directory
    self.socket = socket
    self.controller = .init(wrapping: client)
    self.identity = .init(wrapping: client)
    self.targets = targets
  }

  /// Runs `body` against a fresh deployment and tears it all down afterwards.
  static func with(
    processes: Bool = false, failpoints: [String: String] = [:], _ body: (Harness) async throws -> Void
  ) async throws {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let asProcesses = processes || !failpoints.isEmpty
    let targets = [
      TestTarget(name: "store-a", zone: "a", directory: directory, asProcess: asProcesses),
      TestTarget(name: "store-b", zone: "b", directory: directory, asProcess: asProcesses),
    ]
    // Before starting: a target that started is stopped even if the next one fails to.
    defer { for target in targets { target.stop() } }
    for target in targets { try await target.start(environment: failpoints) }

    var logger = Logger(label: "test.controller") { _ in SwiftLogNoOpLogHandler() }
    logger.logLevel = .critical
    var services: [any Service] = []
    var storageTargets: [StorageTarget] = []
    for target in targets {
      let name = try TargetName(target.name)
      let api: any TargetAPI
      if let local = target.local {
        api = local.api
      } else {
        let client = try makeClient(to: target.endpoint)
        services.append(GRPCClientService(client))
        api = RemoteTargetAPI(name: name, client: client, timeout: .seconds(10))
      }
      storageTargets.append(StorageTarget(name: name, topology: [zoneKey: target.zone], api: api))
    }
    let controller = ControllerService(targets: TargetSet(storageTargets), logger: logger)
    let identity = IdentityService(
      driverName: "nvme.csi.dev", version: BuildInfo.version, capabilities: IdentityService.controllerCapabilities,
      isReady: { await controller.reachableTargetCount() > 0 })
    let socket = directory + "/csi/csi.sock"
    try await withServedPlugin(socket: socket, services: [identity, controller], alongside: services, logger: logger) {
      // As the controller's indexing service does at start, once the clients connect.
      #expect(await controller.indexPlacements())
      try await body(Harness(directory: directory, socket: socket, client: $0, targets: targets))
    }
  }

  /// Restarts a target process and waits (bounded) until the controller reaches it
  /// again on its own, as it must after a target restart.
  func restart(_ target: TestTarget) async throws {
    precondition(target.local == nil, "restart needs Harness.with(processes: true)")
    target.kill()
    try await target.start()
    let deadline = ContinuousClock.now + .seconds(10)
    while ContinuousClock.now < deadline {
      if (try? await controller.listVolumes(.init())) != nil { return }
      try await Task.sleep(for: .milliseconds(100))
    }
    throw HarnessError("the controller did not reconnect to \(target.name) within 10 s")
  }

  var storeA: TestTarget { targets[0] }
  var storeB: TestTarget { targets[1] }
}

/// One storage target under test: a `nvme-csi target` process, or the same agent in
/// this process (`local`).
final class TestTarget: @unchecked Sendable {
  let name: String
  let zone: String
  let directory: String
  let store: String
  let configfs: String
  let socket: String
  let asProcess: Bool
  // Replaced on restart; only touched by the test's own task.
  private var process: ChildProcess?
  private(set) var local: LocalTarget?

  init(name: String, zone: String, directory: String, asProcess: Bool) {
    self.name = name
    self.zone = zone
    self.directory = directory + "/\(name)"
    self.store = directory + "/\(name)/store"
    self.configfs = directory + "/\(name)/configfs"
    self.socket = directory + "/\(name)/target.sock"
    self.asProcess = asProcess
  }

  var endpoint: CSIServer.Endpoint { .unix(path: socket) }
  var nvmet: String { configfs + "/nvmet" }

  static var binary: String {
    // The test bundle sits next to the executable in .build/<config>/.
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("nvme-csi").path
  }

  /// Starts the target and waits (bounded) until it serves.
  func start(environment: [String: String] = [:]) async throws {
    guard asProcess else {
      local = try LocalTarget(name: name, directory: directory)
      return
    }
    try FileManager.default.createDirectory(atPath: configfs, withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: store, withIntermediateDirectories: true)
    let binary = Self.binary
    guard FileManager.default.isExecutableFile(atPath: binary) else {
      Issue.record("\(binary) is missing: run `swift build` before `swift test` (make test does)")
      throw CancellationError()
    }
    // Its standard error goes to a file, not to the test runner's output: a target left
    // running by a crashed test run would hold that open, and swift-test would wait.
    process = try ChildProcess(
      path: binary,
      arguments: [
        "target", "--listen", "unix://" + socket, "--store", "file:" + store, "--configfs", configfs,
        "--portal", "127.0.0.1:4420", "--log-level", "warning", "--insecure-plaintext",
      ],
      environment: ProcessInfo.processInfo.environment.merging(environment) { $1 }, errorLog: logPath)
    try await waitUntilServing()
  }

  /// What the target processes printed (warnings and errors), restarts included.
  var logPath: String { directory + "/target.log" }

  private func waitUntilServing() async throws {
    let deadline = ContinuousClock.now + .seconds(20)
    while ContinuousClock.now < deadline {
      if FileManager.default.fileExists(atPath: socket) {
        let ok =
          (try? await withClient(to: endpoint) { client in
            _ = try await TargetInfoProbe.getInfo(client)
            return true
          }) ?? false
        if ok { return }
      }
      guard process?.isRunning == true else {
        throw HarnessError("target \(name) exited during start: \(logTail(logPath))")
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    throw HarnessError("target \(name) did not serve within 20 s")
  }

  /// Kills the process like a crash would (SIGKILL) and waits for it.
  func kill() {
    precondition(asProcess, "killing a target needs Harness.with(processes: true)")
    process?.signal(SIGKILL)
    process?.waitForExit()
  }

  func stop() { process?.stop() }

  func waitForExit() -> Int32 { process?.waitForExit() ?? -1 }

  // MARK: what a user could inspect on the storage node

  func files(in sub: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: store + "/" + sub)) ?? []).sorted()
  }

  func dataPath(ofVolume id: String) -> String {
    store + "/volumes/" + String(id.split(separator: ".").last!) + ".img"
  }

  func subsystems() -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: nvmet + "/subsystems")) ?? []).sorted()
  }

  func allowedHosts(ofVolume id: String) -> [String] {
    let nqn = SubsystemNaming.prefix + String(id.split(separator: ".").last!)
    return ((try? FileManager.default.contentsOfDirectory(atPath: nvmet + "/subsystems/\(nqn)/allowed_hosts")) ?? [])
      .sorted()
  }
}

enum TargetInfoProbe {
  static func getInfo(_ client: GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Bool {
    let api = RemoteTargetAPI(name: try TargetName("probe"), client: client, timeout: .seconds(2))
    _ = try await api.info()
    return true
  }
}

/// The last lines a target process wrote to its standard error log, for an error message.
func logTail(_ path: String, lines: Int = 20) -> String {
  let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
  return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
}

struct HarnessError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

func makeTemporaryDirectory() throws -> String {
  let path = FileManager.default.temporaryDirectory.appendingPathComponent(
    "nvme-csi-test-\(UUID().uuidString.prefix(8))"
  ).path
  try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}
