import CSIProto
import CSIServer
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NVMeCSICore
import TargetProto

#if canImport(Glibc)
  import Glibc
#endif

/// The three plugin processes as a cluster would run them, plus CSI clients that
/// talk to their sockets as kubelet and the sidecars do.
final class Cluster: @unchecked Sendable {
  let bin: String
  let work: String
  let controllerSocket: String
  let nodeSocket: String
  private(set) var target: Process?
  private(set) var controller: Process?
  private(set) var node: Process?

  /// `--store` of the target: `file:<dir>` or `lvm:<vg>/<pool>`.
  let store: String
  /// A second target, store-b (replicated volumes): its own store, API port and portal
  /// on the same kernel. Nil: one target.
  let secondStore: String?
  private(set) var secondTarget: Process?
  /// A third target, store-c: where a lost leg is repaired to. Its store should be the
  /// smallest, so that new volumes' legs go to store-a and store-b. Nil: none.
  let thirdStore: String?
  private(set) var thirdTarget: Process?

  /// Moves every fixed port and the node's host identity, so that another cluster can
  /// run beside this one on the same kernel (guest.sh runs two lanes).
  let portOffset: Int
  var apiPort: Int { 7600 + portOffset }
  var secondAPIPort: Int { 7601 + portOffset }
  var portalPort: Int { 4420 + portOffset }
  var secondPortalPort: Int { 4421 + portOffset }
  var thirdAPIPort: Int { 7602 + portOffset }
  var thirdPortalPort: Int { 4422 + portOffset }
  var nodeMetricsPort: UInt16 { UInt16(9821 + portOffset) }
  var hostID: String {
    portOffset == 0 ? Self.baseHostID : String(Self.baseHostID.dropLast(4)) + String(format: "%04x", portOffset)
  }

  init(
    bin: String, work: String, store: String, secondStore: String? = nil, thirdStore: String? = nil,
    certificates: String? = nil, portOffset: Int = 0
  ) {
    self.bin = bin
    self.work = work
    self.store = store
    self.secondStore = secondStore
    self.thirdStore = thirdStore
    self.portOffset = portOffset
    self.certificates = certificates ?? work + "/certs"
    self.controllerSocket = work + "/csi/controller.sock"
    self.nodeSocket = work + "/csi/node.sock"
  }

  // MARK: what in nvmet is this cluster's

  // Other suites (csi-sanity) run alongside on the same kernel target: every check and
  // cleanup looks only at what this cluster's targets and hosts made.

  static let baseHostID = "6a1d0e52-7c7b-4f6e-9a43-5b0c1f7d2e11"
  /// The host NQNs the access-control steps pose as.
  static let strangerHostPrefix = "nqn.2014-08.org.nvmexpress:uuid:0badc0de-"

  func isOurHost(_ nqn: String) -> Bool { nqn.hasSuffix(hostID) || nqn.hasPrefix(Self.strangerHostPrefix) }

