import Foundation
import Testing

@testable import VolumeStore

@Suite("LVM device filter")
struct LVMCommandTests {
  /// A sysfs fixture: a non-multipath NVMe/TCP namespace, a multipath head over a TCP
  /// controller, a local PCIe drive and a disk that is not NVMe.
  func fixture(_ root: String) throws {
    let fm = FileManager.default
    func file(_ path: String, _ text: String) throws {
      try fm.createDirectory(
        atPath: (root + path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
      try text.write(toFile: root + path, atomically: true, encoding: .utf8)
    }
    try file("/block/nvme0n1/device/transport", "tcp\n")
    try file("/block/nvme2n1/device/nvme5/transport", "tcp\n")
    try file("/block/nvme1n1/device/nvme1/transport", "pcie\n")
    try fm.createDirectory(atPath: root + "/block/vda", withIntermediateDirectories: true)
  }

  @Test("Only NVMe over Fabrics namespaces are hidden from LVM's scan")
  func filter() throws {
    let root = FileManager.default.temporaryDirectory.path + "/lvm-filter-" + UUID().uuidString
    defer { try? FileManager.default.removeItem(atPath: root) }
    try fixture(root)
    let arguments = LVMCommand(pool: .forTests).deviceFilter(sysfs: root)
    #expect(
      arguments == ["--config", #"devices { global_filter = [ "r|^/dev/nvme0n1$|", "r|^/dev/nvme2n1$|", "a|.*|" ] }"#])
  }

  @Test("Without fabrics namespaces LVM's configuration is left alone")
  func noFilter() throws {
    let root = FileManager.default.temporaryDirectory.path + "/lvm-filter-" + UUID().uuidString
    defer { try? FileManager.default.removeItem(atPath: root) }
    try FileManager.default.createDirectory(
      atPath: root + "/block/nvme1n1/device/nvme1", withIntermediateDirectories: true)
    try "pcie\n".write(toFile: root + "/block/nvme1n1/device/nvme1/transport", atomically: true, encoding: .utf8)
    #expect(LVMCommand(pool: .forTests).deviceFilter(sysfs: root).isEmpty)
  }
}
