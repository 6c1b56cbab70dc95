import Foundation

// Repair of a replicated volume (docs/architecture.md, "Repairing a lost leg"). A
// volume's ID names the targets its legs were created on and never changes; when a leg
// is lost for good and replaced on another target, where the legs are now is the leg
// map. It lives in one 4 KiB block of every current leg, just before md's data (a
// region md leaves unused and no file system on the mirror can reach), so that both
// the controller (through each leg's target) and a node that has the mirror running
// (reading its members) learn of a replacement from the legs themselves.

/// Where a replicated volume's legs are: the targets and generations of its current
/// legs, the legs they replaced (until deleted), and a version that grows with each
/// change. Version 0 is the map a volume ID implies: every leg of generation 0 on the
/// target the ID names; it is never written.
public struct LegMap: Hashable, Sendable {
  public struct Leg: Hashable, Sendable {
    public var target: TargetName
    /// 0 for the leg made with the volume; +1 with each replacement of its slot.
    public var generation: Int
    /// How nodes reach the leg's target; empty in a version-0 map (nodes learn them
    /// from ControllerPublishVolume).
    public var portals: [HostPort]

    public init(target: TargetName, generation: Int, portals: [HostPort] = []) {
      self.target = target
      self.generation = generation
      self.portals = portals
    }
  }

  /// A leg taken out of the set, kept so that deleting the volume deletes it too.
  public struct ReplacedLeg: Hashable, Sendable {
    public var index: Int
    public var target: TargetName
    public var generation: Int

    public init(index: Int, target: TargetName, generation: Int) {
      self.index = index
      self.target = target
      self.generation = generation
    }
  }

  public var set: ObjectUUID
  public var version: UInt64
  public var legs: [Leg]
  public var replaced: [ReplacedLeg]

  /// A leg's slot is replaced at most this often (its generation fits the byte of the
  /// leg's UUID that carries it).
  public static let maximumGeneration = 255
  /// Replaced legs not yet deleted that a map keeps; a repair beyond it is refused
  /// until the volume is deleted or the old legs are.
  public static let maximumReplaced = 8
  public static let maximumPortals = 8

  public init(set: ObjectUUID, version: UInt64, legs: [Leg], replaced: [ReplacedLeg] = []) {
    self.set = set
    self.version = version
    self.legs = legs
    self.replaced = replaced
  }

  /// The map a volume ID implies (version 0).
  public init(implied id: VolumeID) {
    self.init(set: id.uuid, version: 0, legs: id.targets.map { Leg(target: $0, generation: 0) })
  }

  /// Each current leg: the volume on its target.
  public var legIDs: [ObjectID] {
    legs.enumerated().map { index, leg in
      ObjectID(
        kind: .volume, target: leg.target,
        uuid: ReplicaLayout.legUUID(of: set, index: index, generation: leg.generation))
    }
  }

  /// Each replaced leg not yet deleted.
  public var replacedIDs: [ObjectID] {
    replaced.map {
      ObjectID(
        kind: .volume, target: $0.target,
        uuid: ReplicaLayout.legUUID(of: set, index: $0.index, generation: $0.generation))
    }
  }

  /// The next version, with leg `index` on `target` (a new generation, blank) and the
  /// leg it replaces remembered for deletion.
  public func replacing(leg index: Int, with target: TargetName, portals: [HostPort]) throws(NVMeCSIError) -> LegMap {
    guard legs.indices.contains(index) else {
      throw .invalidArgument("leg \(index) does not exist: the volume has legs 0 to \(legs.count - 1)")
    }
    guard !legs.contains(where: { $0.target == target }) else {
      throw .invalidArgument("target \(target) already holds a leg of the volume")
    }
    let old = legs[index]
    guard old.generation < Self.maximumGeneration else {
      throw .failedPrecondition(
        "leg \(index) was replaced \(old.generation) times already, the most a volume allows:"
          + " copy the data to a new volume")
    }
    guard replaced.count < Self.maximumReplaced else {
      throw .failedPrecondition(
        "the volume still has \(replaced.count) replaced legs to delete, the most it keeps: bring their targets back"
          + " (or remove them from the targets file) so they are deleted, then repair")
    }
    var next = self
    next.version = version + 1
    next.legs[index] = Leg(target: target, generation: old.generation + 1, portals: portals)
    next.replaced.append(ReplacedLeg(index: index, target: old.target, generation: old.generation))
    return next
  }

  /// The same map without the replaced legs in `deleted`.
  public func forgetting(_ deleted: [ReplacedLeg]) -> LegMap {
    var next = self
    next.replaced.removeAll { deleted.contains($0) }
    next.version = version + 1
    return next
  }

  // MARK: the block

  /// Where the block sits in each leg: the last 4 KiB before md's data.
  public static let blockOffset = ReplicaLayout.dataOffsetBytes - UInt64(blockBytes)
  public static let blockBytes = 4096
  static let magic = Array("nvme-csi-legmap1".utf8)
  static let headerBytes = 16 + 4 + 4

  /// What a leg's map block holds.
  public enum BlockContent: Hashable, Sendable {
    /// All zeros: no map was ever written (the map is the ID's).
    case empty
    case map(LegMap)
    /// Our magic with a bad length, checksum or content: a torn or damaged write.
    case damaged(String)
    /// Something else: not ours to overwrite.
    case foreign
  }

