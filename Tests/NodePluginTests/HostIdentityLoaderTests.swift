import Foundation
import Logging
import NVMeCSICore
import NodePlugin
import Testing

@Suite("Host identity")
struct HostIdentityLoaderTests {
  static let logger = Logger(label: "test.identity") { _ in SwiftLogNoOpLogHandler() }
  static let uuid = "6b1c6d5e-0e7e-4a39-9d8f-0a1b2c3d4e5f"
  static let uuidNQN = "nqn.2014-08.org.nvmexpress:uuid:" + uuid

  /// An /etc/nvme-like directory, a state directory and a machine-id file in a temp dir.
  struct Directories {
    let root: String
    var nvme: String { root + "/etc/nvme" }
    var state: String { root + "/state" }
    var machineID: String { root + "/etc/machine-id" }
    var productUUID: String { root + "/sys/class/dmi/id/product_uuid" }

    func write(_ path: String, _ text: String) throws {
      try FileManager.default.createDirectory(
        atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
      try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    func read(_ path: String) -> String? {
      FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
    }

    var loader: HostIdentityLoader {
      HostIdentityLoader(nvmeConfigDirectory: nvme, stateDirectory: state, machineIDFiles: [machineID, productUUID])
    }

    func load() throws -> HostIdentity { try loader.load(logger: HostIdentityLoaderTests.logger) }
  }

  static func withDirectories(createState: Bool = true, _ body: (Directories) throws -> Void) throws {
    let root = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: root) }
    let d = Directories(root: root)
    try FileManager.default.createDirectory(atPath: d.nvme, withIntermediateDirectories: true)
    if createState { try FileManager.default.createDirectory(atPath: d.state, withIntermediateDirectories: true) }
    try body(d)
  }

  /// Runs `body`, expecting an NVMeCSIError of `kind` mentioning `fragment`.
  static func expectError(
    _ kind: NVMeCSIError.Kind, mentioning fragment: String, _ body: () throws -> HostIdentity,
    sourceLocation: SourceLocation = #_sourceLocation
  ) {
    do {
      let identity = try body()
      Issue.record("expected \(kind), loaded \(identity)", sourceLocation: sourceLocation)
    } catch let error as NVMeCSIError {
      #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
      #expect(error.message.contains(fragment), "\(error) does not mention \(fragment)", sourceLocation: sourceLocation)
    } catch {
      Issue.record("expected an NVMeCSIError, got \(error)", sourceLocation: sourceLocation)
    }
  }

  @Test("hostnqn and hostid as Talos and nvme-cli write them are used as they are")
  func bothFiles() throws {
    try Self.withDirectories { d in
      let nqn = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555"
      try d.write(d.nvme + "/hostnqn", nqn + "\n")
      try d.write(d.nvme + "/hostid", Self.uuid.uppercased() + "\n")
      try d.write(d.machineID, "0123456789abcdef0123456789abcdef\n")
      let identity = try d.load()
      #expect(identity.nqn.value == nqn)
      #expect(identity.id.value == Self.uuid)
      #expect(d.read(d.state + "/hostnqn") == nil, "nothing is derived or saved")
    }
  }

  @Test("Only a hostnqn in uuid form: the host ID is taken from it")
  func onlyUUIDHostNQN() throws {
    try Self.withDirectories { d in
      try d.write(d.nvme + "/hostnqn", Self.uuidNQN.replacingOccurrences(of: "6b1c", with: "6B1C") + "\n")
      let identity = try d.load()
      #expect(identity.id.value == Self.uuid)
      #expect(identity.nqn.value.hasSuffix(":uuid:6B1C6d5e-0e7e-4a39-9d8f-0a1b2c3d4e5f"))
    }
  }

  @Test("Only a hostnqn without a UUID in it is FailedPrecondition asking for hostid")
  func onlyPlainHostNQN() throws {
    try Self.withDirectories { d in
      try d.write(d.nvme + "/hostnqn", "nqn.2014-08.com.example:node-1\n")
      Self.expectError(.failedPrecondition, mentioning: d.nvme + "/hostid") { try d.load() }
    }
  }

  @Test("An empty hostnqn or hostid is FailedPrecondition, never replaced by a derived identity")
  func emptyFiles() throws {
    for (empty, other) in [("hostnqn", "hostid"), ("hostid", "hostnqn")] {
      try Self.withDirectories { d in
        try d.write(d.nvme + "/" + empty, "\n")
        try d.write(d.nvme + "/" + other, other == "hostid" ? Self.uuid : Self.uuidNQN)
        try d.write(d.machineID, "0123456789abcdef0123456789abcdef\n")
        Self.expectError(.failedPrecondition, mentioning: d.nvme + "/\(empty) is empty") { try d.load() }
        #expect(d.read(d.state + "/hostnqn") == nil)
      }
    }
  }