  /// Host entries of ours in nvmet.
  func ourHosts() -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: nvmet + "/hosts")) ?? []).filter(isOurHost).sorted()
  }

  /// This driver's subsystems whose namespace reads from one of our stores, or that a
  /// port of ours links.
  func ourSubsystems() -> [String] {
    let fm = FileManager.default
    let roots = [store, secondStore, thirdStore].compactMap { $0 }.map { store in
      store.hasPrefix("lvm:") ? "/dev/\(store.dropFirst(4).split(separator: "/")[0])/" : "\(store.dropFirst(5))/"
    }
    let ports = ((try? fm.contentsOfDirectory(atPath: nvmet + "/ports")) ?? []).filter { port in
      let service = try? String(contentsOfFile: "\(nvmet)/ports/\(port)/addr_trsvcid", encoding: .utf8)
      let ours =
        [portalPort] + (secondStore == nil ? [] : [secondPortalPort]) + (thirdStore == nil ? [] : [thirdPortalPort])
      return ours.map(String.init).contains(service?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "")
    }
    let subsystems = (try? fm.contentsOfDirectory(atPath: nvmet + "/subsystems")) ?? []
    return subsystems.filter { nqn in
      guard nqn.hasPrefix(SubsystemNaming.prefix) else { return false }
      let device = try? String(contentsOfFile: "\(nvmet)/subsystems/\(nqn)/namespaces/1/device_path", encoding: .utf8)
      return roots.contains { device?.hasPrefix($0) == true }
        || ports.contains { fm.fileExists(atPath: "\(nvmet)/ports/\($0)/subsystems/\(nqn)") }
    }.sorted()
  }

  /// Where a volume's data lives, as a user would look for it.
  func dataPath(of uuid: String) -> String {
    store.hasPrefix("lvm:")
      ? "/dev/\(store.dropFirst(4).split(separator: "/")[0])/nvmecsi-v-\(uuid)"
      : "\(store.dropFirst(5))/volumes/\(uuid).img"
  }

  /// What the store holds: files of the file store, or the LVs of ours.
  func storeContents() -> [String] { storeContents(of: store) }

  func storeContents(of store: String) -> [String] {
    if store.hasPrefix("lvm:") {
      let vg = String(store.dropFirst(4).split(separator: "/")[0])
      let process = Process()
      process.executableURL = URL(fileURLWithPath: "/sbin/lvs")
      process.arguments = ["--noheadings", "--separator", " ", "-o", "lv_name,lv_tags", vg]
      let pipe = Pipe()
      process.standardOutput = pipe
      guard (try? process.run()) != nil else { return ["(lvs failed)"] }
      let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
      process.waitUntilExit()
      // Only the target's LVs (the store contract tests leave their own, other owners).
      return output.split(separator: "\n").compactMap { line in
        let fields = line.split(separator: " ")
        guard fields.count == 2, fields[1].split(separator: ",").contains("nvmecsi.owner=nvme-csi") else { return nil }
        return String(fields[0])
      }
    }
    let root = String(store.dropFirst(5))
    return ["volumes", "snapshots"].flatMap { dir in
      ((try? FileManager.default.contentsOfDirectory(atPath: root + "/" + dir)) ?? []).map { dir + "/" + $0 }
    }
  }
  let nvmet = "/sys/kernel/config/nvmet"

  func startAll() throws {
    try FileManager.default.createDirectory(atPath: work + "/logs", withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: work + "/nvme", withIntermediateDirectories: true)
    // What Talos writes: this node's own host identity.
    try "nqn.2014-08.org.nvmexpress:uuid:\(hostID)\n".write(
      toFile: work + "/nvme/hostnqn", atomically: true, encoding: .utf8)
    try "\(hostID)\n".write(toFile: work + "/nvme/hostid", atomically: true, encoding: .utf8)
    try writeTargetsFile()
    try makeCertificates()
    try startTarget()
    if secondStore != nil { try startSecondTarget() }
    if thirdStore != nil { try startThirdTarget() }
    try startController()
    try startNode()
  }

  private func writeTargetsFile() throws {
    var entries = [#"{"name": "store-a", "address": "127.0.0.1:\#(apiPort)"}"#]
    if secondStore != nil { entries.append(#"{"name": "store-b", "address": "127.0.0.1:\#(secondAPIPort)"}"#) }
    if thirdStore != nil { entries.append(#"{"name": "store-c", "address": "127.0.0.1:\#(thirdAPIPort)"}"#) }
    let targets = #"{"targets": ["# + entries.joined(separator: ", ") + "]}"
    try targets.write(toFile: work + "/targets.json", atomically: true, encoding: .utf8)
  }

  private func startController() throws {
    controller = try launch(
      "controller",
      ["controller", "--endpoint", "unix://" + controllerSocket, "--targets", work + "/targets.json"]
        + tlsFlags("controller"))
  }

  func startTarget() throws {
    target = try launch(
      "target",
      ["target", "--listen", "127.0.0.1:\(apiPort)", "--store", store, "--portal", "127.0.0.1:\(portalPort)"]
        + tlsFlags("target"))
  }

  func startSecondTarget() throws {
    guard let secondStore else { return }
    secondTarget = try launch(
      "target-b",
      [
        "target", "--listen", "127.0.0.1:\(secondAPIPort)", "--store", secondStore, "--portal",
        "127.0.0.1:\(secondPortalPort)",
      ]
        + tlsFlags("target"))
  }

  func startThirdTarget() throws {
    guard let thirdStore else { throw CheckFailed("no --third-store given") }
    thirdTarget = try launch(
      "target-c",
      [
        "target", "--listen", "127.0.0.1:\(thirdAPIPort)", "--store", thirdStore, "--portal",
        "127.0.0.1:\(thirdPortalPort)",
      ] + tlsFlags("target"))
  }

  // MARK: the target API's mutual TLS, as deployed

  /// make-certs.sh's directory: a CA and the target, controller and reader certificates.
  let certificates: String

  /// Made by the documented script, unless already there (guest.sh makes them once).
  private func makeCertificates() throws {
    if FileManager.default.fileExists(atPath: certificates + "/target/tls.key") { return }
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .appendingPathComponent("../../deploy/certs/make-certs.sh").standardized.path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = [script, certificates]
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw CheckFailed("\(script) failed (is openssl installed?)") }
  }

  private func tlsFlags(_ identity: String) -> [String] {
    let directory = certificates + "/" + identity
    return [
      "--tls-ca", directory + "/ca.crt", "--tls-cert", directory + "/tls.crt", "--tls-key", directory + "/tls.key",
    ]
  }

  /// Calls the target API directly with the certificate of `identity` (controller or
  /// reader), as a hostile or curious client on the network would.
  func withTargetAPI<R: Sendable>(
    as identity: String, _ body: (Nvmecsi_Target_V1_Target.Client<HTTP2ClientTransport.Posix>) async throws -> R
  ) async throws -> R {
    let directory = certificates + "/" + identity
    let tls = try MutualTLS(
      files: TLSFiles(ca: directory + "/ca.crt", certificate: directory + "/tls.crt", key: directory + "/tls.key"),
      logger: Logger(label: "e2e") { _ in SwiftLogNoOpLogHandler() })
    return try await withClient(
      to: .tcp(HostPort(host: "127.0.0.1", port: UInt16(apiPort))),
      security: .mutualTLS(tls, serverName: "nvme-csi-target")
    ) { client in try await body(Nvmecsi_Target_V1_Target.Client(wrapping: client)) }
  }

  /// - Parameter failpoints: `NVME_CSI_FAILPOINTS` for this run (crash tests).
  func startNode(failpoints: String? = nil) throws {
    node = try launch(
      "node",
      [
        "node", "--endpoint", "unix://" + nodeSocket, "--state-dir", work + "/node-state", "--nvme-config-dir",
        work + "/nvme", "--metrics-address", "127.0.0.1:\(nodeMetricsPort)",
        // Returning legs of replicated volumes are re-added within a second (default 5).
        "--mirror-check-interval", "1",
      ], failpoints: failpoints)
  }

  /// kill -9, as a crash or an OOM kill would.
  func kill(_ process: Process?) {
    guard let process, process.isRunning else { return }
    Glibc.kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
  }

  func stopAll() {
    for p in [node, controller, target, secondTarget, thirdTarget] where p?.isRunning == true {
      p?.terminate()
      p?.waitUntilExit()
    }
  }

  private func launch(_ role: String, _ arguments: [String], failpoints: String? = nil) throws -> Process {
    let process = Process()
    var environment = ProcessInfo.processInfo.environment
    environment[Failpoints.environmentVariable] = failpoints
    process.environment = environment
    process.executableURL = URL(fileURLWithPath: bin + "/nvme-csi")
    process.arguments = arguments + ["--log-level", "debug"]
    let log = work + "/logs/\(role).log"
    if !FileManager.default.fileExists(atPath: log) { FileManager.default.createFile(atPath: log, contents: nil) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    handle.seekToEndOfFile()
    process.standardError = handle
    process.standardOutput = handle
    try process.run()
    return process
  }

  func logTail(_ role: String, lines: Int = 15) -> String {
    let text = (try? String(contentsOfFile: work + "/logs/\(role).log", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
  }
}

/// Runs one step, prints it as a user wants to read it, and counts it.
final class Steps: @unchecked Sendable {
  private(set) var passed = 0
  private(set) var failed = 0
  private let started = ContinuousClock.now
  var onFailure: (() -> Void)?

  /// Runs `body`; a thrown error fails the step (and the run goes on where it can).
  @discardableResult
  func run<T>(_ title: String, _ body: () async throws -> T) async -> T? {
    let start = ContinuousClock.now
    do {
      let value = try await body()
      passed += 1
      print("✔ \(title)  [\(milliseconds(since: start)) ms]")
      return value
    } catch {
      failed += 1
      print("✘ \(title)  [\(milliseconds(since: start)) ms]\n    \(describe(error))")
      onFailure?()
      return nil
    }
  }

  func note(_ text: String) { print("    \(text)") }

  var elapsed: Int64 { milliseconds(since: started) }

  private func milliseconds(since start: ContinuousClock.Instant) -> Int64 {
    let d = ContinuousClock.now - start
    return d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
  }

  private func describe(_ error: any Error) -> String {
    if let rpc = error as? RPCError { return "\(rpc.code): \(rpc.message)" }
    return "\(error)"
  }
}

struct CheckFailed: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

func check(_ condition: Bool, _ message: @autoclosure () -> String) throws {
  if !condition { throw CheckFailed(message()) }
}

/// Expects `body` to fail with `code`.
func expectFailure(_ code: RPCError.Code, _ body: () async throws -> some Any) async throws -> String {
  do {
    _ = try await body()
  } catch let error as RPCError {
    try check(error.code == code, "expected \(code), got \(error.code): \(error.message)")
    return error.message
  }
  throw CheckFailed("expected \(code), but the call succeeded")
}

/// Polls (bounded) until `condition` holds.
func eventually(_ what: String, timeout: Duration = .seconds(60), _ condition: () async throws -> Bool) async throws {
  let deadline = ContinuousClock.now + timeout
  while ContinuousClock.now < deadline {
    if (try? await condition()) == true { return }
    try await Task.sleep(for: .milliseconds(100))
  }
  throw CheckFailed("\(what): not within \(timeout)")
}
