import NVMeCSICore
import TestSupport
import Testing

@Suite("md superblock")
struct MDSuperblockTests {
  static let roleCases: [(UInt16, MDSuperblock.Role)] = [
    (0, .active(slot: 0)), (1, .active(slot: 1)), (7, .active(slot: 7)), (0xfeff, .active(slot: 0xfeff)),
    (0xffff, .spare), (0xfffe, .faulty), (0xfffd, .journal),
  ]
  /// feature_map → recovering: bit 2 (MD_FEATURE_RECOVERY_OFFSET) alone decides; 128 is
  /// MD_FEATURE_RECOVERY_BITMAP, 16 MD_FEATURE_REPLACEMENT.
  static let recoveringCases: [(UInt32, Bool)] = [
    (0, false), (1, false), (2, true), (1 | 2, true), (1 | 2 | 128, true), (1 | 16, false),
  ]

  @Test("Every field is read from its place")
  func fields() throws {
    let superblock = try #require(try MDSuperblock.parse(MDSuperblockBytes().bytes))
    #expect(superblock.arrayUUID.value == "10111213-1415-1617-1819-1a1b1c1d1e1f")
    #expect(superblock.deviceUUID.value == "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf")
    #expect(superblock.events == 4242)
    #expect(superblock.legCount == 2)
    #expect(superblock.level == 1)
    #expect(superblock.dataOffsetBytes == 8192 * 512)
    #expect(superblock.role == .active(slot: 1))
    #expect(!superblock.isRecovering)
  }

  @Test("Large values keep all their bits; the level is signed")
  func wideValues() throws {
    var builder = MDSuperblockBytes()
    builder.events = 0x0123_4567_89ab_cdef
    builder.level = -1
    builder.raidDisks = 3
    builder.dataOffsetSectors = 1 << 40
    let superblock = try #require(try MDSuperblock.parse(builder.bytes))
    #expect(superblock.events == 0x0123_4567_89ab_cdef)
    #expect(superblock.level == -1)
    #expect(superblock.legCount == 3)
    #expect(superblock.dataOffsetBytes == (1 << 40) * 512)
  }

  @Test(
    "The device's entry in the role table is its role",
    arguments: roleCases)
  func roles(raw: UInt16, role: MDSuperblock.Role) throws {
    var builder = MDSuperblockBytes()
    builder.roles = [0xfffe, 0xffff, raw, 0xfffe]
    builder.devNumber = 2
    #expect(try MDSuperblock.parse(builder.bytes)?.role == role)
  }

  @Test("A role md does not define is refused")
  func unknownRole() {
    var builder = MDSuperblockBytes()
    builder.roles = [0, 0xff10]
    expectError(.failedPrecondition, mentioning: ["unknown role", "0xff10"]) { try MDSuperblock.parse(builder.bytes) }
  }

  @Test(
    "A member being rebuilt, in full or through the bitmap, is recovering",
    arguments: recoveringCases)
  func recovering(featureMap: UInt32, recovering: Bool) throws {
    var builder = MDSuperblockBytes()
    builder.featureMap = featureMap
    #expect(try MDSuperblock.parse(builder.bytes)?.isRecovering == recovering)
  }

  @Test("No magic is no superblock", arguments: [[UInt8](), [0xfc, 0x4e], [UInt8](repeating: 0, count: 4096)])
  func noMagic(bytes: [UInt8]) throws {
    #expect(try MDSuperblock.parse(bytes) == nil)
    var builder = MDSuperblockBytes()
    builder.magic = 0xfc4e_2ba9  // big-endian: not md's
    #expect(try MDSuperblock.parse(builder.bytes) == nil)
  }

  @Test("A slice is read from its own start")
  func slice() throws {
    let bytes = [0xff, 0xff] + MDSuperblockBytes().bytes
    #expect(try MDSuperblock.parse(bytes[2...])?.events == 4242)
  }

  @Test("A wrong checksum is refused, naming both sums")
  func badChecksum() {
    var builder = MDSuperblockBytes()
    var bytes = builder.bytes
    bytes[200] ^= 1  // one bit of the event count
    expectError(.failedPrecondition, mentioning: ["checksum", "torn or corrupt"]) { try MDSuperblock.parse(bytes) }
    builder.checksum = 0x1234_5678
    expectError(.failedPrecondition, mentioning: ["0x12345678"]) { try MDSuperblock.parse(builder.bytes) }
  }