  /// The 4 KiB block: magic, payload length and CRC-32 (little-endian), JSON payload,
  /// zeros. `invalidArgument` when the map breaks a bound (it could not be read back).
  public func block() throws(NVMeCSIError) -> [UInt8] {
    try validate()
    let payload: [UInt8]
    do { payload = Array(try Self.encoder.encode(Wire(self))) } catch {
      throw .internalError("cannot encode the leg map: \(error)")
    }
    guard payload.count <= Self.blockBytes - Self.headerBytes else {
      throw .invalidArgument("the leg map takes \(payload.count) bytes, more than its block holds")
    }
    var block = Self.magic
    block += Self.littleEndian(UInt32(payload.count))
    block += Self.littleEndian(CRC32.checksum(payload))
    block += payload
    block += [UInt8](repeating: 0, count: Self.blockBytes - block.count)
    return block
  }

  /// Reads a block (exactly `blockBytes`), checking every bound.
  public static func content(of block: [UInt8]) -> BlockContent {
    guard block.count == blockBytes else { return .damaged("the block is \(block.count) bytes, not \(blockBytes)") }
    guard block.starts(with: magic) else { return block.allSatisfy { $0 == 0 } ? .empty : .foreign }
    let length = Int(readLittleEndian(block, at: 16))
    guard length <= blockBytes - headerBytes else { return .damaged("its length field says \(length) bytes") }
    let payload = Array(block[headerBytes..<headerBytes + length])
    guard CRC32.checksum(payload) == readLittleEndian(block, at: 20) else {
      return .damaged("its checksum does not match (a torn write?)")
    }
    do {
      let map = try JSONDecoder().decode(Wire.self, from: Data(payload)).map()
      try map.validate()
      return .map(map)
    } catch let error as NVMeCSIError {
      return .damaged(error.message)
    } catch {
      return .damaged("its payload is not a leg map: \(error)")
    }
  }

  /// The bounds every map keeps, whoever wrote it.
  public func validate() throws(NVMeCSIError) {
    guard (2...ReplicaLayout.maximumReplicas).contains(legs.count) else {
      throw .invalidArgument("a leg map has 2 to \(ReplicaLayout.maximumReplicas) legs, not \(legs.count)")
    }
    guard Set(legs.map(\.target)).count == legs.count else {
      throw .invalidArgument("a leg map names a target twice")
    }
    let generations = 0...Self.maximumGeneration
    guard legs.allSatisfy({ generations.contains($0.generation) && $0.portals.count <= Self.maximumPortals }),
      replaced.count <= Self.maximumReplaced,
      replaced.allSatisfy({ generations.contains($0.generation) && legs.indices.contains($0.index) })
    else {
      throw .invalidArgument(
        "a leg map's generations are 0-\(Self.maximumGeneration), with at most \(Self.maximumPortals) portals a leg"
          + " and \(Self.maximumReplaced) replaced legs")
    }
  }

  private static let encoder: JSONEncoder = {
    let encoder = JSONEncoder()
    encoder.outputFormatting = .sortedKeys
    return encoder
  }()

  private static func littleEndian(_ value: UInt32) -> [UInt8] {
    (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
  }

  private static func readLittleEndian(_ bytes: [UInt8], at offset: Int) -> UInt32 {
    (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
  }

  /// The JSON form: plain strings and numbers, parsed strictly into the types above.
  private struct Wire: Codable {
    struct Leg: Codable {
      var target: String
      var generation: Int
      var portals: [String]
    }
    struct Replaced: Codable {
      var index: Int
      var target: String
      var generation: Int
    }
    var set: String
    var version: UInt64
    var legs: [Leg]
    var replaced: [Replaced]

    init(_ map: LegMap) {
      set = map.set.value
      version = map.version
      legs = map.legs.map {
        Leg(target: $0.target.value, generation: $0.generation, portals: $0.portals.map(\.description))
      }
      replaced = map.replaced.map { Replaced(index: $0.index, target: $0.target.value, generation: $0.generation) }
    }

    func map() throws(NVMeCSIError) -> LegMap {
      guard legs.count <= ReplicaLayout.maximumReplicas, replaced.count <= LegMap.maximumReplaced,
        legs.allSatisfy({ $0.portals.count <= LegMap.maximumPortals })
      else { throw .invalidArgument("too many legs, portals or replaced legs") }
      var parsedLegs: [LegMap.Leg] = []
      for leg in legs {
        var portals: [HostPort] = []
        for portal in leg.portals { portals.append(try HostPort(parsing: Substring(portal))) }
        parsedLegs.append(LegMap.Leg(target: try TargetName(leg.target), generation: leg.generation, portals: portals))
      }
      var parsedReplaced: [LegMap.ReplacedLeg] = []
      for leg in replaced {
        parsedReplaced.append(
          LegMap.ReplacedLeg(index: leg.index, target: try TargetName(leg.target), generation: leg.generation))
      }
      return LegMap(set: try ObjectUUID(set), version: version, legs: parsedLegs, replaced: parsedReplaced)
    }
  }
}

/// CRC-32 (IEEE 802.3, as zlib's): catches a torn or damaged map block.
enum CRC32 {
  private static let table: [UInt32] = (0..<256).map { n in
    (0..<8).reduce(UInt32(n)) { c, _ in c & 1 == 1 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
  }

  static func checksum(_ bytes: [UInt8]) -> UInt32 {
    ~bytes.reduce(~UInt32(0)) { table[Int(($0 ^ UInt32($1)) & 0xff)] ^ ($0 >> 8) }
  }
}
