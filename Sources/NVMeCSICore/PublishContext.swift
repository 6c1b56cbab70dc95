/// What ControllerPublishVolume tells the node (CSI `publish_context`): how to reach
/// the volume and how to recognise its device. Both plugins use this type, so the
/// keys cannot drift apart.
public struct PublishContext: Hashable, Sendable {
  public var transport: String
  public var paths: [HostPort]
  public var subsystemNQN: String
  public var namespaceUUID: String
  /// Connection settings changed since the volume was created (ControllerModifyVolume,
  /// a VolumeAttributesClass), under `ConnectionParameters`' keys: they override the
  /// volume_context's, which Kubernetes never changes after CreateVolume.
  public var connection: [String: String]

  public init(
    transport: String = "tcp", paths: [HostPort], subsystemNQN: String, namespaceUUID: String,
    connection: [String: String] = [:]
  ) {
    self.transport = transport
    self.paths = paths
    self.subsystemNQN = subsystemNQN
    self.namespaceUUID = namespaceUUID
    self.connection = connection
  }

  enum Key {
    static let transport = "transport"
    static let paths = "paths"
    static let subsystemNQN = "subsystemNQN"
    static let namespaceUUID = "namespaceUUID"
  }

  /// `paths` is a comma-separated list of `address:port` (`[v6]:port` for IPv6).
  public var encoded: [String: String] {
    connection.merging(
      [
        Key.transport: transport,
        Key.paths: paths.map(\.description).joined(separator: ","),
        Key.subsystemNQN: subsystemNQN,
        Key.namespaceUUID: namespaceUUID,
      ]
    ) { $1 }
  }

  public init(decoding values: [String: String]) throws(NVMeCSIError) {
    func value(_ key: String) throws(NVMeCSIError) -> String {
      guard let v = values[key], !v.isEmpty else {
        throw .invalidArgument("publish_context has no \(key): was the volume published by this driver's controller?")
      }
      return v
    }
    let transport = try value(Key.transport)
    guard transport == "tcp" else {
      throw .invalidArgument("publish_context transport \(quoted(transport)) is not supported (tcp)")
    }
    var paths: [HostPort] = []
    for item in try value(Key.paths).split(separator: ",") {
      do { paths.append(try HostPort(parsing: item)) } catch {
        throw .invalidArgument("publish_context path \(quoted(String(item))) is not address:port (\(error.message))")
      }
    }
    guard !paths.isEmpty else { throw .invalidArgument("publish_context lists no paths to connect to") }
    let nqn = try value(Key.subsystemNQN)
    guard SubsystemNaming.volume(inNQN: nqn) != nil else {
      throw .invalidArgument("publish_context subsystemNQN \(quoted(nqn)) is not a subsystem of this driver")
    }
    let uuid = try ObjectUUID(try value(Key.namespaceUUID))
    // Checked where they are used, with the volume_context they override.
    let connection = values.filter { ConnectionParameters.keys.contains($0.key) }
    self.init(transport: transport, paths: paths, subsystemNQN: nqn, namespaceUUID: uuid.value, connection: connection)
  }
}
