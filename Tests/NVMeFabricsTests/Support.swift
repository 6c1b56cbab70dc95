import Foundation
import NVMeCSICore
import TestSupport
import Testing

/// Well-formed names shared by the suites.
enum Sample {
  static let uuidA = "0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b"
  static let uuidB = "11111111-2222-4333-8444-555555555555"
  static let uuidC = "22222222-3333-4444-8555-666666666666"
  static var nqnA: String { SubsystemNaming.nqn(for: try! ObjectUUID(uuidA)) }
  static var nqnB: String { SubsystemNaming.nqn(for: try! ObjectUUID(uuidB)) }
  static var nqnC: String { SubsystemNaming.nqn(for: try! ObjectUUID(uuidC)) }
  /// A subsystem whose namespace reuses uuidA: identity is (NQN, UUID), never UUID alone.
  static let nqnD = "nqn.2024-01.dev.nvme-csi:vol:33333333-4444-4555-8666-777777777777"
  static let host = HostIdentity(
    nqn: try! HostNQN("nqn.2014-08.org.nvmexpress:uuid:6b1c6d5e-0e7e-4a39-9d8f-0a1b2c3d4e5f"),
    id: try! ObjectUUID("6b1c6d5e-0e7e-4a39-9d8f-0a1b2c3d4e5f"))
}

/// How a fixture spells `/sys/block/<disk>/device` and the class links: as the kernel
/// does (symlinks into /sys/devices), or as plain directories.
enum FixtureStyle: String, CaseIterable, Sendable, CustomTestStringConvertible {
  case symlinks, directories
  var testDescription: String { rawValue }
}

/// A sysfs tree laid out like Linux 6.1's for NVMe/TCP with native multipath.
struct SysfsFixture {
  let root: String
  let style: FixtureStyle

  init(root: String, style: FixtureStyle = .symlinks) throws {
    self.root = root
    self.style = style
    for dir in [
      "block", "class/nvme", "class/nvme-subsystem", "devices/virtual/nvme-fabrics/ctl",
      "devices/virtual/nvme-subsystem",
    ] {
      try FileManager.default.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
    }
  }

  func write(_ relative: String, _ content: String) throws {
    let path = root + "/" + relative
    try FileManager.default.createDirectory(
      atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data(content.utf8).write(to: URL(fileURLWithPath: path))
  }

  func read(_ relative: String) -> String? {
    FileManager.default.contents(atPath: root + "/" + relative).map { String(decoding: $0, as: UTF8.self) }
  }

  private func link(_ relative: String, to destination: String) throws {
    try FileManager.default.createSymbolicLink(atPath: root + "/" + relative, withDestinationPath: destination)
  }

  /// `/sys/class/nvme-subsystem/nvme-subsysN` with its NQN.
  func subsystem(_ instance: Int, nqn: String) throws {
    let dir = "devices/virtual/nvme-subsystem/nvme-subsys\(instance)"
    try write(dir + "/subsysnqn", nqn + "\n")
    try link("class/nvme-subsystem/nvme-subsys\(instance)", to: "../../" + dir)
  }

  /// `/sys/class/nvme/<name>`: one controller (path) of a subsystem.
  func controller(_ name: String, nqn: String, state: String, address: String, rescanFile: Bool = true) throws {
    let dir = "devices/virtual/nvme-fabrics/ctl/\(name)"
    try write(dir + "/subsysnqn", nqn + "\n")
    try write(dir + "/state", state + "\n")
    try write(dir + "/address", address + "\n")
    try write(dir + "/transport", "tcp\n")
    if rescanFile { try write(dir + "/rescan_controller", "") }
    try link("class/nvme/\(name)", to: "../../" + dir)
  }

  /// A block device for a namespace. `parent` is the directory `device` stands for: the
  /// subsystem (multipath head) or the controller (hidden per-path disk, or no multipath).
  func disk(_ name: String, uuid: String, sectors: UInt64, parent: String) throws {
    let dir = "\(parent)/\(name)"
    try write(dir + "/uuid", uuid + "\n")
    try write(dir + "/size", "\(sectors)\n")
    try write(dir + "/nsid", "1\n")
    switch style {
    case .symlinks:
      try link("\(dir)/device", to: "..")
      try link("block/\(name)", to: "../" + dir)
    case .directories:
      // `device` as a copy of the parent's identity, and /sys/block/<name> a real directory.
      let nqn = read(parent + "/subsysnqn") ?? ""
      try write("block/\(name)/uuid", uuid + "\n")
      try write("block/\(name)/size", "\(sectors)\n")
      try write("block/\(name)/device/subsysnqn", nqn)
    }
  }

  static let subsystemDirectory = "devices/virtual/nvme-subsystem/nvme-subsys"
  static let controllerDirectory = "devices/virtual/nvme-fabrics/ctl/"

  /// The standard scene the suites use:
  /// - subsystem A (nvme-subsys0): controllers nvme0 (live, 127.0.0.1) and nvme1
  ///   (connecting, fd00::1); head nvme0n1 (1 GiB) and its hidden per-path disks
  ///   nvme0c0n1, nvme0c1n1 with the same UUID;
  /// - subsystem B (nvme-subsys1): controller nvme3, head nvme1n1 still of size 0;
  /// - subsystem C without multipath: controller nvme2 and its disk nvme2n1 (2 MiB);
  /// - subsystem D (nvme-subsys4): head nvme4n1 whose namespace reuses A's UUID.
  static func standard(root: String, style: FixtureStyle = .symlinks) throws -> SysfsFixture {
    let f = try SysfsFixture(root: root, style: style)
    try f.subsystem(0, nqn: Sample.nqnA)
    try f.controller(
      "nvme0", nqn: Sample.nqnA, state: "live", address: "traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1")
    try f.controller("nvme1", nqn: Sample.nqnA, state: "connecting", address: "traddr=fd00::1,trsvcid=4420")
    try f.disk("nvme0c0n1", uuid: Sample.uuidA, sectors: 2_097_152, parent: controllerDirectory + "nvme0")
    try f.disk("nvme0c1n1", uuid: Sample.uuidA, sectors: 2_097_152, parent: controllerDirectory + "nvme1")
    try f.disk("nvme0n1", uuid: Sample.uuidA, sectors: 2_097_152, parent: subsystemDirectory + "0")

    try f.subsystem(1, nqn: Sample.nqnB)
    try f.controller("nvme3", nqn: Sample.nqnB, state: "live", address: "traddr=127.0.0.1,trsvcid=4421")
    try f.disk("nvme1n1", uuid: Sample.uuidB, sectors: 0, parent: subsystemDirectory + "1")

    try f.controller("nvme2", nqn: Sample.nqnC, state: "live", address: "traddr=10.0.0.7,trsvcid=4420")
    try f.disk("nvme2n1", uuid: Sample.uuidC, sectors: 4096, parent: controllerDirectory + "nvme2")

    try f.subsystem(4, nqn: Sample.nqnD)
    try f.controller("nvme5", nqn: Sample.nqnD, state: "live", address: "traddr=127.0.0.1,trsvcid=4422")
    try f.disk("nvme4n1", uuid: Sample.uuidA, sectors: 8, parent: subsystemDirectory + "4")
    return f
  }
}
