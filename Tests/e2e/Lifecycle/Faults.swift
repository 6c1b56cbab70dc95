import CSIProto
import Foundation
import GRPCCore
import NVMeCSICore
import NVMeFabrics

#if canImport(Glibc)
  import Glibc
#endif

/// Faults on the real kernel with verified data (`nvme-csi-e2e --suite faults`).
///
/// A writer with checksums (fio `--verify=crc32c`, every block written is read back
/// and checked) runs on a staged raw-block volume while one fault is injected; after
/// each fault the writer must finish with zero verify errors, and the time until I/O
/// resumes is measured. Then the node plugin is crashed at every failpoint of stage
/// and unstage on a file-system volume holding checksummed data. Each result is
/// printed as a `fault:` line (docs/reliability.md collects them).
struct Faults {
  let scenario: Scenario
  var cluster: Cluster { scenario.cluster }
  var steps: Steps { scenario.steps }
  /// The loop device under the store's file system, to unmount and mount it again.
  let storeDevice: String
  let mebibyte: Int64 = 1 << 20

  func all() async {
    guard
      let nodeID = await steps.run(
        "plugins up", { try await scenario.waitUntilReady() })
    else { return }
    let blockCapability = Csi_V1_VolumeCapability.with {
      $0.block = .init()
      $0.accessMode.mode = .singleNodeWriter
    }
    guard let block = await scenario.createAndAttach("fault-block", bytes: 64 * mebibyte, blockCapability, nodeID)
    else { return }
    await underLoad("target killed -9 and restarted", block) {
      cluster.kill(cluster.target)
      try cluster.startTarget()
      try await eventually("target ready") { try await scenario.controllerIdentity.probe(.init()).ready.value }
    }
    await underLoad("storage-node reboot: target killed -9, its nvmet configuration wiped, restarted", block) {
      cluster.kill(cluster.target)
      try scenario.wipeOurNVMetConfig()
      try cluster.startTarget()
    }
    await underLoad("portal disabled in nvmet for 5 s (below fastIoFailTmo), then enabled again", block) {
      let links = try portLinks(of: block)
      for link in links { try check(unlink(link.path) == 0, "unlink \(link.path): \(errnoText())") }
      try await Task.sleep(for: .seconds(5))
      for link in links {
        try check(symlink(link.destination, link.path) == 0, "symlink \(link.path): \(errnoText())")
      }
    }
    await underLoad("target restarted while its store is not mounted: it refuses, exports untouched", block) {
      let store = String(cluster.store.dropFirst(5))
      let before = try exportedSubsystems()
      cluster.kill(cluster.target)
      try check(umount2(store, Int32(MNT_DETACH)) == 0, "umount -l \(store): \(errnoText())")
      try cluster.startTarget()
      try await eventually("target refused to start", timeout: .seconds(30)) {
        cluster.target?.isRunning == false
      }
      let status = cluster.target?.terminationStatus ?? 0
      try check(status != 0, "the target started on an unmounted store")
      let said = cluster.logTail("target", lines: 5)
      try check(said.contains("refusing to start"), "target log does not say why: \(said)")
      try check(try exportedSubsystems() == before, "exports changed while the store was not mounted")
      steps.note("target exit \(status), exports unchanged (\(before.count) subsystems)")
      try run("/bin/mount", [storeDevice, store])
      try cluster.startTarget()
      // The next step needs the target API again (the data path never stopped).
      try await eventually("target ready") { try await scenario.controllerIdentity.probe(.init()).ready.value }
    }
    await scenario.detach(block, deleteVolume: true)
    await nodePluginCrashes(nodeID: nodeID)
  }

  // MARK: a writer with checksums under one fault

  /// Runs fio (write, then read back and verify every block) on the volume, injects
  /// the fault two seconds in, and measures how long the first I/O after the fault
  /// takes to complete.
  func underLoad(_ fault: String, _ v: Scenario.Attached, inject: () async throws -> Void) async {
    await steps.run("under verified I/O: \(fault)") {
      let writer = try Writer(device: v.target, megabytes: 12, ratePerSecond: "2m")
      try await Task.sleep(for: .seconds(2))
      let injected = ContinuousClock.now
      do { try await inject() } catch {
        writer.stop()
        throw error
      }
      let restored = ContinuousClock.now
      let resumed = try firstDirectRead(of: v.target)
      let result = try writer.finish()
      try check(result.errors == 0, "fio reported \(result.errors) error(s):\n\(result.output)")
      let line =
        "fault: \(fault) | verified \(result.verifiedBytes) bytes | errors 0 | fault lasted "
        + "\(milliseconds(restored - injected)) ms | I/O resumed \(milliseconds(resumed - restored)) ms after repair"
      steps.note(line)
      try check(result.verifiedBytes >= 12 * mebibyte, "fio verified only \(result.verifiedBytes) bytes")
    }
  }