  @Test("The checksum covers an odd number of roles (a 16-bit tail)")
  func oddRoleCount() throws {
    var builder = MDSuperblockBytes()
    builder.roles = [0, 1, 0xfffe]
    builder.devNumber = 0
    #expect(try MDSuperblock.parse(builder.bytes)?.role == .active(slot: 0))
    var bytes = builder.bytes
    bytes[256 + 4] = 0xfd  // the tail role: inside the sum
    expectError(.failedPrecondition, mentioning: ["checksum"]) { try MDSuperblock.parse(bytes) }
    bytes = builder.bytes
    bytes[256 + 6] = 0x55  // past max_dev: outside it
    #expect(try MDSuperblock.parse(bytes) != nil)
  }

  @Test("A superblock cut short is refused", arguments: [4, 100, 255, 256, 258])
  func truncated(length: Int) {
    var builder = MDSuperblockBytes()
    builder.length = length
    expectError(.failedPrecondition, mentioning: ["cut short"]) { try MDSuperblock.parse(builder.bytes) }
  }

  @Test("A role table larger than md allows or than the bytes read is refused", arguments: [UInt32(1921), .max, 2000])
  func hugeMaxDev(maxDev: UInt32) {
    var builder = MDSuperblockBytes()
    builder.maxDev = maxDev
    expectError(.failedPrecondition, mentioning: ["max_dev"]) { try MDSuperblock.parse(builder.bytes) }
  }

  @Test("The largest role table md allows fits in 4 KiB")
  func largestRoleTable() throws {
    var builder = MDSuperblockBytes()
    builder.roles = [UInt16](repeating: 0xffff, count: 1920)
    builder.roles[1919] = 0
    builder.devNumber = 1919
    #expect(try MDSuperblock.parse(builder.bytes)?.role == .active(slot: 0))
    builder.length = 4000
    expectError(.failedPrecondition, mentioning: ["cut short"]) { try MDSuperblock.parse(builder.bytes) }
  }

  @Test("A device number outside the role table is refused")
  func devNumberOutside() {
    var builder = MDSuperblockBytes()
    builder.devNumber = 2
    expectError(.failedPrecondition, mentioning: ["device number 2"]) { try MDSuperblock.parse(builder.bytes) }
    builder.devNumber = .max
    expectError(.failedPrecondition, mentioning: ["outside"]) { try MDSuperblock.parse(builder.bytes) }
  }

  @Test("Another major version, or a superblock of another minor version, is refused")
  func otherVersions() {
    var builder = MDSuperblockBytes()
    builder.majorVersion = 0
    expectError(.failedPrecondition, mentioning: ["major version 0"]) { try MDSuperblock.parse(builder.bytes) }
    builder = MDSuperblockBytes()
    builder.superOffsetSectors = 0  // metadata 1.1
    expectError(.failedPrecondition, mentioning: ["sector 0"]) { try MDSuperblock.parse(builder.bytes) }
  }

  @Test("A data offset past any device is refused")
  func dataOffsetOverflow() {
    var builder = MDSuperblockBytes()
    builder.dataOffsetSectors = .max
    expectError(.failedPrecondition, mentioning: ["data offset"]) { try MDSuperblock.parse(builder.bytes) }
  }

  @Test("Damaged and cut buffers never trap: each parses or is refused")
  func damageNeverTraps() {
    var generator = SplitMix(seed: 11)
    let valid = MDSuperblockBytes().bytes
    for _ in 0..<3000 {
      var bytes = Array(valid.prefix(Int(generator.next() % 4200)))
      for _ in 0..<Int(generator.next() % 6) where !bytes.isEmpty {
        let at = Int(generator.next() % UInt64(min(bytes.count, 300)))
        bytes[at] = UInt8(truncatingIfNeeded: generator.next())
      }
      do { _ = try MDSuperblock.parse(bytes) } catch { #expect(error.kind == .failedPrecondition) }
    }
  }
}

/// A small seeded generator, so a failing damage case repeats.
private struct SplitMix {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9e37_79b9_7f4a_7c15
    var z = state
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}
