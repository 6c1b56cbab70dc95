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
/// `attributes`, opaque to the target): the capabilities it was created for, the
/// volume_context the node gets, each key under `context/`, and the connection settings
/// changed since (mutable parameters), each under `modified/`.
enum VolumeAttribute {
  static let capabilities = "capabilities"
  static let contextPrefix = "context/"
  static let modifiedPrefix = "modified/"

  static func attributes(
    capabilities: VolumeCapabilities, context: [String: String], modified: [String: String] = [:]
  ) -> [String: String] {
    var attributes = [Self.capabilities: capabilities.encoded]
    for (key, value) in context { attributes[contextPrefix + key] = value }
    return attributes.merging(Self.modified(modified)) { $1 }
  }

  /// Mutable parameters as attributes.
  static func modified(_ values: [String: String]) -> [String: String] {
    Dictionary(uniqueKeysWithValues: values.map { (modifiedPrefix + $0.key, $0.value) })
  }

  /// The settings changed since creation, by their own keys.
  static func modified(of attributes: [String: String]) -> [String: String] {
    var modified: [String: String] = [:]
    for (key, value) in attributes where key.hasPrefix(modifiedPrefix) {
      modified[String(key.dropFirst(modifiedPrefix.count))] = value
    }
    return modified
  }

  /// The connection settings in force: the creation's, overridden by later changes.
  static func effectiveContext(of record: VolumeRecord) -> [String: String] {
    context(of: record).merging(modified(of: record.attributes)) { $1 }
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
