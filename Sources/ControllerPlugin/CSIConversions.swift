import CSIProto
import CSIServer
import NVMeCSICore

extension VolumeAccess {
  /// A stable text form, kept in the volume's record so a repeated CreateVolume can be
  /// compared with the original.
  var canonical: String { "\(type.rawValue):\(fsType):\(mode.rawValue)" }

  static func parseAll(_ capabilities: [Csi_V1_VolumeCapability]) throws(NVMeCSIError) -> [VolumeAccess] {
    guard !capabilities.isEmpty else { throw .invalidArgument("volume_capabilities is empty: at least one is required") }
    var out: [VolumeAccess] = []
    for capability in capabilities { out.append(try VolumeAccess(capability)) }
    return out
  }

  static func canonical(_ all: [VolumeAccess]) -> String {
    Set(all.map(\.canonical)).sorted().joined(separator: ";")
  }
}

/// Keys of the attributes the controller keeps in a volume's record on its target.
enum VolumeAttribute {
  static let capabilities = "capabilities"
  static let contextPrefix = "context/"
}

extension Csi_V1_Topology {
  init(_ segments: [String: String]) {
    self.init()
    self.segments = segments
  }
}
