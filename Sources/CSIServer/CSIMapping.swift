import CSIProto
import NVMeCSICore

/// CSI capability messages ↔ the driver's `VolumeAccess`.
extension VolumeAccess {
  /// Maps and validates one CSI capability; throws `invalidArgument` saying what is
  /// missing or unsupported.
  public init(_ capability: Csi_V1_VolumeCapability) throws(NVMeCSIError) {
    let type: AccessType
    var fsType = ""
    switch capability.accessType {
    case .block?: type = .block
    case .mount(let mount)?:
      type = .mount
      fsType = mount.fsType
    case nil: throw .invalidArgument("volume capability has no access type: set block or mount")
    }
    guard capability.hasAccessMode else { throw .invalidArgument("volume capability has no access mode") }
    let mode: AccessMode
    switch capability.accessMode.mode {
    case .singleNodeWriter: mode = .singleNodeWriter
    case .singleNodeReaderOnly: mode = .singleNodeReaderOnly
    case .singleNodeSingleWriter: mode = .singleNodeSingleWriter
    case .singleNodeMultiWriter: mode = .singleNodeMultiWriter
    case .multiNodeReaderOnly: mode = .multiNodeReaderOnly
    case .multiNodeSingleWriter: mode = .multiNodeSingleWriter
    case .multiNodeMultiWriter: mode = .multiNodeMultiWriter
    case .unknown, .UNRECOGNIZED:
      throw .invalidArgument("volume capability has an unknown access mode (\(capability.accessMode.mode.rawValue))")
    }
    self.init(type: type, mode: mode, fsType: fsType)
    try validate()
  }
}
