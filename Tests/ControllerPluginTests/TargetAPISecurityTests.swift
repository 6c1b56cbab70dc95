import CSIServer
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NVMeCSICore
import TargetContract
import TargetProto
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The target API as a real `nvme-csi target` process on 127.0.0.1 with mutual TLS,
/// certificates made at test time by deploy/certs/make-certs.sh (the documented path
/// without cert-manager): who gets an answer, and who may change what.
@Suite("Target API security (mutual TLS, authorization)")
struct TargetAPISecurityTests {
  @Test("the controller's certificate may call everything")
  func controllerIsServed() async throws {
    try await SecureTarget.with { target in
      try await target.call(as: "controller") { api in
        let created = try await api.createVolume(
          .with {
            $0.name = "pvc-1"
            $0.sizeBytes = 4 << 20
            $0.sharing = "single-node"
          })
        #expect(target.volumeFiles().contains(created.volume.uuid + ".img"))
        _ = try await api.deleteVolume(.with { $0.uuid = created.volume.uuid })
        #expect(target.volumeFiles().isEmpty)
      }
    }
  }

  @Test("a read-only identity may list and get, and every change is PermissionDenied and changes nothing")
  func readerCannotChangeAnything() async throws {
    try await SecureTarget.with { target in
      let uuid = try await target.call(as: "controller") { api in
        try await api.createVolume(
          .with {
            $0.name = "pvc-1"
            $0.sizeBytes = 4 << 20
            $0.sharing = "single-node"
          }
        ).volume.uuid
      }
      let before = target.volumeFiles()
      try await target.call(as: "reader") { api in
        #expect(try await api.listVolumes(.init()).volumes.map(\.uuid) == [uuid])
        _ = try await api.getInfo(.init())
        await expectStatus(.permissionDenied, mentioning: "nvme-csi-reader") {
          try await api.deleteVolume(.with { $0.uuid = uuid })
        }
        await expectStatus(.permissionDenied) {
          try await api.createVolume(
            .with {
              $0.name = "pvc-2"
              $0.sizeBytes = 4 << 20
            })
        }
        await expectStatus(.permissionDenied) {
          try await api.publishVolume(
            .with {
              $0.uuid = uuid
              $0.nodeID = "00000000-0000-4000-8000-000000000001"
              $0.hostNqn = "nqn.2014-08.org.example:intruder"
            })
        }
        await expectStatus(.permissionDenied) {
          try await api.unpublishVolume(
            .with {
              $0.uuid = uuid
              $0.allNodes = true
            })
        }
      }
      #expect(target.volumeFiles() == before)
      // What an operator does with the reader certificate.
      let listed = try runTarget(
        ["ctl", "target-volumes", "--address", "127.0.0.1:\(target.port)"] + target.tlsFlags("reader"))
      #expect(listed.status == 0 && listed.output.contains("\(uuid)  pvc-1  4 MiB  single-node"), "\(listed.output)")
    }
  }

