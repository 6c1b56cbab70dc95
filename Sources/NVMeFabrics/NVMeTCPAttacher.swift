import Foundation
import NVMeCSICore

/// The real attacher: connects and disconnects through libnvme, finds devices and
/// path states in sysfs.
public struct NVMeTCPAttacher: Attacher {
  public static let fabricsDevice = "/dev/nvme-fabrics"
  static let noFabricsHint =
    "the kernel has no NVMe over Fabrics support (/dev/nvme-fabrics missing): "
    + "load nvme-tcp (on Talos it is built in: check the machine config)"

  let libnvme: LibNVMe
  let sysfs: SysfsNVMe
  let fabricsDevice: String

  public init(libnvme: LibNVMe = LibNVMe(), sysfs: SysfsNVMe = SysfsNVMe(), fabricsDevice: String = Self.fabricsDevice)
  {
    self.libnvme = libnvme
    self.sysfs = sysfs
    self.fabricsDevice = fabricsDevice
  }

  public func checkKernelSupport() throws(NVMeCSIError) {
    guard FileManager.default.fileExists(atPath: fabricsDevice) else {
      throw .failedPrecondition(Self.noFabricsHint.replacingOccurrences(of: Self.fabricsDevice, with: fabricsDevice))
    }
  }

  public func connect(_ context: PublishContext, as host: HostIdentity, with parameters: ConnectionParameters)
    async throws(NVMeCSIError)
  {
    try checkKernelSupport()
    let existing = sysfs.paths(subsystemNQN: context.subsystemNQN)
    var errors: [NVMeCSIError] = []
    for portal in context.paths {
      // A live, connecting or resetting controller for this path is ours already:
      // the kernel is reconnecting it, and a second connection would duplicate it.
      let address = portal.description
      if existing.contains(where: {
        $0.address == address && !["deleting", "deleting (no IO)", "dead"].contains($0.state)
      }) {
        continue
      }
      do throws(NVMeCSIError) {
        _ = try await libnvme.connect(
          .init(subsystemNQN: context.subsystemNQN, portal: portal, host: host, parameters: parameters))
      } catch {
        errors.append(error)
      }
    }
    // One live path is enough to use the volume; fail only when none connected.
    if errors.count == context.paths.count, let first = errors.first { throw first }
  }

  public func device(subsystemNQN: String, namespaceUUID: String) throws(NVMeCSIError) -> BlockDevice? {
    sysfs.device(subsystemNQN: subsystemNQN, namespaceUUID: namespaceUUID)
  }

  public func paths(subsystemNQN: String) -> [ControllerPath] { sysfs.paths(subsystemNQN: subsystemNQN) }

  public func rescan(subsystemNQN: String) throws(NVMeCSIError) { try sysfs.rescan(subsystemNQN: subsystemNQN) }

  public func disconnect(subsystemNQN: String) async throws(NVMeCSIError) {
    guard !sysfs.paths(subsystemNQN: subsystemNQN).isEmpty else { return }
    try await libnvme.disconnect(subsystemNQN: subsystemNQN)
  }
}
