// Replicated volumes (docs/architecture.md, "Replicated volumes").
//
// Design: a replicated volume is a set of 2 or 3 ordinary volumes ("legs"), each on
// its own target, mirrored on the node by the kernel's md RAID1. Its CSI ID names the
// set and where its legs are, `r1.<uuid>.<target-0>.<target-1>[.<target-2>]`; leg i's
// UUID is derived from the set's (leg 0's is the set's own), so the ID needs only one
// UUID and stays within CSI's 128 bytes. A single-copy volume keeps its `v1` ID and is
// a set of one leg, so every caller can treat both alike.

/// A CSI volume ID of this driver: one volume (`v1.<target>.<uuid>`) or a replicated
/// one (`r1.<uuid>.<target>.<target>[.<target>]`).
public struct VolumeID: Hashable, Comparable, Sendable, CustomStringConvertible {
  /// The set's UUID: leg 0's, and the md array's on the node.
  public let uuid: ObjectUUID
  /// Leg i lives on `targets[i]`; one target for a single-copy volume.
  public let targets: [TargetName]

  static let replicatedPrefix = "r1"
  public static let maximumLength = 128

  public init(single id: ObjectID) {
    self.uuid = id.uuid
    self.targets = [id.target]
  }

  /// A replicated volume's ID; `invalidArgument` when the targets repeat, their count is
  /// outside 2…`ReplicaLayout.maximumReplicas`, or the ID would exceed 128 bytes.
  public init(replicated uuid: ObjectUUID, on targets: [TargetName]) throws(NVMeCSIError) {
    guard (2...ReplicaLayout.maximumReplicas).contains(targets.count) else {
      throw .invalidArgument("a replicated volume has 2 to \(ReplicaLayout.maximumReplicas) legs, not \(targets.count)")
    }
    guard Set(targets).count == targets.count else {
      throw .invalidArgument("the legs of a replicated volume must be on different targets")
    }
    self.uuid = uuid
    self.targets = targets
    guard description.utf8.count <= Self.maximumLength else {
      throw .invalidArgument(
        "the volume ID of \(targets.count) replicas on \(targets.map(\.value).joined(separator: ", ")) would be"
          + " \(description.utf8.count) bytes, above CSI's \(Self.maximumLength): use shorter target names")
    }
  }

  /// Parses either form. `notFound` for anything that is not a volume ID of ours (the
  /// CSI answer for a volume we cannot have made), `invalidArgument` for an empty one.
  public init(parsing s: String) throws(NVMeCSIError) {
    guard !s.hasPrefix(Self.replicatedPrefix + ".") else {
      let parts = s.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
      guard s.utf8.count <= Self.maximumLength, (4...2 + ReplicaLayout.maximumReplicas).contains(parts.count),
        let uuid = try? ObjectUUID(parts[1])
      else { throw Self.notOurs(s) }
      var targets: [TargetName] = []
      for part in parts.dropFirst(2) {
        guard let target = try? TargetName(part) else { throw Self.notOurs(s) }
        targets.append(target)
      }
      guard let id = try? VolumeID(replicated: uuid, on: targets) else { throw Self.notOurs(s) }
      self = id
      return
    }
    self.init(single: try ObjectID(parsing: s, as: .volume))
  }

  private static func notOurs(_ s: String) -> NVMeCSIError {
    .notFound(
      "volume \(quoted(s)) does not exist: not a volume ID of this driver"
        + " (expected v1.<target>.<uuid> or r1.<uuid>.<target>.<target>[.<target>])")
  }

  public var isReplicated: Bool { targets.count > 1 }

  /// Each leg: the volume on its target.
  public var legs: [ObjectID] {
    targets.enumerated().map { index, target in
      ObjectID(kind: .volume, target: target, uuid: ReplicaLayout.legUUID(of: uuid, index: index))
    }
  }

  /// Leg 0: where the volume's name is placed and its snapshots are taken.
  public var primary: ObjectID { legs[0] }

  public var description: String {
    isReplicated
      ? ([Self.replicatedPrefix, uuid.value] + targets.map(\.value)).joined(separator: ".")
      : ObjectID(kind: .volume, target: targets[0], uuid: uuid).description
  }

  public static func < (a: Self, b: Self) -> Bool { a.description < b.description }
}

/// How a replicated volume's legs are laid out and told apart.
public enum ReplicaLayout {
  public static let maximumReplicas = 3

  /// volume_context key of a replicated volume restored from a snapshot or cloned: the
  /// md array UUID of the source, whose superblock its leg 0 carries until the node
  /// creates the new array from that leg (the "seed").
  public static let seedKey = "mirrorSeed"

  /// Volume attribute on each leg's record: which leg of its set it is (0 carries the
  /// volume's name). A record without it is a single-copy volume.
  public static let indexAttribute = "replica/index"
  /// Volume attribute on a leg's record: how often its slot was replaced (`LegMap`);
  /// absent means 0.
  public static let generationAttribute = "replica/generation"