  /// The instant a 4 KiB O_DIRECT read from the device completes (it waits while the
  /// path is down, as the application's I/O does).
  func firstDirectRead(of path: String) throws -> ContinuousClock.Instant {
    let fd = open(path, O_RDONLY | oDirect)
    try check(fd >= 0, "open \(path): \(errnoText())")
    defer { close(fd) }
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    defer { buffer.deallocate() }
    try check(pread(fd, buffer, 4096, 0) == 4096, "read \(path) after the fault: \(errnoText())")
    return .now
  }

  // MARK: node plugin crashes at every failpoint

  /// Kills the node plugin (a crash at a failpoint, `_exit` with no cleanup) in the
  /// middle of stage and of unstage; after each restart the same RPC succeeds and the
  /// data written before is intact.
  func nodePluginCrashes(nodeID: String) async {
    guard
      let v = await scenario.createAndAttach(
        "fault-fs", bytes: 64 * mebibyte, scenario.mountCapability("ext4"), nodeID)
    else { return }
    let data = v.target + "/verified.dat"
    await steps.run("checksummed data written to a file-system volume") {
      let result = try Writer(file: data, megabytes: 16).finish()
      try check(result.errors == 0, "fio: \(result.output)")
    }
    let plan: [(String, String)] = [
      ("node.unstage.after-unmount", "unstage"), ("node.stage.after-connect", "stage"),
      ("node.unstage.after-disconnect", "unstage"), ("node.stage.after-format", "stage"),
    ]
    for (point, rpc) in plan {
      await steps.run("node plugin crashes at \(point); restarted, \(rpc) again succeeds, data verified") {
        if rpc == "unstage" {
          _ = try await scenario.node.nodeUnpublishVolume(
            .with {
              $0.volumeID = v.volumeID
              $0.targetPath = v.target
            })
        }
        try await restartNode(failpoints: "\(point)=crash")
        let request: () async throws -> Void = {
          if rpc == "stage" {
            _ = try await scenario.node.nodeStageVolume(scenario.stageRequest(v))
          } else {
            _ = try await scenario.node.nodeUnstageVolume(
              .with {
                $0.volumeID = v.volumeID
                $0.stagingTargetPath = v.staging
              })
          }
        }
        let crashed = try await expectFailureAny(request)
        try await eventually("node plugin exited", timeout: .seconds(30)) { cluster.node?.isRunning == false }
        try check(
          cluster.node?.terminationStatus == Failpoints.crashExitCode,
          "the node plugin did not crash at \(point): \(crashed)")
        try await restartNode(failpoints: nil)
        let started = ContinuousClock.now
        try await request()
        steps.note("fault: node plugin killed at \(point) | \(rpc) again took \(milliseconds(.now - started)) ms")
        if rpc == "stage" {
          _ = try await scenario.node.nodePublishVolume(scenario.publishRequest(v, readonly: false))
          let result = try Writer(verifying: data).finish()
          try check(result.errors == 0, "fio verify: \(result.output)")
          steps.note("fault: node plugin killed at \(point) | verified \(result.verifiedBytes) bytes | errors 0")
        } else {
          try await eventually("device gone", timeout: .seconds(30)) { try scenario.device(of: v) == nil }
        }
      }
    }
    await scenario.detach(v, deleteVolume: true)
  }

  func restartNode(failpoints: String?) async throws {
    cluster.kill(cluster.node)
    try cluster.startNode(failpoints: failpoints)
    try await eventually("node ready") { try await scenario.identity.probe(.init()).ready.value }
  }

  // MARK: nvmet

  struct PortLink {
    let path: String
    let destination: String
  }

  /// The volume's subsystem links under every nvmet port (what "the portal" serves).
  func portLinks(of v: Scenario.Attached) throws -> [PortLink] {
    let nqn = try PublishContext(decoding: v.publishContext).subsystemNQN
    let ports = cluster.nvmet + "/ports"
    let links = try FileManager.default.contentsOfDirectory(atPath: ports).map { "\(ports)/\($0)/subsystems/\(nqn)" }
      .filter { FileManager.default.fileExists(atPath: $0) }
    try check(!links.isEmpty, "\(nqn) is on no nvmet port")
    return links.map { PortLink(path: $0, destination: "\(cluster.nvmet)/subsystems/\(nqn)") }
  }

