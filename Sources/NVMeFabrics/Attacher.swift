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
public struct ControllerPath: Hashable, Sendable, CustomStringConvertible {
  public var name: String  // "nvme3"
  public var address: String  // "127.0.0.1:4420", "[fd00::1]:4420"
  /// "live", "connecting", "resetting", "deleting", "dead", …
  public var state: String

  public init(name: String, address: String, state: String) {
    self.name = name
    self.address = address
    self.state = state
  }

  public var isLive: Bool { state == "live" }

  /// "nvme3 127.0.0.1:4420 live"
  public var description: String { "\(name) \(address) \(state)" }

  /// The paths for a message: "nvme3 127.0.0.1:4420 live, nvme4 … connecting", or "none".
  public static func describe(_ paths: [ControllerPath]) -> String {
    paths.isEmpty ? "none" : paths.map(\.description).joined(separator: ", ")
  }
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
        throw .unavailable(
          "no block device for namespace \(namespaceUUID) of \(subsystemNQN) within \(timeout)"
            + " (controllers: \(ControllerPath.describe(paths(subsystemNQN: subsystemNQN))))")
      }
      // The device appears ~10 ms after connect returns; 5 ms polls cost nothing.
      do { try await Task.sleep(for: .milliseconds(5)) } catch {
        // Only cancellation ends a sleep early; polling on would spin until the deadline.
        throw .aborted("the request was cancelled while waiting for namespace \(namespaceUUID) of \(subsystemNQN)")
      }
    }
  }
}
