/// NVMe/TCP connection knobs the node uses when it connects a volume. A StorageClass
/// may set each one; the defaults favour quick failure detection and recovery.
/// They travel from CreateVolume to the node in `volume_context` under the same keys.
public struct ConnectionParameters: Hashable, Sendable {
  /// Seconds the kernel keeps reconnecting a lost controller before removing it (-1: forever).
  public var ctrlLossTmo: Int = 600
  /// Seconds between reconnect attempts.
  public var reconnectDelay: Int = 2
  /// Seconds after a path loss before I/O fails instead of queueing (-1: never).
  /// Long enough that a target restart or a storage-node reboot is invisible to the
  /// file system (measured: an ext4 mount goes read-only when I/O fails), short
  /// enough that an application sees an error instead of hanging when a target is gone.
  public var fastIoFailTmo: Int = 120
  /// Keep-alive timeout in seconds: how fast a dead target is noticed.
  public var keepAliveTmo: Int = 5
  /// I/O queues per controller (0: the kernel's default, one per CPU).
  public var nrIoQueues: Int = 0

  public init() {}

  /// The defaults for the legs of a replicated volume: md must see a dead leg fail in
  /// seconds (not queue I/O for minutes) and the leg must come back by itself when its
  /// target does, under the same device name, so md can re-add it. Measured in
  /// docs/reliability.md: a leg's death stalls writes for about fastIoFailTmo.
  public static var replicaLeg: ConnectionParameters {
    var leg = ConnectionParameters()
    leg.ctrlLossTmo = -1
    leg.reconnectDelay = 1
    leg.fastIoFailTmo = 2
    leg.keepAliveTmo = 2
    return leg
  }

  struct Knob {
    let key: String
    let range: ClosedRange<Int>
    let allowsMinusOne: Bool
    let keyPath: WritableKeyPath<ConnectionParameters, Int>
  }

  static var knobs: [Knob] {
    [
      Knob(key: "ctrlLossTmo", range: 0...86_400, allowsMinusOne: true, keyPath: \.ctrlLossTmo),
      Knob(key: "reconnectDelay", range: 1...3_600, allowsMinusOne: false, keyPath: \.reconnectDelay),
      Knob(key: "fastIoFailTmo", range: 0...3_600, allowsMinusOne: true, keyPath: \.fastIoFailTmo),
      Knob(key: "keepAliveTmo", range: 1...3_600, allowsMinusOne: false, keyPath: \.keepAliveTmo),
      Knob(key: "nrIoQueues", range: 0...1_024, allowsMinusOne: false, keyPath: \.nrIoQueues),
    ]
  }

  public static var keys: [String] { knobs.map(\.key) }

  /// Reads the knobs present in `values` (other keys are ignored), validating each;
  /// the others keep their `defaults`.
  public init(from values: [String: String], defaults: ConnectionParameters = .init()) throws(NVMeCSIError) {
    self = defaults
    for knob in Self.knobs {
      guard let text = values[knob.key] else { continue }
      guard let n = Int(text), knob.range.contains(n) || (knob.allowsMinusOne && n == -1) else {
        let extra = knob.allowsMinusOne ? " or -1" : ""
        throw .invalidArgument(
          "parameter \(knob.key)=\(quoted(text)) is out of range: "
            + "use an integer in \(knob.range.lowerBound)...\(knob.range.upperBound)\(extra)"
        )
      }
      self[keyPath: knob.keyPath] = n
    }
    if ctrlLossTmo > 0 && reconnectDelay > ctrlLossTmo {
      throw .invalidArgument(
        "reconnectDelay (\(reconnectDelay)) must not exceed ctrlLossTmo (\(ctrlLossTmo)): the kernel would never retry")
    }
    // A ctrlLossTmo below the default fastIoFailTmo decides alone when I/O fails.
    if values["fastIoFailTmo"] == nil && ctrlLossTmo > 0 && fastIoFailTmo >= ctrlLossTmo { fastIoFailTmo = -1 }
    if ctrlLossTmo > 0 && fastIoFailTmo >= ctrlLossTmo {
      throw .invalidArgument(
        "fastIoFailTmo (\(fastIoFailTmo)) must be below ctrlLossTmo (\(ctrlLossTmo)), or the kernel ignores it")
    }
  }

