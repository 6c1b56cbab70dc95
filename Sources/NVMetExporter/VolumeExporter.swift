import NVMeCSICore

/// An NVMe/TCP listen address (an nvmet port).
public struct Portal: Hashable, Sendable, CustomStringConvertible {
  public var address: String
  public var port: UInt16

  public init(address: String, port: UInt16) {
    self.address = address
    self.port = port
  }

  /// Parses `addr:port` or `[v6addr]:port`; the address must be a numeric IP.
  public init(parsing s: String) throws(NVMeCSIError) {
    var host = Substring(s)
    var portText: Substring
    if host.hasPrefix("[") {
      guard let close = host.firstIndex(of: "]"), host[host.index(after: close)...].hasPrefix(":") else {
        throw .invalidArgument("portal \(quoted(s)) is not [ipv6]:port")
      }
      portText = host[host.index(close, offsetBy: 2)...]
      host = host[host.index(after: host.startIndex)..<close]
    } else {
      guard let colon = host.lastIndex(of: ":") else { throw .invalidArgument("portal \(quoted(s)) is not address:port") }
      portText = host[host.index(after: colon)...]
      host = host[..<colon]
      guard !host.contains(":") else { throw .invalidArgument("portal \(quoted(s)): write IPv6 addresses as [address]:port") }
    }
    guard let port = UInt16(portText), port > 0 else { throw .invalidArgument("portal \(quoted(s)) has no valid port") }
    let octets = host.split(separator: ".", omittingEmptySubsequences: false)
    let isIPv4 = octets.count == 4 && octets.allSatisfy { UInt8($0) != nil }
    let isIPv6 = host.contains(":") && host.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." }
    guard isIPv4 || isIPv6 else {
      throw .invalidArgument("portal \(quoted(s)): \(quoted(String(host))) is not a numeric IPv4 or IPv6 address")
    }
    self.init(address: String(host), port: port)
  }

  public var isIPv6: Bool { address.contains(":") }
  public var description: String { isIPv6 ? "[\(address)]:\(port)" : "\(address):\(port)" }
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
  /// "nvmet" (the kernel) or "simulated" (a plain directory; nothing is served).
  var kind: String { get }
  var portals: [Portal] { get }

  func apply(_ spec: ExportSpec) throws(NVMeCSIError)
  /// Makes the exporter re-read the size of a grown device.
  func refreshSize(of volume: ObjectUUID) throws(NVMeCSIError)
  func remove(_ volume: ObjectUUID) throws(NVMeCSIError)
  /// Volumes of ours that are exported now.
  func exportedVolumes() -> [ObjectUUID]
  /// Nil when the export matches the spec, else what is wrong.
  func problem(with spec: ExportSpec) -> String?
}
