import NVMeCSICore
import TestSupport
import Testing

@Suite("Volume access")
struct VolumeAccessTests {
  @Test(
    "Raw block access works in every mode but MULTI_NODE_SINGLE_WRITER",
    arguments: AccessMode.allCases.filter { $0 != .multiNodeSingleWriter })
  func block(_ mode: AccessMode) throws {
    try VolumeAccess(type: .block, mode: mode).validate()
  }

  @Test(
    "A mounted file system works in every mode but the multi-node writers",
    arguments: AccessMode.allCases.filter { $0 != .multiNodeSingleWriter && $0 != .multiNodeMultiWriter })
  func mount(_ mode: AccessMode) throws {
    try VolumeAccess(type: .mount, mode: mode, fsType: "ext4").validate()
  }

  @Test("MULTI_NODE_MULTI_WRITER with a mount is rejected because the file systems are not clustered")
  func multiWriterMount() {
    expectError(.invalidArgument, mentioning: ["MULTI_NODE_MULTI_WRITER", "block"]) {
      try VolumeAccess(type: .mount, mode: .multiNodeMultiWriter).validate()
    }
  }

  @Test("MULTI_NODE_SINGLE_WRITER is rejected for both access types", arguments: [AccessType.block, .mount])
  func multiSingleWriter(_ type: AccessType) {
    expectError(.invalidArgument, mentioning: ["MULTI_NODE_SINGLE_WRITER"]) {
      try VolumeAccess(type: type, mode: .multiNodeSingleWriter).validate()
    }
  }

  @Test("ext4, xfs and the node's default are the supported file systems", arguments: ["ext4", "xfs", ""])
  func supportedFileSystems(_ fsType: String) throws {
    try VolumeAccess(type: .mount, mode: .singleNodeWriter, fsType: fsType).validate()
  }

  @Test("Other file systems are rejected, quoting the name", arguments: ["btrfs", "EXT4", "ext4 ", "nfs", "ext3"])
  func unsupportedFileSystems(_ fsType: String) {
    expectError(.invalidArgument, mentioning: [quoted(fsType), "ext4", "xfs"]) {
      try VolumeAccess(type: .mount, mode: .singleNodeWriter, fsType: fsType).validate()
    }
  }

  @Test("Modes know whether they are single-node and read-only")
  func modeProperties() {
    let singleNode: Set<AccessMode> = [
      .singleNodeWriter, .singleNodeReaderOnly, .singleNodeSingleWriter, .singleNodeMultiWriter,
    ]
    let readOnly: Set<AccessMode> = [.singleNodeReaderOnly, .multiNodeReaderOnly]
    for mode in AccessMode.allCases {
      #expect(mode.isSingleNode == singleNode.contains(mode), "\(mode)")
      #expect(mode.isReadOnly == readOnly.contains(mode), "\(mode)")
    }
  }
}
