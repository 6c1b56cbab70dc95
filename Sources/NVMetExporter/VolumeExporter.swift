import NVMeCSICore

extension HostPort {
  /// An NVMe/TCP listen address (an nvmet port): `addr:port` or `[v6addr]:port` with a
  /// numeric IP (nvmet takes no host names) and a non-zero port.
  public init(portal text: String) throws(NVMeCSIError) {
    try self.init(parsing: text)
    guard port > 0 else { throw .invalidArgument("portal \(quoted(text)) has no valid port") }
    guard isNumeric else {
      throw .invalidArgument("portal \(quoted(text)): \(quoted(host)) is not a numeric IPv4 or IPv6 address")
    }
  }
}

/// What serves the exports.
public enum ExporterKind: String, Sendable {
  /// The kernel's NVMe target, through configfs.
  case nvmet
  /// A plain directory laid out like nvmet's configfs: nothing is served (tests, demos).
  case simulated
}

/// What one volume's export should look like.
public struct ExportSpec: Hashable, Sendable {
  public var volume: ObjectUUID
  public var devicePath: String
  public var allowedHosts: Set<String>

  public init(volume: ObjectUUID, devicePath: String, allowedHosts: Set<String>) {
    self.volume = volume
    self.devicePath = devicePath
    self.allowedHosts = allowedHosts
  }

  public var subsystemNQN: String { SubsystemNaming.nqn(for: volume) }
}

/// Makes volumes reachable over NVMe/TCP.
///
/// Contract: `apply` converges the export to the spec (creating, fixing or revoking
/// whatever differs) and is idempotent; `remove` of a missing export succeeds. Callers
/// serialize calls per volume; calls for different volumes may run concurrently.
public protocol VolumeExporter: Sendable {
  var kind: ExporterKind { get }
  var portals: [HostPort] { get }

  func apply(_ spec: ExportSpec) throws(NVMeCSIError)
  /// Makes the exporter re-read the size of a grown device.
  func refreshSize(of volume: ObjectUUID) throws(NVMeCSIError)
  func remove(_ volume: ObjectUUID) throws(NVMeCSIError)
  /// Volumes of ours that are exported now on this exporter's portals (another target
  /// on the same host has its own).
  func exportedVolumes() -> [ObjectUUID]
  /// Nil when the export matches the spec, else what is wrong.
  func problem(with spec: ExportSpec) -> String?
}
