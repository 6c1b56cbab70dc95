import Foundation
import NVMeCSICore

/// Runs LVM's command-line tools (the stable interface LVM offers; there is no
/// library API) through the one `CommandRunner`: arguments are arrays, never a shell
/// line; every call is bounded by a timeout after which lvm's whole process group is
/// killed and reaped; reports are read as JSON. LVM's own error text is kept for the
/// message. Calls block: the store runs on the `BlockingPool`.
public struct LVMCommand: Sendable {
  public var timeout: Duration
  private let runner: CommandRunner

  public init(pool: BlockingPool, timeout: Duration = .seconds(120)) {
    self.timeout = timeout
    // Reports list every LV with its tags (the records): keep far more than a tool's usual tail.
    self.runner = CommandRunner(pool: pool, outputLimit: 64 << 20)
  }

  /// Runs an LVM tool (e.g. ["lvcreate", …]); throws with its stderr on failure.
  @discardableResult
  public func run(_ arguments: [String]) throws(NVMeCSIError) -> String {
    let result: CommandResult
    do {
      result = try runner.runHere(
        "lvm", Array(arguments.prefix(1)) + deviceFilter() + arguments.dropFirst(), timeout: timeout,
        acceptedExitCodes: Set(0...255))
    } catch let error where error.kind == .failedPrecondition {
      throw .failedPrecondition("cannot run lvm (\(error.message)): install lvm2 and thin-provisioning-tools")
    }
    guard result.exitCode == 0 else {
      let errors = result.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
      let message = "lvm \(arguments.joined(separator: " ")) failed (exit \(result.exitCode)): \(errors)"
      if errors.contains("Insufficient free space") || errors.contains("would exceed")
        || errors.contains("out of data space")
      {
        throw .resourceExhausted(message)
      }
      throw .internalError(message)
    }
    return result.standardOutput
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
