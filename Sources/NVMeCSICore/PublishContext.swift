/// What ControllerPublishVolume tells the node (CSI `publish_context`): how to reach
/// the volume and how to recognise its device. Both plugins use this type, so the
/// keys cannot drift apart.
public struct PublishContext: Hashable, Sendable {
  public struct Path: Hashable, Sendable {
    public var address: String
    public var port: UInt16
    public init(address: String, port: UInt16) {
      self.address = address
      self.port = port
    }
  }

  public var transport: String
  public var paths: [Path]
  public var subsystemNQN: String
  public var namespaceUUID: String

  public init(transport: String = "tcp", paths: [Path], subsystemNQN: String, namespaceUUID: String) {
    self.transport = transport
    self.paths = paths
    self.subsystemNQN = subsystemNQN
    self.namespaceUUID = namespaceUUID
  }

  enum Key {
    static let transport = "transport"
    static let paths = "paths"
    static let subsystemNQN = "subsystemNQN"
    static let namespaceUUID = "namespaceUUID"
  }

  /// `paths` is a comma-separated list of `address:port` (`[v6]:port` for IPv6).
  public var encoded: [String: String] {
    [
      Key.transport: transport,
      Key.paths: paths.map { $0.address.contains(":") ? "[\($0.address)]:\($0.port)" : "\($0.address):\($0.port)" }
        .joined(separator: ","),
      Key.subsystemNQN: subsystemNQN,
      Key.namespaceUUID: namespaceUUID,
    ]
  }

  public init(decoding values: [String: String]) throws(NVMeCSIError) {
    func value(_ key: String) throws(NVMeCSIError) -> String {
      guard let v = values[key], !v.isEmpty else {
        throw .invalidArgument("publish_context has no \(key): was the volume published by this driver's controller?")
      }
      return v
    }
    let transport = try value(Key.transport)
    guard transport == "tcp" else { throw .invalidArgument("publish_context transport \(quoted(transport)) is not supported (tcp)") }
    var paths: [Path] = []
    for item in try value(Key.paths).split(separator: ",") {
      guard let colon = item.lastIndex(of: ":"), let port = UInt16(item[item.index(after: colon)...]) else {
        throw .invalidArgument("publish_context path \(quoted(String(item))) is not address:port")
      }
      var address = item[..<colon]
      if address.hasPrefix("[") && address.hasSuffix("]") { address = address.dropFirst().dropLast() }
      paths.append(Path(address: String(address), port: port))
    }
    guard !paths.isEmpty else { throw .invalidArgument("publish_context lists no paths to connect to") }
    let nqn = try value(Key.subsystemNQN)
    guard SubsystemNaming.volume(inNQN: nqn) != nil else {
      throw .invalidArgument("publish_context subsystemNQN \(quoted(nqn)) is not a subsystem of this driver")
    }
    let uuid = try ObjectUUID(try value(Key.namespaceUUID))
    self.init(transport: transport, paths: paths, subsystemNQN: nqn, namespaceUUID: uuid.value)
  }
}
