import Foundation
import NVMeCSICore

/// Runs LVM's command-line tools (the stable interface LVM offers; there is no
/// library API). Arguments are arrays, never a shell line; every call is bounded by a
/// timeout; reports are read as JSON. LVM's own error text is kept for the message.
public struct LVMCommand: Sendable {
  public var timeout: TimeInterval
  public init(timeout: TimeInterval = 120) { self.timeout = timeout }

  /// Runs an LVM tool (e.g. ["lvcreate", …]); throws with its stderr on failure.
  @discardableResult
  public func run(_ arguments: [String]) throws(NVMeCSIError) -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/sbin/lvm")
    if !FileManager.default.isExecutableFile(atPath: "/sbin/lvm") {
      process.executableURL = URL(fileURLWithPath: "/usr/sbin/lvm")
    }
    process.arguments = Array(arguments.prefix(1)) + deviceFilter() + arguments.dropFirst()
    // LVM warns about inherited descriptors on every call; its messages stay English.
    process.environment = ["LVM_SUPPRESS_FD_WARNINGS": "1", "LC_ALL": "C", "PATH": "/usr/sbin:/sbin:/usr/bin:/bin"]
    // Output goes to files, not pipes: LVM may start a daemon (dmeventd) that inherits
    // them, and a pipe would then never reach end-of-file.
    let outPath = NSTemporaryDirectory() + "nvme-csi-lvm-\(UUID().uuidString).out"
    let errPath = outPath.dropLast(4) + ".err"
    FileManager.default.createFile(atPath: outPath, contents: nil)
    FileManager.default.createFile(atPath: String(errPath), contents: nil)
    defer {
      unlink(outPath)
      unlink(String(errPath))
    }
    process.standardOutput = FileHandle(forWritingAtPath: outPath)
    process.standardError = FileHandle(forWritingAtPath: String(errPath))
    process.standardInput = FileHandle.nullDevice
    let done = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in done.signal() }
    do { try process.run() } catch {
      throw .failedPrecondition("cannot run lvm (\(error)): install lvm2 and thin-provisioning-tools")
    }
    if done.wait(timeout: .now() + timeout) == .timedOut {
      process.terminate()
      throw .unavailable("lvm \(arguments.joined(separator: " ")) did not finish within \(Int(timeout)) s")
    }
    let output = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    let errors = ((try? String(contentsOfFile: String(errPath), encoding: .utf8)) ?? "").trimmingCharacters(
      in: .whitespacesAndNewlines)
    guard process.terminationStatus == 0 else {
      let message = "lvm \(arguments.joined(separator: " ")) failed (exit \(process.terminationStatus)): \(errors)"
      if errors.contains("Insufficient free space") || errors.contains("would exceed")
        || errors.contains("out of data space")
      {
        throw .resourceExhausted(message)
      }
      throw .internalError(message)
    }
    return output
  }

  /// Keeps LVM away from NVMe over Fabrics namespaces. LVM scans every block device;
  /// on a storage node that is also a worker those include volumes attached over
  /// NVMe/TCP, and while such a path is down their I/O is queued: a scan would hang
  /// until fast_io_fail_tmo, and a restarting target would wait on itself (seen in the
  /// VM). Volumes may also hold a guest's own LVM metadata, which must never be seen
  /// here. Local PCIe NVMe drives stay visible.
  func deviceFilter(sysfs: String = "/sys") -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: sysfs + "/block")) ?? []
    let fabrics = names.filter { name in
      guard name.hasPrefix("nvme") else { return false }
      let device = sysfs + "/block/" + name + "/device"
      // Without multipath `device` is the controller; with it, the subsystem, whose
      // entries include its controllers.
      let controllers =
        [device]
        + ((try? FileManager.default.contentsOfDirectory(atPath: device)) ?? [])
        .filter { $0.hasPrefix("nvme") }.map { device + "/" + $0 }
      return controllers.contains { dir in
        guard let transport = try? String(contentsOfFile: dir + "/transport", encoding: .utf8) else { return false }
        return transport.trimmingCharacters(in: .whitespacesAndNewlines) != "pcie"
      }
    }
    guard !fabrics.isEmpty else { return [] }
    let rejects = fabrics.sorted().map { "\"r|^/dev/\($0)$|\"" }.joined(separator: ", ")
    return ["--config", "devices { global_filter = [ \(rejects), \"a|.*|\" ] }"]
  }

  /// `lvs` rows of a volume group as field → value (sizes in bytes).
  public func report(_ volumeGroup: String, fields: String) throws(NVMeCSIError) -> [[String: String]] {
    let json = try run(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, volumeGroup])
    struct Report: Decodable { var report: [Section] }
    struct Section: Decodable { var lv: [[String: String]]? }
    do {
      return try JSONDecoder().decode(Report.self, from: Data(json.utf8)).report.flatMap { $0.lv ?? [] }
    } catch {
      throw .internalError("cannot read lvs output for \(volumeGroup): \(error)")
    }
  }
}
