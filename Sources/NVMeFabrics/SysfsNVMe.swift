import Foundation
import NVMeCSICore

/// Reads the kernel's NVMe state from sysfs: which block device holds a namespace,
/// and which controllers (paths) a subsystem has. Rooted at `sysfs` so tests can use
/// a fixture tree.
///
/// Devices are identified by what the kernel says about them, never by name alone:
/// the namespace UUID (`/sys/block/<dev>/uuid`) and the subsystem NQN of the device's
/// parent (`/sys/block/<dev>/device/subsysnqn`: the subsystem for a native-multipath
/// head `nvmeXnY`, the controller without multipath). Hidden per-path disks
/// (`nvmeXcYnZ`) are skipped: I/O goes through the head.
public struct SysfsNVMe: Sendable {
  public let sysfs: String

  public init(sysfs: String = "/sys") { self.sysfs = sysfs }

  public func device(subsystemNQN: String, namespaceUUID: String) -> BlockDevice? {
    let wantedUUID = namespaceUUID.lowercased()
    for name in list(sysfs + "/block") where Self.isNamespaceHead(name) {
      let dir = sysfs + "/block/" + name
      guard read(dir + "/uuid")?.lowercased() == wantedUUID, read(dir + "/device/subsysnqn") == subsystemNQN else {
        continue
      }
      // The device first appears with size 0 until the namespace is identified.
      guard let sectors = read(dir + "/size").flatMap(UInt64.init), sectors > 0 else { return nil }
      return BlockDevice(name: name, sizeBytes: sectors * 512)
    }
    return nil
  }

  public func paths(subsystemNQN: String) -> [ControllerPath] {
    list(sysfs + "/class/nvme").compactMap { name in
      let dir = sysfs + "/class/nvme/" + name
      guard read(dir + "/subsysnqn") == subsystemNQN else { return nil }
      return ControllerPath(
        name: name, address: Self.address(read(dir + "/address") ?? ""), state: read(dir + "/state") ?? "unknown")
    }
  }

  /// Asks each controller of the subsystem to rescan its namespaces (sizes included).
  public func rescan(subsystemNQN: String) throws(NVMeCSIError) {
    for path in paths(subsystemNQN: subsystemNQN) where path.isLive {
      let file = sysfs + "/class/nvme/\(path.name)/rescan_controller"
      guard writeExisting(file, "1") else {
        throw .internalError("cannot write \(file): rescanning \(path.name) failed")
      }
    }
  }

  /// `nvme0n1`, not `nvme0c1n1` (hidden per-path disk) or partitions.
  static func isNamespaceHead(_ name: String) -> Bool {
    guard name.hasPrefix("nvme") else { return false }
    let rest = name.dropFirst(4)
    let parts = rest.split(separator: "n", omittingEmptySubsequences: false)
    return parts.count == 2 && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }
  }

  /// "traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1" → "127.0.0.1:4420".
  static func address(_ text: String) -> String {
    var fields: [String: String] = [:]
    for item in text.split(separator: ",") {
      let pair = item.split(separator: "=", maxSplits: 1).map(String.init)
      if pair.count == 2 { fields[pair[0]] = pair[1] }
    }
    guard let traddr = fields["traddr"] else { return text }
    let host = traddr.contains(":") ? "[\(traddr)]" : traddr
    return fields["trsvcid"].map { "\(host):\($0)" } ?? host
  }

  private func list(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
  }

  private func read(_ path: String) -> String? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
  }

  private func writeExisting(_ path: String, _ value: String) -> Bool {
    guard let handle = FileHandle(forWritingAtPath: path) else { return false }
    defer { try? handle.close() }
    return (try? handle.write(contentsOf: Data(value.utf8))) != nil
  }
}
