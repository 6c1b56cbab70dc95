import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// Recognizes, in-process, a device that plainly holds one ext4 or XFS file system, as
/// mkfs leaves it on a blank volume: then staging a formatted volume again needs no
/// `blkid` process (a third of the node's attach time in `make bench-vm`).
///
/// It only ever answers "this is ext4" or "this is xfs". Anything else (blank, another
/// signature, a first KiB that is not zeros, a checksum that does not match, an md
/// superblock at the end, any read error) is nil, and `blkid -p` decides as before: a
/// device is never called blank here, so nothing is ever formatted on this answer.
enum PlainFileSystem {
  /// The file system on `device`; nil when not plainly ext4 or XFS, or when it cannot
  /// be read in full (blkid decides then).
  static func recognize(device: String) -> String? {
    guard let fd = try? SystemMounter.openDevice(device) else { return nil }
    defer { close(fd) }
    guard let size = try? POSIX.size(of: fd, device), size > 0 else { return nil }
    let headLength = Int(min(UInt64(headBytes), size))
    let tailLength = Int(min(UInt64(tailBytes), size))
    guard let head = read(fd, at: 0, count: headLength),
      let tail = read(fd, at: size - UInt64(tailLength), count: tailLength)
    else { return nil }
    return recognize(head: head, tail: tail, size: size)
  }

  /// Exactly `count` bytes at `offset`; nil on any error or a short read.
  static func read(_ fd: Int32, at offset: UInt64, count: Int) -> [UInt8]? {
    var bytes = [UInt8](repeating: 0, count: count)
    var done = 0
    while done < count {
      let result = bytes.withUnsafeMutableBytes { buffer in
        valueOrErrno { pread(fd, buffer.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
      }
      guard case .success(let n) = result, n > 0 else { return nil }
      done += n
    }
    return bytes
  }

  /// The bytes read from the start: the superblocks, XFS's first allocation group
  /// headers (sector size up to 32 KiB), and where btrfs keeps its superblock (64 KiB).
  static let headBytes = 128 * 1024
  /// The bytes read from the end: md's 0.90 superblock sits 64–128 KiB from the end.
  static let tailBytes = 128 * 1024

  /// `head`: the first `headBytes` (fewer on a smaller device); `tail`: the last
  /// `tailBytes` (or all) of a device of `size` bytes.
  static func recognize(head: [UInt8], tail: [UInt8], size: UInt64) -> String? {
    guard !hasMDSuperblockAtEnd(tail, size: size), !hasBtrfs(head) else { return nil }
    if isExt4(head) { return "ext4" }
    if isXFS(head) { return "xfs" }
    return nil
  }

  // MARK: ext4 (libblkid's rules: ext2/ext3 and journal devices are not ext4)

  static func isExt4(_ head: [UInt8]) -> Bool {
    let sb = 1024
    guard head.count >= sb + 1024, head[0..<sb].allSatisfy({ $0 == 0 }),
      le16(head, sb + 0x38) == 0xEF53
    else { return false }
    let incompat = le32(head, sb + 0x60)
    let roCompat = le32(head, sb + 0x64)
    let journalDevice: UInt32 = 0x0008
    // Features ext3 knows: FILETYPE, RECOVER, META_BG; SPARSE_SUPER, LARGE_FILE, BTREE_DIR.
    let ext3Incompat: UInt32 = 0x0016
    let ext3ROCompat: UInt32 = 0x0007
    let testFilesystem: UInt32 = 0x0004
    guard incompat & journalDevice == 0,
      incompat & ~ext3Incompat != 0 || roCompat & ~ext3ROCompat != 0,
      le32(head, sb + 0x160) & testFilesystem == 0
    else { return false }
    let metadataChecksum: UInt32 = 0x0400
    if roCompat & metadataChecksum != 0 {
      // The superblock's CRC32C (seed ~0, not inverted at the end) is its last 4 bytes.
      guard CRC32C.update(~0, head[sb..<(sb + 0x3FC)]) == le32(head, sb + 0x3FC) else { return false }
    }
    return true
  }

  // MARK: XFS (the superblock, and the allocation group headers that follow it)

  static func isXFS(_ head: [UInt8]) -> Bool {
    guard head.count >= 512, Array(head[0..<4]) == Array("XFSB".utf8) else { return false }
    let blockSize = be32(head, 4)
    let version = be16(head, 100) & 0x000F
    let sectorSize = Int(be16(head, 102))
    guard isPowerOfTwo(UInt64(blockSize), in: 512...65536), (4...5).contains(version),
      isPowerOfTwo(UInt64(sectorSize), in: 512...32768), head.count >= 3 * sectorSize + 4
    else { return false }
    // mkfs writes allocation group 0's free-space and inode headers in the next sectors.
    return Array(head[sectorSize..<(sectorSize + 4)]) == Array("XAGF".utf8)
      && Array(head[(2 * sectorSize)..<(2 * sectorSize + 4)]) == Array("XAGI".utf8)
  }

  // MARK: what makes a device more than one file system

  /// md's superblock at the end (metadata 0.90 and 1.0): the device is an array member,
  /// whose file system must only be reached through the array.
  static func hasMDSuperblockAtEnd(_ tail: [UInt8], size: UInt64) -> Bool {
    let magic: UInt32 = 0xA92B_4EFC
    guard UInt64(tail.count) <= size else { return true }
    let tailStart = size - UInt64(tail.count)
    var offsets: [UInt64] = []
    if size >= 128 * 1024 { offsets.append((size & ~UInt64(65535)) - 65536) }  // 0.90
    if size >= 8192 { offsets.append((size - 8192) & ~UInt64(4095)) }  // 1.0
    return offsets.contains { offset in
      guard offset >= tailStart, offset - tailStart + 4 <= UInt64(tail.count) else { return true }  // unseen: doubt
      let at = Int(offset - tailStart)
      return le32(tail, at) == magic || be32(tail, at) == magic
    }
  }

  static func hasBtrfs(_ head: [UInt8]) -> Bool {
    let at = 65536 + 0x40
    return head.count >= at + 8 && Array(head[at..<(at + 8)]) == Array("_BHRfS_M".utf8)
  }

  // MARK: bytes

  static func le16(_ b: [UInt8], _ i: Int) -> UInt16 { UInt16(b[i]) | UInt16(b[i + 1]) << 8 }
  static func le32(_ b: [UInt8], _ i: Int) -> UInt32 {
    UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
  }
  static func be16(_ b: [UInt8], _ i: Int) -> UInt16 { UInt16(b[i]) << 8 | UInt16(b[i + 1]) }
  static func be32(_ b: [UInt8], _ i: Int) -> UInt32 {
    UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
  }
  static func isPowerOfTwo(_ value: UInt64, in range: ClosedRange<UInt64>) -> Bool {
    range.contains(value) && value & (value - 1) == 0
  }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as ext4's checksums use it.
enum CRC32C {
  static let table: [UInt32] = (0..<256).map { n in
    var crc = UInt32(n)
    for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
    return crc
  }

  /// Continues `crc` over `bytes`, without the final inversion.
  static func update(_ crc: UInt32, _ bytes: ArraySlice<UInt8>) -> UInt32 {
    var crc = crc
    for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
    return crc
  }
}
