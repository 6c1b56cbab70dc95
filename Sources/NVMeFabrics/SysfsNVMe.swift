import Foundation
import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

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
    let namespaceUUID = namespaceUUID.lowercased()
    for name in entries(of: sysfs + "/block") where Self.isNamespaceHead(name) {
      let dir = sysfs + "/block/" + name
      guard attribute(dir + "/uuid")?.lowercased() == namespaceUUID,
        attribute(dir + "/device/subsysnqn") == subsystemNQN
      else {
        continue
      }
      // The device first appears with size 0 until the namespace is identified.
      guard let sectors = attribute(dir + "/size").flatMap(UInt64.init), sectors > 0 else { return nil }
      return BlockDevice(name: name, sizeBytes: sectors * 512)
    }
    return nil
  }

  public func paths(subsystemNQN: String) -> [ControllerPath] {
    entries(of: sysfs + "/class/nvme").compactMap { name in
      let dir = sysfs + "/class/nvme/" + name
      guard attribute(dir + "/subsysnqn") == subsystemNQN else { return nil }
      return ControllerPath(
        name: name, address: Self.portal(ofAddressFile: attribute(dir + "/address") ?? ""),
        state: attribute(dir + "/state") ?? "unknown")
    }
  }

  /// Asks each controller of the subsystem to rescan its namespaces (sizes included).
  public func rescan(subsystemNQN: String) throws(NVMeCSIError) {
    for path in paths(subsystemNQN: subsystemNQN) where path.isLive {
      let file = sysfs + "/class/nvme/\(path.name)/rescan_controller"
      if case .failure(let error) = Self.write("1", toExisting: file) {
        throw NVMeCSIError(
          .internalError, "cannot write \(file): \(error): rescanning \(path.name) failed", cause: error)
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

  /// A controller's `address` file as host:port: "traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1"
  /// → "127.0.0.1:4420", IPv6 in brackets; the text as it is when it names no traddr.
  static func portal(ofAddressFile text: String) -> String {
    let fields = KeyValueList.dictionary(text)
    guard let traddr = fields["traddr"] else { return text }
    let port = fields["trsvcid"].flatMap { UInt16($0) }
    let portal = HostPort(host: traddr, port: port ?? 0)
    return port == nil ? portal.bracketedHost : portal.description
  }

  /// The names in a sysfs directory, sorted. A missing directory (nvme not loaded, no
  /// controllers yet) means there are none, which is what the callers ask.
  private func entries(of directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
  }

  /// A sysfs attribute without its trailing newline; nil when there is no such file.
  private func attribute(_ path: String) -> String? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
  }

  /// Writes `value` to an attribute that must exist (sysfs files are never created).
  private static func write(_ value: String, toExisting path: String) -> Result<Void, Errno> {
    valueOrErrno { open(path, O_WRONLY | O_CLOEXEC) }.flatMap { fd in
      defer { close(fd) }
      return valueOrErrno { value.withCString { Glibc.write(fd, $0, strlen($0)) } }.map { _ in }
    }
  }
}
