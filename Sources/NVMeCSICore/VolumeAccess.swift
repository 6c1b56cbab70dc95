/// How a volume is used, in the driver's own terms (the CSI service maps its
/// VolumeCapability onto these). Which combinations the driver supports lives here,
/// so every service agrees.
public enum AccessType: String, Sendable, Codable {
  case block, mount
}

public enum AccessMode: String, Sendable, Codable, CaseIterable {
  case singleNodeWriter, singleNodeReaderOnly, singleNodeSingleWriter, singleNodeMultiWriter
  case multiNodeReaderOnly, multiNodeSingleWriter, multiNodeMultiWriter

  /// Only one node may have the volume published at a time.
  public var isSingleNode: Bool {
    switch self {
    case .singleNodeWriter, .singleNodeReaderOnly, .singleNodeSingleWriter, .singleNodeMultiWriter: true
    case .multiNodeReaderOnly, .multiNodeSingleWriter, .multiNodeMultiWriter: false
    }
  }

  public var isReadOnly: Bool { self == .singleNodeReaderOnly || self == .multiNodeReaderOnly }
}

public struct VolumeAccess: Hashable, Sendable {
  public var type: AccessType
  public var mode: AccessMode
  /// File system for mount access (empty: the node's default).
  public var fsType: String

  public init(type: AccessType, mode: AccessMode, fsType: String = "") {
    self.type = type
    self.mode = mode
    self.fsType = fsType
  }

  public static let supportedFileSystems = ["ext4", "xfs"]

  /// Throws `invalidArgument` saying why, when the driver cannot serve this access.
  public func validate() throws(NVMeCSIError) {
    switch mode {
    case .multiNodeSingleWriter:
      throw .invalidArgument("access mode MULTI_NODE_SINGLE_WRITER is not supported: use a SINGLE_NODE_* mode, or MULTI_NODE_READER_ONLY")
    case .multiNodeMultiWriter where type == .mount:
      throw .invalidArgument(
        "access mode MULTI_NODE_MULTI_WRITER needs access type block: ext4 and xfs are not cluster file systems, mounting one on several nodes corrupts it")
    default: break
    }
    if type == .mount && !fsType.isEmpty && !Self.supportedFileSystems.contains(fsType) {
      throw .invalidArgument("fs_type \(quoted(fsType)) is not supported: use one of \(Self.supportedFileSystems.joined(separator: ", "))")
    }
  }
}
