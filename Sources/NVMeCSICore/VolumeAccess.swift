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
      throw .invalidArgument(
        "access mode MULTI_NODE_SINGLE_WRITER is not supported: use a SINGLE_NODE_* mode, or MULTI_NODE_READER_ONLY")
    case .multiNodeMultiWriter where type == .mount:
      throw .invalidArgument(
        "access mode MULTI_NODE_MULTI_WRITER needs access type block: "
          + "ext4 and xfs are not cluster file systems, mounting one on several nodes corrupts it"
      )
    default: break
    }
    if type == .mount && !fsType.isEmpty && !Self.supportedFileSystems.contains(fsType) {
      throw .invalidArgument(
        "fs_type \(quoted(fsType)) is not supported: use one of \(Self.supportedFileSystems.joined(separator: ", "))")
    }
  }
}

/// The accesses a volume was created for, kept with the volume so a repeated
/// CreateVolume can be compared with the original and expansion knows whether a file
/// system needs growing. One text encoding: `type:fsType:mode` items joined by `;`,
/// sorted, e.g. `block::singleNodeWriter;mount:ext4:singleNodeWriter`.
public struct VolumeCapabilities: Hashable, Sendable {
  public var accesses: Set<VolumeAccess>

  public init(_ accesses: some Sequence<VolumeAccess>) { self.accesses = Set(accesses) }

  /// Single-node when every access is: then the target lets one host have it at a time.
  public var sharing: VolumeSharing { accesses.allSatisfy(\.mode.isSingleNode) ? .singleNode : .multiNode }

  /// Whether every access is raw block (nothing to grow on the node).
  public var isBlockOnly: Bool { !accesses.isEmpty && accesses.allSatisfy { $0.type == .block } }

  public var encoded: String {
    accesses.map { "\($0.type.rawValue):\($0.fsType):\($0.mode.rawValue)" }.sorted().joined(separator: ";")
  }

  public init(decoding text: String) throws(NVMeCSIError) {
    var accesses: [VolumeAccess] = []
    for item in text.split(separator: ";") {
      let fields = item.split(separator: ":", omittingEmptySubsequences: false)
      guard fields.count == 3, let type = AccessType(rawValue: String(fields[0])),
        let mode = AccessMode(rawValue: String(fields[2]))
      else {
        throw .internalError("stored capabilities \(quoted(text)) are not type:fsType:mode items")
      }
      accesses.append(VolumeAccess(type: type, mode: mode, fsType: String(fields[1])))
    }
    self.init(accesses)
  }
}
