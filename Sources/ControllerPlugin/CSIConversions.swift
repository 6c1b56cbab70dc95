import CSIProto
import CSIServer
import NVMeCSICore

extension VolumeCapabilities {
  /// A request's capabilities; `invalidArgument` when there are none or one is unsupported.
  init(_ capabilities: [Csi_V1_VolumeCapability]) throws(NVMeCSIError) {
    guard !capabilities.isEmpty else {
      throw .invalidArgument("volume_capabilities is empty: at least one is required")
    }
    var accesses: [VolumeAccess] = []
    for capability in capabilities { accesses.append(try VolumeAccess(capability)) }
    self.init(accesses)
  }
}

/// What the controller keeps in a volume's record on its target (the record's
/// `attributes`, opaque to the target): the capabilities it was created for, and the
/// volume_context the node gets, each key under `context/`.
enum VolumeAttribute {
  static let capabilities = "capabilities"
  static let contextPrefix = "context/"

  static func attributes(capabilities: VolumeCapabilities, context: [String: String]) -> [String: String] {
    var attributes = [Self.capabilities: capabilities.encoded]
    for (key, value) in context { attributes[contextPrefix + key] = value }
    return attributes
  }

  static func capabilities(of record: VolumeRecord) throws(NVMeCSIError) -> VolumeCapabilities {
    try VolumeCapabilities(decoding: record.attributes[capabilities] ?? "")
  }

  static func context(of record: VolumeRecord) -> [String: String] {
    var context: [String: String] = [:]
    for (key, value) in record.attributes where key.hasPrefix(contextPrefix) {
      context[String(key.dropFirst(contextPrefix.count))] = value
    }
    return context
  }
}

extension Csi_V1_Topology {
  init(_ segments: [String: String]) {
    self.init()
    self.segments = segments
  }
}