  /// Our subsystems in nvmet with their namespaces' enable flag.
  func exportedSubsystems() throws -> [String] {
    let root = cluster.nvmet + "/subsystems"
    return cluster.ourSubsystems().map { nqn in
      let enabled = (try? String(contentsOfFile: "\(root)/\(nqn)/namespaces/1/enable", encoding: .utf8)) ?? "?"
      return "\(nqn) enable=\(enabled.trimmingCharacters(in: .whitespacesAndNewlines))"
    }
  }
}

/// fio as a writer with checksums: writes `megabytes` in 64 KiB blocks (each with a
/// crc32c and its offset), then reads every one back and checks it.
struct Writer {
  struct Result {
    let errors: Int
    let verifiedBytes: Int64
    let output: String
  }

  private let process: Process
  private let output: Pipe

  /// Random O_DIRECT writes over the first `megabytes` of a block device,
  /// rate-limited so a fault lands in the middle of them.
  init(device: String, megabytes: Int, ratePerSecond: String) throws {
    try self.init([
      "--filename=\(device)", "--rw=randwrite", "--direct=1", "--size=\(megabytes)M", "--rate=\(ratePerSecond)",
    ])
  }

  /// A file of `megabytes` written sequentially (fsync at the end) and verified.
  init(file: String, megabytes: Int) throws {
    try self.init(["--filename=\(file)", "--rw=write", "--size=\(megabytes)M", "--end_fsync=1"])
  }

  /// A file of `megabytes` written sequentially with O_DIRECT at `ratePerSecond`, so
  /// that its writes span a fault, and verified.
  init(file: String, megabytes: Int, ratePerSecond: String) throws {
    try self.init([
      "--filename=\(file)", "--rw=write", "--direct=1", "--size=\(megabytes)M", "--rate=\(ratePerSecond)",
      "--end_fsync=1",
    ])
  }

  /// Reads back and checks what an earlier writer left in `file`.
  init(verifying file: String) throws {
    try self.init(["--filename=\(file)", "--rw=write", "--verify_only=1", "--size=\(Self.fileSize(file))"])
  }

  private init(_ arguments: [String]) throws {
    process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
    process.arguments =
      ["--name=verified", "--bs=64k", "--ioengine=psync", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1"]
      + ["--randrepeat=1", "--output-format=json"] + arguments
    output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try process.run()
  }

  private static func fileSize(_ path: String) -> Int64 {
    ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? Int64) ?? 0
  }

  /// Stops fio (the fault could not be injected: its result means nothing).
  func stop() {
    if process.isRunning { process.terminate() }
    process.waitUntilExit()
  }

  /// Waits for fio and reads its report: errors and bytes read back and verified.
  func finish() throws -> Result {
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self)
    let json = text.firstIndex(of: "{").map { String(text[$0...]) } ?? ""
    guard let report = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
      let job = (report["jobs"] as? [[String: Any]])?.first,
      let read = job["read"] as? [String: Any]
    else {
      return Result(errors: max(1, Int(process.terminationStatus)), verifiedBytes: 0, output: text)
    }
    let errors = (job["error"] as? Int ?? 0) + (process.terminationStatus == 0 ? 0 : 1)
    return Result(errors: errors, verifiedBytes: (read["io_bytes"] as? Int64) ?? 0, output: text)
  }
}

func milliseconds(_ duration: Duration) -> Int64 {
  duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
}

func errnoText() -> String { String(cString: strerror(errno)) }

func run(_ executable: String, _ arguments: [String]) throws {
  _ = try output(executable, arguments)
}

/// Runs a tool and returns what it printed; a failure is an error with its output.
func output(_ executable: String, _ arguments: [String]) throws -> String {
  let process = Process()
  process.executableURL = URL(fileURLWithPath: executable)
  process.arguments = arguments
  let pipe = Pipe()
  process.standardOutput = pipe
  process.standardError = pipe
  try process.run()
  let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
  process.waitUntilExit()
  try check(
    process.terminationStatus == 0, "\(executable) \(arguments.joined(separator: " ")) failed: \(text)")
  return text
}