  /// Where md's data begins on each leg: the superblock (at 4 KiB) and the write-intent
  /// bitmap sit before it. Fixed, so a leg's size is the volume's plus this, whatever
  /// mdadm's default would be for that size.
  public static let dataOffsetBytes: UInt64 = 4 * Capacity.mebibyte
  /// The bitmap's granularity: a leg that returns resyncs the 4 MiB regions written
  /// while it was away (measured 3× faster than md's default 64 MiB for 100 MiB
  /// written). 4 MiB chunks keep the bitmap within the data offset up to 64 TiB.
  public static let bitmapChunkBytes: UInt64 = 4 * Capacity.mebibyte
  /// The largest replicated volume whose bitmap fits before the data.
  public static let maximumVolumeBytes: UInt64 = 64 << 40

  /// A leg's size for a volume of `bytes`: the md overhead comes on top, so the volume
  /// has exactly the size asked for.
  public static func legBytes(forVolume bytes: UInt64) -> UInt64 { bytes + dataOffsetBytes }

  /// The volume's size from a leg's.
  public static func volumeBytes(ofLeg bytes: UInt64) -> UInt64 {
    bytes > dataOffsetBytes ? bytes - dataOffsetBytes : 0
  }

  /// Leg `index`'s UUID: the set's for leg 0 as created; for the others the set's with
  /// its last two bytes changed by the index, and byte 13 by the generation (how often
  /// the leg's slot was replaced, `LegMap`), so each leg has its own subsystem NQN (a
  /// host that saw two legs under one NQN would take them for two paths of one
  /// namespace) and a returning replaced leg is never taken for its replacement.
  /// Another random UUID matches one of these by chance with a probability below
  /// 2⁻¹⁰⁰. Applied to a leg's UUID with the same index and generation it gives the
  /// set's back.
  public static func legUUID(of set: ObjectUUID, index: Int, generation: Int = 0) -> ObjectUUID {
    guard index > 0 || generation > 0 else { return set }
    var bytes = set.bytes
    bytes[13] ^= UInt8(truncatingIfNeeded: generation)
    bytes[14] ^= 0x5a
    bytes[15] ^= UInt8(truncatingIfNeeded: index)
    return ObjectUUID(bytes: bytes)!
  }

  /// The generation of leg `index` of `set` whose UUID is `leg`; nil when `leg` is no
  /// leg of that slot (the node checks every leg it is told of against its volume).
  public static func generation(ofLeg leg: ObjectUUID, index: Int, set: ObjectUUID) -> Int? {
    guard index >= 0, index < maximumReplicas else { return nil }
    let bytes = leg.bytes
    let generation = Int(bytes[13] ^ set.bytes[13])
    return legUUID(of: set, index: index, generation: generation) == leg ? generation : nil
  }

  /// The name leg `index` has on its target: the CSI name for leg 0 as created (its
  /// placement is the volume's); for the others, and for every replacement (a later
  /// generation), the name with a suffix CSI names may not carry (`isReservedName`), so
  /// no volume name can ever find a leg, and a replacement never carries the placement.
  public static func legName(_ name: String, index: Int, generation: Int = 0) -> String {
    switch (index, generation) {
    case (0, 0): return name
    case (_, 0): return "\(name)\(legNameMarker)\(index)"
    default: return "\(name)\(legNameMarker)\(index)-\(generation)"
    }
  }

  /// The volume's name from one of its legs' names.
  public static func volumeName(ofLegName name: String) -> String {
    guard let marker = name.range(of: legNameMarker, options: .backwards) else { return name }
    return String(name[..<marker.lowerBound])
  }

  static let legNameMarker = "~replica-"

  /// The longest name a target records for a volume or snapshot (a DNS subdomain's length).
  public static let maximumNameBytes = 253

  /// `invalidArgument` when a leg's name (the CSI name with its suffix) would exceed what
  /// a target records: checked before leg 0 exists, so no half-made set is left behind.
  public static func checkName(_ name: String, replicas: Int) throws(NVMeCSIError) {
    // Room for the longest name a replacement of the last leg may have.
    let longest = legName(name, index: replicas - 1, generation: LegMap.maximumGeneration)
    guard longest.utf8.count <= maximumNameBytes else {
      throw .invalidArgument(
        "volume name is \(name.utf8.count) bytes: with \(replicas) replicas its legs' names (\(quoted(longest)))"
          + " would exceed \(maximumNameBytes) bytes; use a name of at most"
          + " \(maximumNameBytes - (longest.utf8.count - name.utf8.count)) bytes")
    }
  }

  /// Whether a CSI volume name could be taken for a leg's name (refused at CreateVolume).
  public static func isReservedName(_ name: String) -> Bool { name.contains(legNameMarker) }
}

extension ObjectUUID {
  /// The 16 bytes.
  public var bytes: [UInt8] {
    let digits = Array(hexDigits.utf8)
    return stride(from: 0, to: 32, by: 2).map { i in
      func nibble(_ c: UInt8) -> UInt8 { c <= UInt8(ascii: "9") ? c - UInt8(ascii: "0") : c - UInt8(ascii: "a") + 10 }
      return nibble(digits[i]) << 4 | nibble(digits[i + 1])
    }
  }
}