  @Test("no client certificate, another CA's certificate, or plaintext: no answer at all")
  func strangersGetNoAnswer() async throws {
    try await SecureTarget.with { target in
      let stranger = try makeCertificates(in: target.directory + "/other-ca")
      let attempts: [(String, HTTP2ClientTransport.Posix.TransportSecurity)] = [
        ("no client certificate", .tls { $0.trustRoots = .certificates([.file(path: target.ca, format: .pem)]) }),
        (
          "a certificate from another CA",
          .mTLS(
            certificateChain: [.file(path: stranger + "/controller/tls.crt", format: .pem)],
            privateKey: .file(path: stranger + "/controller/tls.key", format: .pem)
          ) { $0.trustRoots = .certificates([.file(path: target.ca, format: .pem)]) }
        ),
        ("plaintext", .plaintext),
      ]
      for (what, security) in attempts {
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.http2.authority = "nvme-csi-target"
        let transport = try HTTP2ClientTransport.Posix(
          target: .ipv4(host: "127.0.0.1", port: target.port), transportSecurity: security, config: config)
        await #expect(throws: RPCError.self, "\(what) must get no answer") {
          try await withGRPCClient(transport: transport) { client in
            var options = CallOptions.defaults
            options.timeout = .seconds(5)
            return try await Nvmecsi_Target_V1_Target.Client(wrapping: client).listVolumes(.init(), options: options)
          }
        }
      }
    }
  }

  @Test("a renewed certificate is served without a restart")
  func certificateRotation() async throws {
    // The target starts with a certificate the controller refuses (wrong name), as an
    // expired one would be; the fixed pair is then written over it.
    try await SecureTarget.with(targetName: "not-the-target") { target in
      await #expect(throws: (any Error).self) {
        try await target.call(as: "controller") { api in try await api.getInfo(.init()) }
      }
      _ = try makeCertificates(in: target.certificates, renew: true)
      target.installServerCertificate()
      let deadline = ContinuousClock.now + .seconds(20)
      var served = false
      while !served, ContinuousClock.now < deadline {
        served = (try? await target.call(as: "controller") { api in try await api.getInfo(.init()) }) != nil
        if !served { try await Task.sleep(for: .milliseconds(250)) }
      }
      #expect(served, "the target did not present the renewed certificate within 20 s")
      #expect(target.isRunning)
    }
  }

  @Test("refuses to start in plaintext off loopback, or without its certificate files, touching nothing")
  func refusesInsecureStarts() async throws {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let store = directory + "/store"
    try FileManager.default.createDirectory(atPath: store, withIntermediateDirectories: true)
    let common = [
      "target", "--store", "file:" + store, "--configfs", directory + "/configfs", "--portal", "127.0.0.1:4420",
    ]
    let plaintext = try runTarget(common + ["--listen", "192.0.2.10:7600", "--insecure-plaintext"])
    #expect(plaintext.status != 0)
    #expect(
      plaintext.output.contains("only a unix socket or a loopback address may go without TLS"), "\(plaintext.output)")
    let missing = try runTarget(common + ["--listen", "127.0.0.1:7600", "--tls-ca", directory + "/none/ca.crt"])
    #expect(missing.status != 0)
    #expect(missing.output.contains("TLS file \(directory)/none/ca.crt cannot be read"), "\(missing.output)")
    let certificates = try makeCertificates(in: directory + "/certs")
    try "not a certificate\n".write(toFile: directory + "/bad-ca.crt", atomically: true, encoding: .utf8)
    let badCA = try runTarget(
      common + [
        "--listen", "127.0.0.1:7600", "--tls-ca", directory + "/bad-ca.crt", "--tls-cert",
        certificates + "/target/tls.crt", "--tls-key", certificates + "/target/tls.key",
      ])
    #expect(badCA.status != 0)
    #expect(badCA.output.contains("TLS CA file \(directory)/bad-ca.crt holds no PEM certificate"), "\(badCA.output)")
    #expect(try FileManager.default.contentsOfDirectory(atPath: store).isEmpty, "the store was touched")
  }
}

/// A `nvme-csi target` process serving mutual TLS on a free loopback port.
final class SecureTarget: Sendable {
  let directory: String
  let port: Int
  private let process: ChildProcess

  var certificates: String { directory + "/certs" }
  var ca: String { certificates + "/ca.crt" }

  private init(directory: String, port: Int, process: ChildProcess) {
    self.directory = directory
    self.port = port
    self.process = process
  }

  static func with(targetName: String = "nvme-csi-target", _ body: (SecureTarget) async throws -> Void) async throws {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    _ = try makeCertificates(in: directory + "/certs", names: ["target=\(targetName)"])
    for sub in ["store", "configfs", "served"] {
      try FileManager.default.createDirectory(atPath: directory + "/" + sub, withIntermediateDirectories: true)
    }
    let port = try freeLoopbackPort()
    installServerCertificate(in: directory)
    let process = try ChildProcess(
      path: TestTarget.binary,
      arguments: [
        "target", "--listen", "127.0.0.1:\(port)", "--store", "file:\(directory)/store", "--configfs",
        "\(directory)/configfs", "--portal", "127.0.0.1:4420", "--log-level", "warning",
        "--tls-ca", "\(directory)/certs/ca.crt", "--tls-cert", "\(directory)/served/tls.crt",
        "--tls-key", "\(directory)/served/tls.key", "--tls-reload-seconds", "1",
      ],
      environment: ProcessInfo.processInfo.environment, errorLog: directory + "/target.log")
    defer { process.stop() }
    let target = SecureTarget(directory: directory, port: port, process: process)
    try await target.waitUntilListening()
    try await body(target)
  }