  @Test("A hostid without a hostnqn is FailedPrecondition")
  func hostIDWithoutHostNQN() throws {
    try Self.withDirectories { d in
      try d.write(d.nvme + "/hostid", Self.uuid + "\n")
      try d.write(d.machineID, "0123456789abcdef0123456789abcdef\n")
      Self.expectError(.failedPrecondition, mentioning: "hostnqn") { try d.load() }
    }
  }

  @Test(
    "A hostid that is not a UUID, or a hostnqn that is not an NQN, is FailedPrecondition",
    arguments: [
      ("hostid", "not-a-uuid"), ("hostnqn", "iqn.2004-01.com.example:node-1"),
    ])
  func malformed(file: String, content: String) throws {
    try Self.withDirectories { d in
      try d.write(d.nvme + "/hostnqn", Self.uuidNQN)
      try d.write(d.nvme + "/hostid", Self.uuid)
      try d.write(d.nvme + "/" + file, content + "\n")
      Self.expectError(.failedPrecondition, mentioning: d.nvme + "/" + file) { try d.load() }
    }
  }

  @Test("With nothing in /etc/nvme the identity is derived from the machine ID, saved, and the same on the next load")
  func derivedFromMachineID() throws {
    try Self.withDirectories { d in
      try d.write(d.machineID, "0123456789ABCDEF0123456789abcdef\n")
      let first = try d.load()
      #expect(first.id.value == "01234567-89ab-cdef-0123-456789abcdef")
      #expect(first.nqn.value == "nqn.2014-08.org.nvmexpress:uuid:01234567-89ab-cdef-0123-456789abcdef")
      #expect(d.read(d.state + "/hostnqn") == first.nqn.value + "\n")
      #expect(d.read(d.state + "/hostid") == first.id.value + "\n")
      // The saved pair wins even when the machine ID changes (a reinstalled OS keeps its grants).
      try d.write(d.machineID, "ffffffffffffffffffffffffffffffff\n")
      #expect(try d.load() == first)
    }
  }

  @Test("Two machines with different machine IDs get different host NQNs")
  func differentMachines() throws {
    var identities: [HostIdentity] = []
    for machineID in ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"] {
      try Self.withDirectories { d in
        try d.write(d.machineID, machineID + "\n")
        identities.append(try d.load())
      }
    }
    #expect(identities.count == 2)
    #expect(identities[0].nqn != identities[1].nqn)
    #expect(identities[0].id != identities[1].id)
  }

  @Test("The same machine ID gives the same identity on a fresh state directory")
  func deterministic() throws {
    var identities: [HostIdentity] = []
    for _ in 0..<2 {
      try Self.withDirectories { d in
        try d.write(d.machineID, "0123456789abcdef0123456789abcdef\n")
        identities.append(try d.load())
      }
    }
    #expect(identities.count == 2 && identities[0] == identities[1])
  }

  @Test("Without a usable machine-id the DMI product UUID is used")
  func productUUID() throws {
    try Self.withDirectories { d in
      try d.write(d.machineID, "uninitialized\n")
      try d.write(d.productUUID, "4C4C4544-0042-3510-8052-B4C04F384E32\n")
      #expect(try d.load().id.value == "4c4c4544-0042-3510-8052-b4c04f384e32")
    }
  }

  @Test("Without any machine ID a random identity is created once and kept")
  func randomButKept() throws {
    try Self.withDirectories { d in
      let first = try d.load()
      #expect(first.nqn.value == "nqn.2014-08.org.nvmexpress:uuid:" + first.id.value)
      #expect(try d.load() == first)
    }
  }

  @Test("/etc/nvme wins over a pair saved earlier")
  func nvmeDirectoryWins() throws {
    try Self.withDirectories { d in
      try d.write(d.machineID, "0123456789abcdef0123456789abcdef\n")
      _ = try d.load()
      try d.write(d.nvme + "/hostnqn", Self.uuidNQN + "\n")
      try d.write(d.nvme + "/hostid", Self.uuid + "\n")
      #expect(try d.load().id.value == Self.uuid)
    }
  }

  @Test("A state directory that does not exist yet is created for the derived identity")
  func missingStateDirectory() throws {
    try Self.withDirectories(createState: false) { d in
      try d.write(d.machineID, "0123456789abcdef0123456789abcdef\n")
      let identity = try d.load()
      #expect(d.read(d.state + "/hostnqn") == identity.nqn.value + "\n")
    }
  }
}