  /// Every knob with its value, for `volume_context`.
  public var asContext: [String: String] {
    Dictionary(uniqueKeysWithValues: Self.knobs.map { ($0.key, String(self[keyPath: $0.keyPath])) })
  }
}

/// What a StorageClass's `parameters` mean to the controller.
public struct VolumeParameters: Hashable, Sendable {
  /// Keys Kubernetes' sidecars add (`csi.storage.k8s.io/pvc/name`, …): accepted, unused.
  public static let sidecarPrefix = "csi.storage.k8s.io/"
  /// Pins volumes to one storage target.
  public static let targetKey = "target"

  /// How many copies, each on its own target (and failure domain), mirrored on the node.
  public static let replicasKey = "replicas"

  public var target: TargetName?
  public var replicas: Int
  public var connection: ConnectionParameters

  public init(target: TargetName? = nil, replicas: Int = 1, connection: ConnectionParameters = .init()) {
    self.target = target
    self.replicas = replicas
    self.connection = connection
  }

  public init(parsing parameters: [String: String]) throws(NVMeCSIError) {
    let known = Set(ConnectionParameters.keys + [Self.targetKey, Self.replicasKey])
    for key in parameters.keys.sorted() where !known.contains(key) && !key.hasPrefix(Self.sidecarPrefix) {
      throw .invalidArgument(
        "unknown parameter \(quoted(key)): known parameters are \(known.sorted().joined(separator: ", "))")
    }
    self.target = try parameters[Self.targetKey].map { (s) throws(NVMeCSIError) in try TargetName(s) }
    self.replicas = 1
    if let text = parameters[Self.replicasKey] {
      guard let n = Int(text), (1...ReplicaLayout.maximumReplicas).contains(n) else {
        throw .invalidArgument(
          "parameter replicas=\(quoted(text)) is out of range: use 1 to \(ReplicaLayout.maximumReplicas)")
      }
      self.replicas = n
    }
    if replicas > 1, let target {
      throw .invalidArgument(
        "parameters replicas=\(replicas) and target=\(target) exclude each other: replicas need as many targets")
    }
    self.connection = try ConnectionParameters(
      from: parameters, defaults: replicas > 1 ? .replicaLeg : .init())
  }

  /// What the node needs (volume_context): every connection setting in force, and the
  /// replica count of a replicated volume.
  public var context: [String: String] {
    var context = connection.asContext
    if replicas > 1 { context[Self.replicasKey] = String(replicas) }
    return context
  }
}

/// What a VolumeAttributesClass (CSI `mutable_parameters`) may change on an existing
/// volume: the connection settings, which the node applies at the volume's next attach
/// (ControllerPublishVolume hands them over in publish_context). Everything else is
/// fixed at creation.
public struct MutableParameters: Hashable, Sendable {
  /// The settings to change, by `ConnectionParameters` key, each in its range.
  public var values: [String: String]

  public init(parsing parameters: [String: String]) throws(NVMeCSIError) {
    let mutable = Set(ConnectionParameters.keys)
    for key in parameters.keys.sorted() where !mutable.contains(key) && !key.hasPrefix(VolumeParameters.sidecarPrefix) {
      let why =
        key == VolumeParameters.targetKey
        ? "a volume stays on the target it was created on"
        : "only \(mutable.sorted().joined(separator: ", ")) can be changed after creation"
      throw .invalidArgument("parameter \(quoted(key)) cannot be modified: \(why)")
    }
    values = parameters.filter { mutable.contains($0.key) }
    _ = try ConnectionParameters(from: values)  // each value in its range
  }

  /// The settings that result from applying these changes to `current` (a volume's
  /// effective connection settings); `invalidArgument` when they do not go together.
  public func applied(to current: [String: String]) throws(NVMeCSIError) -> ConnectionParameters {
    try ConnectionParameters(from: current.merging(values) { $1 })
  }
}