  var isRunning: Bool { process.isRunning }

  /// Puts certs/target's pair where the target reads it, each file replaced whole.
  func installServerCertificate() { Self.installServerCertificate(in: directory) }

  private static func installServerCertificate(in directory: String) {
    for file in ["tls.key", "tls.crt"] {
      let data = FileManager.default.contents(atPath: directory + "/certs/target/" + file)!
      FileManager.default.createFile(atPath: directory + "/served/." + file, contents: data)
      _ = rename(directory + "/served/." + file, directory + "/served/" + file)
    }
  }

  func tlsFlags(_ identity: String) -> [String] {
    let directory = certificates + "/" + identity
    return [
      "--tls-ca", directory + "/ca.crt", "--tls-cert", directory + "/tls.crt", "--tls-key", directory + "/tls.key",
    ]
  }

  /// A call with the client certificate of `identity` (controller or reader), checking
  /// that the server's certificate names nvme-csi-target.
  func call<R: Sendable>(
    as identity: String,
    _ body: (Nvmecsi_Target_V1_Target.Client<HTTP2ClientTransport.Posix>) async throws -> R
  ) async throws -> R {
    let files = TLSFiles(
      ca: ca, certificate: "\(certificates)/\(identity)/tls.crt", key: "\(certificates)/\(identity)/tls.key")
    let tls = try MutualTLS(files: files, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
    return try await withClient(
      to: .tcp(HostPort(host: "127.0.0.1", port: UInt16(port))),
      security: .mutualTLS(tls, serverName: "nvme-csi-target")
    ) { client in
      try await body(Nvmecsi_Target_V1_Target.Client(wrapping: client))
    }
  }

  func volumeFiles() -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/store/volumes")) ?? [])
      .filter { !$0.hasPrefix(".") }.sorted()
  }

  private func waitUntilListening() async throws {
    let deadline = ContinuousClock.now + .seconds(20)
    while ContinuousClock.now < deadline {
      guard process.isRunning else {
        throw HarnessError("the TLS target exited during start: \(logTail(directory + "/target.log"))")
      }
      if canConnect(port: port) { return }
      try await Task.sleep(for: .milliseconds(50))
    }
    throw HarnessError("the TLS target did not listen within 20 s")
  }
}

/// Runs deploy/certs/make-certs.sh into `directory`; returns it.
@discardableResult
func makeCertificates(in directory: String, renew: Bool = false, names: [String] = []) throws -> String {
  let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("deploy/certs/make-certs.sh").path
  let log = directory + ".log"
  defer { unlink(log) }
  let run = try ChildProcess(
    path: "/bin/bash", arguments: [script, directory] + (renew ? ["--renew"] : []) + names.flatMap { ["--name", $0] },
    environment: ProcessInfo.processInfo.environment, errorLog: log)
  guard run.waitForExit() == 0 else {
    throw HarnessError("make-certs.sh failed (is openssl installed?): \(logTail(log))")
  }
  return directory
}

/// Runs the binary to its end; its exit status and everything it printed.
func runTarget(_ arguments: [String]) throws -> (status: Int32, output: String) {
  let directory = try makeTemporaryDirectory()
  defer { try? FileManager.default.removeItem(atPath: directory) }
  let log = directory + "/output"
  let status = try ChildProcess(
    path: TestTarget.binary, arguments: arguments, environment: ProcessInfo.processInfo.environment, errorLog: log,
    outputToLog: true
  ).waitForExit()
  return (status, (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
}

func freeLoopbackPort() throws -> Int {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  var length = socklen_t(MemoryLayout<sockaddr_in>.size)
  let bound = withUnsafeMutablePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
    }
  }
  guard bound else { throw HarnessError("no free loopback port") }
  return Int(UInt16(bigEndian: address.sin_port))
}

func canConnect(port: Int) -> Bool {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  address.sin_port = UInt16(port).bigEndian
  return withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
    }
  }
}
