import NVMeCSICore

/// A block device the kernel created for a namespace.
public struct BlockDevice: Hashable, Sendable {
  /// Kernel name, e.g. "nvme0n1".
  public var name: String
  public var sizeBytes: UInt64
  public var path: String { "/dev/" + name }

  public init(name: String, sizeBytes: UInt64) {
    self.name = name
    self.sizeBytes = sizeBytes
  }
}

/// One NVMe/TCP controller (a path) of a subsystem, as the kernel reports it.
public struct ControllerPath: Hashable, Sendable {
  public var name: String  // "nvme3"
  public var address: String  // "127.0.0.1:4420"
  /// "live", "connecting", "resetting", "deleting", "dead", …
  public var state: String

  public init(name: String, address: String, state: String) {
    self.name = name
    self.address = address
    self.state = state
  }

  public var isLive: Bool { state == "live" }
}

/// Attaches volumes to this node over NVMe/TCP.
///
/// Contract: `connect` is idempotent per path (an existing live, connecting or
/// resetting controller for the same subsystem and address counts as connected; never
/// a second connection); `disconnect` of a subsystem without controllers succeeds.
/// Devices are found by (subsystem NQN, namespace UUID) only, never remembered by
/// name. Calls for different subsystems may run concurrently.
public protocol Attacher: Sendable {
  /// `failedPrecondition` saying what to load when the kernel cannot do NVMe/TCP.
  func checkKernelSupport() throws(NVMeCSIError)
  func connect(_ context: PublishContext, as host: HostIdentity, with parameters: ConnectionParameters)
    async throws(NVMeCSIError)
  /// The namespace's block device, or nil when the kernel has none (or it has size 0).
  func device(subsystemNQN: String, namespaceUUID: String) throws(NVMeCSIError) -> BlockDevice?
  /// Waits, bounded, until the device appears with a non-zero size.
  func waitForDevice(subsystemNQN: String, namespaceUUID: String, timeout: Duration)
    async throws(NVMeCSIError) -> BlockDevice
  func paths(subsystemNQN: String) -> [ControllerPath]
  /// Asks every controller of the subsystem to re-read namespace sizes.
  func rescan(subsystemNQN: String) throws(NVMeCSIError)
  func disconnect(subsystemNQN: String) async throws(NVMeCSIError)
}

extension Attacher {
  public func waitForDevice(subsystemNQN: String, namespaceUUID: String, timeout: Duration)
    async throws(NVMeCSIError) -> BlockDevice
  {
    let deadline = ContinuousClock.now + timeout
    while true {
      if let device = try device(subsystemNQN: subsystemNQN, namespaceUUID: namespaceUUID) { return device }
      guard ContinuousClock.now < deadline else {
        let states = paths(subsystemNQN: subsystemNQN).map { "\($0.name) \($0.address) \($0.state)" }
        throw .unavailable(
          "no block device for namespace \(namespaceUUID) of \(subsystemNQN) within \(timeout) (controllers: \(states.isEmpty ? "none" : states.joined(separator: ", ")))")
      }
      // The device appears ~10 ms after connect returns; 5 ms polls cost nothing.
      try? await Task.sleep(for: .milliseconds(5))
    }
  }
}
