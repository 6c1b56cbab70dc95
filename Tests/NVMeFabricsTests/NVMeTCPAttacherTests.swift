import Foundation
import NVMeCSICore
import TestSupport
import Testing

@testable import NVMeFabrics

@Suite("NVMe/TCP attacher without kernel NVMe")
struct NVMeTCPAttacherTests {
  static func context(_ paths: [HostPort] = [.init(host: "127.0.0.1", port: 4420)]) -> PublishContext {
    PublishContext(paths: paths, subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA)
  }

  @Test("A missing fabrics device is FailedPrecondition naming the path and what to load, Talos included")
  func noFabrics() async throws {
    try await withTemporaryDirectory { root in
      let missing = root + "/fabrics"
      let attacher = NVMeTCPAttacher(sysfs: SysfsNVMe(sysfs: root), fabricsDevice: missing)
      let error = await expectError(
        .failedPrecondition, mentioning: ["(\(missing) missing)", "load nvme-tcp", "Talos"]
      ) {
        try attacher.checkKernelSupport()
      }
      #expect(error?.message.contains("(/dev/nvme-fabrics") == false, "names the configured path, not the default")
    }
  }

  @Test("A present fabrics device passes the kernel check")
  func fabricsPresent() async throws {
    try await withTemporaryDirectory { root in
      let device = root + "/nvme-fabrics"
      try Data().write(to: URL(fileURLWithPath: device))
      try NVMeTCPAttacher(sysfs: SysfsNVMe(sysfs: root), fabricsDevice: device).checkKernelSupport()
    }
  }

  @Test("Connect without a fabrics device fails with the kernel hint before it reaches libnvme")
  func connectWithoutFabrics() async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture(root: root)
      let missing = root + "/nvme-fabrics"
      let attacher = NVMeTCPAttacher(sysfs: SysfsNVMe(sysfs: root), fabricsDevice: missing)
      let error = await expectError(.failedPrecondition, mentioning: [missing, "nvme-tcp"]) {
        try await attacher.connect(Self.context(), as: Sample.host, with: .init())
      }
      // A libnvme failure would read "connecting <nqn> at <address> … failed".
      #expect(error?.message.contains("connecting") == false)
    }
  }

  @Test("Connect is a no-op when every path already has a live or reconnecting controller")
  func connectAlreadyConnected() async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture.standard(root: root)
      let fabrics = root + "/nvme-fabrics"
      try Data().write(to: URL(fileURLWithPath: fabrics))
      // nvme0 is live at 127.0.0.1:4420, nvme1 connecting at [fd00::1]:4420: neither
      // may get a second controller, so libnvme is never called (it would fail here).
      let attacher = NVMeTCPAttacher(sysfs: SysfsNVMe(sysfs: root), fabricsDevice: fabrics)
      try await attacher.connect(
        Self.context([.init(host: "127.0.0.1", port: 4420), .init(host: "fd00::1", port: 4420)]), as: Sample.host,
        with: .init())
    }
  }

  @Test("Disconnecting a subsystem that has no controllers succeeds")
  func disconnectNothing() async throws {
    try await withTemporaryDirectory { root in
      _ = try SysfsFixture(root: root)
      let attacher = NVMeTCPAttacher(sysfs: SysfsNVMe(sysfs: root), fabricsDevice: root + "/nvme-fabrics")
      try await attacher.disconnect(subsystemNQN: Sample.nqnA)
      try await attacher.disconnect(subsystemNQN: Sample.nqnA)
    }
  }

  @Test("Device, paths and rescan come from sysfs")
  func readsSysfs() async throws {
    try await withTemporaryDirectory { root in
      let fixture = try SysfsFixture.standard(root: root)
      let attacher = NVMeTCPAttacher(sysfs: SysfsNVMe(sysfs: root), fabricsDevice: root + "/nvme-fabrics")
      #expect(try attacher.device(subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA)?.name == "nvme0n1")
      #expect(attacher.paths(subsystemNQN: Sample.nqnA).map(\.name) == ["nvme0", "nvme1"])
      try attacher.rescan(subsystemNQN: Sample.nqnA)
      #expect(fixture.read(SysfsFixture.controllerDirectory + "nvme0/rescan_controller") == "1")
    }
  }
}
