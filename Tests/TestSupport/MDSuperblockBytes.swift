import Foundation

/// An md version-1.2 superblock built byte by byte (struct mdp_superblock_1, the
/// kernel's include/uapi/linux/raid/md_p.h), for tests: set the fields, take `bytes`.
/// The checksum is computed here on its own, as the kernel's calc_sb_1_csum does, so
/// the parser is checked against an independent sum.
public struct MDSuperblockBytes: Sendable {
  public var magic: UInt32 = 0xa92b_4efc
  public var majorVersion: UInt32 = 1
  /// MD_FEATURE_BITMAP_OFFSET (1), as mdadm writes with an internal bitmap.
  public var featureMap: UInt32 = 1
  public var arrayUUID: [UInt8] = (0..<16).map { UInt8(0x10 + $0) }
  public var arrayName: String = "node-1:pvc-1"
  public var level: Int32 = 1
  public var raidDisks: UInt32 = 2
  public var dataOffsetSectors: UInt64 = 8192
  public var dataSizeSectors: UInt64 = 2048
  public var superOffsetSectors: UInt64 = 8
  public var devNumber: UInt32 = 1
  public var deviceUUID: [UInt8] = (0..<16).map { UInt8(0xa0 + $0) }
  public var events: UInt64 = 4242
  /// The role table, indexed by device number.
  public var roles: [UInt16] = [0, 1]
  /// max_dev; nil: `roles.count`.
  public var maxDev: UInt32?
  /// The recorded checksum; nil: the right one.
  public var checksum: UInt32?
  /// How many bytes to return (the superblock, then zeros).
  public var length = 4096

  public init() {}

  public var bytes: [UInt8] {
    var b = [UInt8](repeating: 0, count: max(length, 4096))
    func put(_ value: UInt64, at offset: Int, size: Int) {
      for i in 0..<size { b[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
    put(UInt64(magic), at: 0, size: 4)
    put(UInt64(majorVersion), at: 4, size: 4)
    put(UInt64(featureMap), at: 8, size: 4)
    b.replaceSubrange(16..<32, with: arrayUUID.prefix(16))
    let name = Array(arrayName.utf8.prefix(32))
    b.replaceSubrange(32..<32 + name.count, with: name)
    put(1_700_000_000, at: 64, size: 8)  // ctime
    put(UInt64(UInt32(bitPattern: level)), at: 72, size: 4)
    put(dataSizeSectors, at: 80, size: 8)  // size
    put(UInt64(raidDisks), at: 92, size: 4)
    put(8, at: 96, size: 4)  // bitmap_offset
    put(dataOffsetSectors, at: 128, size: 8)
    put(dataSizeSectors, at: 136, size: 8)
    put(superOffsetSectors, at: 144, size: 8)
    put(UInt64(devNumber), at: 160, size: 4)
    b.replaceSubrange(168..<184, with: deviceUUID.prefix(16))
    put(1_700_000_100, at: 192, size: 8)  // utime
    put(events, at: 200, size: 8)
    put(UInt64.max, at: 208, size: 8)  // resync_offset: clean
    let devices = maxDev ?? UInt32(roles.count)
    put(UInt64(devices), at: 220, size: 4)
    for (i, role) in roles.enumerated() where 256 + 2 * i + 2 <= b.count { put(UInt64(role), at: 256 + 2 * i, size: 2) }
    put(UInt64(checksum ?? Self.checksum(of: b, maxDev: devices)), at: 216, size: 4)
    return Array(b.prefix(length))
  }

  /// calc_sb_1_csum: 32-bit little-endian words over 256 + 2·max_dev bytes (sb_csum
  /// still zero here), a 16-bit tail, the carry folded once.
  static func checksum(of b: [UInt8], maxDev: UInt32) -> UInt32 {
    let size = min(256 + 2 * Int(maxDev), b.count)
    var sum: UInt64 = 0
    var i = 0
    while i + 4 <= size {
      sum += UInt64(b[i]) | UInt64(b[i + 1]) << 8 | UInt64(b[i + 2]) << 16 | UInt64(b[i + 3]) << 24
      i += 4
    }
    if size - i == 2 { sum += UInt64(b[i]) | UInt64(b[i + 1]) << 8 }
    return UInt32(truncatingIfNeeded: (sum & 0xffff_ffff) + (sum >> 32))
  }
}

extension MDSuperblockBytes {
  /// Writes it where metadata 1.2 keeps it: 4 KiB into `path` (a leg's data).
  public func write(to path: String) throws {
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: 4096)
    try handle.write(contentsOf: Data(bytes))
  }
}
