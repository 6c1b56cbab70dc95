import Foundation
import NVMeCSICore
import TestSupport
import Testing

@Suite("Host NQNs")
struct HostNQNTests {
  @Test(
    "Host NQNs as distributions write them are accepted",
    arguments: [
      Sample.hostNQN,
      "nqn.2014-08.org.nvmexpress:uuid:6B1C6D5E-0E7E-4A39-9D8F-0A1B2C3D4E5F",
      "nqn.2024-01.dev.example:node_1",
      "nqn." + String(repeating: "a", count: NodeID.maxHostNQNBytes - 4),
    ])
  func accepts(_ text: String) throws {
    #expect(try HostNQN(text).value == text)
  }

  @Test(
    "Host NQNs that could not name a configfs directory are rejected",
    arguments: [
      "", "iqn.2014-08.org.example:x", "NQN.2014-08.org.example:x", "nqn.2014-08/../../etc",
      "nqn.a b", "nqn.a\u{0}b", "nqn.a\nb", "nqn.ä",
      "nqn." + String(repeating: "a", count: NodeID.maxHostNQNBytes - 3),
    ])
  func rejects(_ text: String) {
    expectError(.invalidArgument, mentioning: [quoted(text)]) { try HostNQN(text) }
  }

  @Test("The NQN length limit leaves a CSI node ID of at most 256 bytes")
  func lengthLimit() {
    #expect("n1.".utf8.count + 36 + 1 + NodeID.maxHostNQNBytes == 256)
    #expect(NodeID.maxHostNQNBytes <= 223, "NVMe limits NQNs to 223 bytes")
  }
}

@Suite("Node IDs")
struct NodeIDTests {
  @Test("A node ID carries the host ID and NQN and prints back unchanged")
  func roundTrip() throws {
    let text = "n1.\(Sample.uuid).\(Sample.hostNQN)"
    let id = try NodeID(parsing: text)
    #expect(id.hostID.value == Sample.uuid)
    #expect(id.hostNQN.value == Sample.hostNQN)
    #expect(id.description == text)
    #expect(try NodeID(parsing: NodeID(hostID: id.hostID, hostNQN: id.hostNQN).description) == id)
  }

  @Test("A node ID of exactly 256 bytes is accepted")
  func longestAccepted() throws {
    let nqn = "nqn." + String(repeating: "a", count: NodeID.maxHostNQNBytes - 4)
    let text = "n1.\(Sample.uuid).\(nqn)"
    #expect(text.utf8.count == 256)
    #expect(try NodeID(parsing: text).hostNQN.value == nqn)
  }

  @Test("An empty node ID is an invalid argument")
  func empty() {
    expectError(.invalidArgument, mentioning: ["node ID"]) { try NodeID(parsing: "") }
  }

  static let badNodeIDs: [(String, String)] = [
    ("257 bytes", "n1.\(Sample.uuid).nqn." + String(repeating: "a", count: NodeID.maxHostNQNBytes - 3)),
    ("wrong version", "n2.\(Sample.uuid).\(Sample.hostNQN)"),
    ("no prefix", "\(Sample.uuid).\(Sample.hostNQN)"),
    ("uppercase host ID", "n1.\(Sample.uuid.uppercased()).\(Sample.hostNQN)"),
    ("short host ID", "n1.\(Sample.uuid.dropLast()).\(Sample.hostNQN)"),
    ("missing separator", "n1.\(Sample.uuid)-\(Sample.hostNQN)"),
    ("missing NQN", "n1.\(Sample.uuid)"),
    ("empty NQN", "n1.\(Sample.uuid)."),
    ("NQN of another scheme", "n1.\(Sample.uuid).iqn.2014-08.org.example:x"),
    ("slash in NQN", "n1.\(Sample.uuid).nqn.2014-08.org.example:../../x"),
    ("NUL in NQN", "n1.\(Sample.uuid).nqn.2014-08.org.example:\u{0}"),
    ("just a hostname", "worker-1"),
  ]

  @Test("A malformed node ID is a node that does not exist", arguments: badNodeIDs)
  func rejects(_ why: String, _ text: String) {
    expectError(.notFound, mentioning: ["node", quoted(text)]) { try NodeID(parsing: text) }
  }
}

@Suite("Subsystem naming")
struct SubsystemNamingTests {
  @Test("A volume's subsystem NQN leads back to the volume")
  func nqnRoundTrip() throws {
    for _ in 0..<20 {
      let uuid = ObjectUUID.random()
      let nqn = SubsystemNaming.nqn(for: uuid)
      #expect(nqn == "nqn.2024-01.dev.nvme-csi:vol:\(uuid.value)")
      #expect(SubsystemNaming.volume(inNQN: nqn) == uuid)
      #expect(nqn.utf8.count <= 223)
    }
  }

  @Test(
    "NQNs of other subsystems are not ours",
    arguments: [
      "", Sample.hostNQN, "nqn.2024-01.dev.nvme-csi:vol:", "nqn.2024-01.dev.nvme-csi:vol:\(Sample.uuid.uppercased())",
      "nqn.2024-01.dev.nvme-csi:vol:\(Sample.uuid)x", "nqn.2024-01.dev.nvme-csi:snap:\(Sample.uuid)",
      "xnqn.2024-01.dev.nvme-csi:vol:\(Sample.uuid)",
    ])
  func foreign(_ nqn: String) {
    #expect(SubsystemNaming.volume(inNQN: nqn) == nil)
  }

  @Test("The namespace UUID and NGUID are the volume's 16 bytes in UUID format")
  func namespaceIdentity() throws {
    let uuid = try ObjectUUID(Sample.uuid)
    #expect(SubsystemNaming.namespaceUUID(for: uuid).value == Sample.uuid)
    let nguid = SubsystemNaming.namespaceNGUID(for: uuid)
    #expect(nguid == "0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b")
    #expect(nguid.split(separator: "-").map(\.count) == [8, 4, 4, 4, 12])
    #expect(nguid.replacingOccurrences(of: "-", with: "") == uuid.hexDigits)
  }
}
