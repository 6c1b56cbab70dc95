// NVMe Qualified Names and the CSI node ID.

/// A host's NQN, as a node presents it (from /etc/nvme/hostnqn on Talos and most
/// distributions). NVMe allows at most 223 bytes; we also restrict the charset so an
/// NQN can safely name a configfs directory.
public struct HostNQN: Hashable, Sendable, CustomStringConvertible {
  public let value: String

  public init(_ value: String) throws(NVMeCSIError) {
    let bytes = Array(value.utf8)
    let allowed = bytes.allSatisfy { b in
      isLowerAlnum(b) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b)
        || [UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "_")].contains(b)
    }
    guard value.hasPrefix("nqn."), bytes.count > 4, bytes.count <= NodeID.maxHostNQNBytes, allowed else {
      throw .invalidArgument(
        "host NQN \(quoted(value)) is not valid: it must start with \"nqn.\", "
          + "be at most \(NodeID.maxHostNQNBytes) bytes and use only letters, digits, '.', '-', ':' and '_'"
      )
    }
    self.value = value
  }

  public var description: String { value }
}

/// How a target names the NVMe subsystem of one volume:
/// `nqn.2024-01.dev.nvme-csi:vol:<volume-uuid>`. One subsystem per volume, namespace 1.
public enum SubsystemNaming {
  public static let prefix = "nqn.2024-01.dev.nvme-csi:vol:"

  public static func nqn(for volume: ObjectUUID) -> String { prefix + volume.value }

  /// The volume UUID of one of our subsystems, or nil for anyone else's.
  public static func volume(inNQN nqn: String) -> ObjectUUID? {
    guard nqn.hasPrefix(prefix) else { return nil }
    return try? ObjectUUID(String(nqn.dropFirst(prefix.count)))
  }

  /// The namespace UUID equals the volume UUID, so a node can find the device by
  /// (subsystem NQN, namespace UUID) without guessing.
  public static func namespaceUUID(for volume: ObjectUUID) -> ObjectUUID { volume }

  /// The namespace NGUID: the volume UUID's 16 bytes, which nvmet takes written as a
  /// UUID, so it is the volume UUID's own text.
  public static func namespaceNGUID(for volume: ObjectUUID) -> String { volume.value }
}

/// The CSI node ID: `n1.<host-id>.<host-nqn>`, so ControllerPublish can grant exactly
/// that host. The host ID is a lowercase UUID (from /etc/nvme/hostid).
public struct NodeID: Hashable, Sendable, TextCodable {
  /// CSI limits node IDs to 256 bytes; "n1." + 36 + "." leaves this for the NQN.
  public static let maxHostNQNBytes = 256 - 3 - 36 - 1

  public let hostID: ObjectUUID
  public let hostNQN: HostNQN

  public init(hostID: ObjectUUID, hostNQN: HostNQN) {
    self.hostID = hostID
    self.hostNQN = hostNQN
  }

  /// Parses a node ID; anything malformed is a node that cannot exist (`notFound`),
  /// an empty one is `invalidArgument`.
  public init(parsing s: String) throws(NVMeCSIError) {
    guard !s.isEmpty else { throw .invalidArgument("node ID is empty") }
    let bytes = Array(s.utf8)
    guard s.hasPrefix("n1."), bytes.count > 40, bytes[39] == UInt8(ascii: "."),
      let id = try? ObjectUUID(String(decoding: bytes[3..<39], as: UTF8.self)),
      let nqn = try? HostNQN(String(decoding: bytes[40...], as: UTF8.self))
    else {
      throw .notFound(
        "node \(quoted(s)) does not exist: not a node ID of this driver (expected n1.<host-id>.<host-nqn>)")
    }
    self.init(hostID: id, hostNQN: nqn)
  }

  public var description: String { "n1.\(hostID.value).\(hostNQN.value)" }
  public init(text: String) throws(NVMeCSIError) { try self.init(parsing: text) }
}
