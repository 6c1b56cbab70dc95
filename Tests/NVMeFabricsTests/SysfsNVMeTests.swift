import Foundation
import NVMeCSICore
import TestSupport
import Testing

@testable import NVMeFabrics

@Suite("Sysfs device and path lookup")
struct SysfsNVMeTests {
  @Test("A namespace is found at its multipath head, never at a hidden per-path disk", arguments: FixtureStyle.allCases)
  func multipathHead(style: FixtureStyle) async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture.standard(root: root, style: style)
      let device = SysfsNVMe(sysfs: root).device(subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA)
      #expect(device == BlockDevice(name: "nvme0n1", sizeBytes: 2_097_152 * 512))
      #expect(device?.path == "/dev/nvme0n1")
    }
  }

  @Test("An uppercase namespace UUID in the request finds the same device", arguments: FixtureStyle.allCases)
  func uppercaseUUID(style: FixtureStyle) async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture.standard(root: root, style: style)
      let device = SysfsNVMe(sysfs: root).device(subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA.uppercased())
      #expect(device?.name == "nvme0n1")
    }
  }

  @Test("A namespace with the same UUID in another subsystem is a different device", arguments: FixtureStyle.allCases)
  func identityIsSubsystemAndUUID(style: FixtureStyle) async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture.standard(root: root, style: style)
      let device = SysfsNVMe(sysfs: root).device(subsystemNQN: Sample.nqnD, namespaceUUID: Sample.uuidA)
      #expect(device == BlockDevice(name: "nvme4n1", sizeBytes: 8 * 512))
    }
  }

  @Test("A device whose size is still 0 is not returned yet", arguments: FixtureStyle.allCases)
  func sizeZero(style: FixtureStyle) async throws {
    try await withTemporaryDirectory { root in
      let fixture = try SysfsFixture.standard(root: root, style: style)
      let sysfs = SysfsNVMe(sysfs: root)
      #expect(sysfs.device(subsystemNQN: Sample.nqnB, namespaceUUID: Sample.uuidB) == nil)
      // Once the kernel has identified the namespace, the same lookup finds it.
      let sizeFile = style == .symlinks ? SysfsFixture.subsystemDirectory + "1/nvme1n1/size" : "block/nvme1n1/size"
      try fixture.write(sizeFile, "2048\n")
      #expect(
        sysfs.device(subsystemNQN: Sample.nqnB, namespaceUUID: Sample.uuidB)
          == BlockDevice(name: "nvme1n1", sizeBytes: 2048 * 512))
    }
  }

  @Test(
    "Without native multipath the disk's device is the controller, which names the subsystem",
    arguments: FixtureStyle.allCases)
  func withoutMultipath(style: FixtureStyle) async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture.standard(root: root, style: style)
      let device = SysfsNVMe(sysfs: root).device(subsystemNQN: Sample.nqnC, namespaceUUID: Sample.uuidC)
      #expect(device == BlockDevice(name: "nvme2n1", sizeBytes: 4096 * 512))
    }
  }

  @Test("Unknown namespaces, unknown subsystems and an empty sysfs find nothing")
  func nothingFound() async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture.standard(root: root)
      let sysfs = SysfsNVMe(sysfs: root)
      #expect(sysfs.device(subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidB) == nil)
      #expect(sysfs.device(subsystemNQN: Sample.nqnB, namespaceUUID: Sample.uuidA) == nil)
      #expect(
        sysfs.device(subsystemNQN: "nqn.2024-01.dev.nvme-csi:vol:" + Sample.uuidC, namespaceUUID: Sample.uuidA) == nil)
      #expect(SysfsNVMe(sysfs: root + "/missing").device(subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA) == nil)
      #expect(SysfsNVMe(sysfs: root + "/missing").paths(subsystemNQN: Sample.nqnA).isEmpty)
    }
  }

  @Test("Paths list every controller of the subsystem with its address and state")
  func paths() async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture.standard(root: root)
      let sysfs = SysfsNVMe(sysfs: root)
      #expect(
        sysfs.paths(subsystemNQN: Sample.nqnA) == [
          ControllerPath(name: "nvme0", address: "127.0.0.1:4420", state: "live"),
          ControllerPath(name: "nvme1", address: "[fd00::1]:4420", state: "connecting"),
        ])
      #expect(sysfs.paths(subsystemNQN: Sample.nqnA).map(\.isLive) == [true, false])
      #expect(
        sysfs.paths(subsystemNQN: Sample.nqnC) == [
          ControllerPath(name: "nvme2", address: "10.0.0.7:4420", state: "live")
        ])
      #expect(sysfs.paths(subsystemNQN: "nqn.2024-01.dev.nvme-csi:vol:44444444-4444-4444-8444-444444444444").isEmpty)
    }
  }

  @Test("Rescan writes 1 to rescan_controller of the live controllers only")
  func rescan() async throws {
    try await withTemporaryDirectory { root in
      let fixture = try SysfsFixture.standard(root: root)
      try SysfsNVMe(sysfs: root).rescan(subsystemNQN: Sample.nqnA)
      #expect(fixture.read(SysfsFixture.controllerDirectory + "nvme0/rescan_controller") == "1")
      #expect(fixture.read(SysfsFixture.controllerDirectory + "nvme1/rescan_controller") == "")
      // Other subsystems' controllers are left alone.
      #expect(fixture.read(SysfsFixture.controllerDirectory + "nvme3/rescan_controller") == "")
      #expect(fixture.read(SysfsFixture.controllerDirectory + "nvme5/rescan_controller") == "")
    }
  }

  @Test("Rescan of a subsystem without controllers does nothing and succeeds")
  func rescanNothing() async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture(root: root)
      try SysfsNVMe(sysfs: root).rescan(subsystemNQN: Sample.nqnA)
    }
  }

  @Test("Rescan that cannot write to a live controller says which file")
  func rescanFails() async throws {
    try await withTemporaryDirectory { root in
      let fixture = try SysfsFixture(root: root)
      try fixture.controller(
        "nvme7", nqn: Sample.nqnA, state: "live", address: "traddr=127.0.0.1,trsvcid=4420", rescanFile: false)
      await expectError(.internalError, mentioning: ["nvme7/rescan_controller"]) {
        try SysfsNVMe(sysfs: root).rescan(subsystemNQN: Sample.nqnA)
      }
    }
  }

  @Test(
    "Only namespace heads count as devices",
    arguments: [
      ("nvme0n1", true), ("nvme10n12", true), ("nvme0c0n1", false), ("nvme0c1n1", false), ("nvme0n1p1", false),
      ("nvme0", false), ("nvmen1", false), ("nvme0n", false), ("nvme0n1n1", false), ("sda", false),
      ("nvme-fabrics", false),
      ("nvme0n1 ", false), ("nvme\u{0663}n1", false), ("NVME0N1", false), ("", false),
    ])
  func namespaceHead(name: String, expected: Bool) {
    #expect(SysfsNVMe.isNamespaceHead(name) == expected)
  }

  @Test(
    "Controller addresses read as host:port, IPv6 in brackets",
    arguments: [
      ("traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1", "127.0.0.1:4420"),
      ("traddr=127.0.0.1,trsvcid=4420", "127.0.0.1:4420"),
      ("trsvcid=4421,traddr=10.1.2.3", "10.1.2.3:4421"),
      ("traddr=fd00::1,trsvcid=4420", "[fd00::1]:4420"),
      ("traddr=fd00::1,trsvcid=4420,src_addr=fd00::2", "[fd00::1]:4420"),
      ("traddr=10.0.0.1", "10.0.0.1"),
      ("", ""),
    ])
  func address(text: String, expected: String) {
    #expect(SysfsNVMe.portal(ofAddressFile: text) == expected)
  }
}
