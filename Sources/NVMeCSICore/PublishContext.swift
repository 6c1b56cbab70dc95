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
  /// The other legs of a replicated volume (legs 1…), each its own subsystem on its own
  /// target; the fields above are leg 0's. Empty for a single-copy volume.
  public var replicaLegs: [Leg]
  /// The version of the leg map (`LegMap`) the legs above come from: 0 for a volume
  /// whose legs were never replaced. The node keeps it with its staging record and
  /// follows a newer map it reads from the legs themselves.
  public var legMapVersion: UInt64

  /// How to reach one leg (one subsystem, namespace 1) and recognise its device.
  public struct Leg: Hashable, Sendable {
    public var paths: [HostPort]
    public var subsystemNQN: String
    public var namespaceUUID: String

    public init(paths: [HostPort], subsystemNQN: String, namespaceUUID: String) {
      self.paths = paths
      self.subsystemNQN = subsystemNQN
      self.namespaceUUID = namespaceUUID
    }
  }

  public init(
    transport: String = "tcp", paths: [HostPort], subsystemNQN: String, namespaceUUID: String,
    connection: [String: String] = [:], replicaLegs: [Leg] = [], legMapVersion: UInt64 = 0
  ) {
    self.transport = transport
    self.paths = paths
    self.subsystemNQN = subsystemNQN
    self.namespaceUUID = namespaceUUID
    self.connection = connection
    self.replicaLegs = replicaLegs
    self.legMapVersion = legMapVersion
  }

  /// Every leg, leg 0 first.
  public var legs: [Leg] {
    [Leg(paths: paths, subsystemNQN: subsystemNQN, namespaceUUID: namespaceUUID)] + replicaLegs
  }

  /// One leg's context, as a single-copy volume's (what the attacher connects).
  public func context(of leg: Leg) -> PublishContext {
    PublishContext(
      transport: transport, paths: leg.paths, subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID,
      connection: connection)
  }

  enum Key {
    static let transport = "transport"
    static let paths = "paths"
    static let subsystemNQN = "subsystemNQN"
    static let namespaceUUID = "namespaceUUID"
    /// Present only when above 0.
    static let legMapVersion = "legMapVersion"
    /// Leg i ≥ 1's keys: "leg1/paths", …
    static func leg(_ index: Int, _ key: String) -> String { "leg\(index)/\(key)" }
  }

  /// `paths` is a comma-separated list of `address:port` (`[v6]:port` for IPv6).
  public var encoded: [String: String] {
    var values = connection.merging(
      [
        Key.transport: transport,
        Key.paths: paths.map(\.description).joined(separator: ","),
        Key.subsystemNQN: subsystemNQN,
        Key.namespaceUUID: namespaceUUID,
      ]
    ) { $1 }
    for (offset, leg) in replicaLegs.enumerated() {
      values[Key.leg(offset + 1, Key.paths)] = leg.paths.map(\.description).joined(separator: ",")
      values[Key.leg(offset + 1, Key.subsystemNQN)] = leg.subsystemNQN
      values[Key.leg(offset + 1, Key.namespaceUUID)] = leg.namespaceUUID
    }
    if legMapVersion > 0 { values[Key.legMapVersion] = String(legMapVersion) }
    return values
  }

  public init(decoding values: [String: String]) throws(NVMeCSIError) {
    func value(_ key: String) throws(NVMeCSIError) -> String {
      guard let v = values[key], !v.isEmpty else {
        throw .invalidArgument("publish_context has no \(key): was the volume published by this driver's controller?")
      }
      return v
    }
    func leg(_ key: (String) -> String) throws(NVMeCSIError) -> Leg {
      var paths: [HostPort] = []
      for item in try value(key(Key.paths)).split(separator: ",") {
        do { paths.append(try HostPort(parsing: item)) } catch {
          throw .invalidArgument(
            "publish_context path \(quoted(String(item))) is not address:port (\(error.message))")
        }
      }
      guard !paths.isEmpty else { throw .invalidArgument("publish_context lists no paths to connect to") }
      let nqn = try value(key(Key.subsystemNQN))
      guard SubsystemNaming.volume(inNQN: nqn) != nil else {
        throw .invalidArgument("publish_context subsystemNQN \(quoted(nqn)) is not a subsystem of this driver")
      }
      let uuid = try ObjectUUID(try value(key(Key.namespaceUUID)))
      return Leg(paths: paths, subsystemNQN: nqn, namespaceUUID: uuid.value)
    }
    let transport = try value(Key.transport)
    guard transport == "tcp" else {
      throw .invalidArgument("publish_context transport \(quoted(transport)) is not supported (tcp)")
    }
    let first = try leg { $0 }
    var others: [Leg] = []
    for index in 1..<ReplicaLayout.maximumReplicas where values[Key.leg(index, Key.subsystemNQN)] != nil {
      guard others.count == index - 1 else { throw .invalidArgument("publish_context skips leg \(index - 1)") }
      others.append(try leg { Key.leg(index, $0) })
    }
    var legMapVersion: UInt64 = 0
    if let text = values[Key.legMapVersion] {
      // Decimal digits only (UInt64(_:) would also take a sign).
      guard !text.isEmpty, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
        let version = UInt64(text)
      else {
        throw .invalidArgument(
          "publish_context \(Key.legMapVersion) \(quoted(text)) is not a leg map version"
            + " (a decimal number up to \(UInt64.max))")
      }
      legMapVersion = version
    }
    // Checked where they are used, with the volume_context they override.
    let connection = values.filter { ConnectionParameters.keys.contains($0.key) }
    self.init(
      transport: transport, paths: first.paths, subsystemNQN: first.subsystemNQN, namespaceUUID: first.namespaceUUID,
      connection: connection, replicaLegs: others, legMapVersion: legMapVersion)
  }
}
