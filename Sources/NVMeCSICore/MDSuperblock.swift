/// What md's version-1.2 superblock says about an array and one member of it: enough
/// for the controller to tell which leg of a mirror is in sync before it snapshots one.
///
/// Layout (struct mdp_superblock_1 in the kernel's include/uapi/linux/raid/md_p.h), all
/// little-endian, at 4 KiB into the member for metadata 1.2:
///
///     0 magic (0xa92b4efc)  4 major_version  8 feature_map  16 set_uuid[16]  72 level
///     92 raid_disks  128 data_offset (sectors)  144 super_offset (sectors)
///     160 dev_number  168 device_uuid[16]  200 events  216 sb_csum  220 max_dev
///     256 dev_roles[max_dev] (16 bits each, indexed by dev_number)
///
/// The bytes come from a device a remote host writes: every offset is checked, and a
/// torn or hostile buffer is an error, never a trap.
public struct MDSuperblock: Hashable, Sendable {
  /// What this member does in the array (its dev_roles entry).
  public enum Role: Hashable, Sendable {
    /// Holds this slot of the array's data (0 ..< legCount).
    case active(slot: Int)
    case spare
    case faulty
    case journal
  }

  /// The array's UUID (set_uuid): the same on every member.
  public var arrayUUID: ObjectUUID
  /// This member's own UUID.
  public var deviceUUID: ObjectUUID
  /// Bumped at every superblock update: among members of one array, the most events is
  /// the freshest.
  public var events: UInt64
  /// raid_disks: how many slots the array has.
  public var legCount: Int
  /// The RAID level (1 for a mirror; -1 linear).
  public var level: Int
  /// Where the array's data starts on this member.
  public var dataOffsetBytes: UInt64
  public var role: Role
  /// The member is being rebuilt and its data is not complete: a new member copied in
  /// full or a re-added one catching up through the bitmap.
  public var isRecovering: Bool

  public init(
    arrayUUID: ObjectUUID, deviceUUID: ObjectUUID, events: UInt64, legCount: Int, level: Int,
    dataOffsetBytes: UInt64, role: Role, isRecovering: Bool
  ) {
    self.arrayUUID = arrayUUID
    self.deviceUUID = deviceUUID
    self.events = events
    self.legCount = legCount
    self.level = level
    self.dataOffsetBytes = dataOffsetBytes
    self.role = role
    self.isRecovering = isRecovering
  }

  /// Where metadata 1.2 keeps the superblock on a member.
  public static let offsetBytes: UInt64 = 4096
  /// What to read there: the kernel reads 4 KiB, the most a superblock with its role
  /// table can take.
  public static let sizeBytes = 4096

  static let magic: UInt32 = 0xa92b_4efc
  /// The fixed part before the role table.
  static let headerBytes = 256
  /// The kernel refuses more roles than fit in 4 KiB (super_1_load: (4096-256)/2).
  static let maximumDevices = (4096 - headerBytes) / 2
  /// Roles at or above this are not slots (MD_DISK_ROLE_MAX); the named ones below.
  static let firstSpecialRole: UInt16 = 0xff00
  static let spareRole: UInt16 = 0xffff
  static let faultyRole: UInt16 = 0xfffe
  static let journalRole: UInt16 = 0xfffd
  /// feature_map bit MD_FEATURE_RECOVERY_OFFSET. The kernel's super_1_sync
  /// (drivers/md/md.c) sets it on every member that holds a slot (raid_disk >= 0) but
  /// is not In_sync, and adds MD_FEATURE_RECOVERY_BITMAP when that member was re-added
  /// with a bitmap: so it covers both a full rebuild and a bitmap catch-up. Such a
  /// member's dev_roles entry is still its slot, which is why the bit is needed.
  static let recoveryOffsetFeature: UInt32 = 2

  /// The superblock in `bytes` (read at `offsetBytes`); nil when there is none (no
  /// magic). A superblock that is there but cannot be trusted (another major version,
  /// cut short, a wrong checksum, a member index outside its role table) is
  /// `failedPrecondition`, saying what is wrong.
  public static func parse(_ bytes: some Collection<UInt8>) throws(NVMeCSIError) -> MDSuperblock? {
    let reader = LittleEndianReader(buffer: Array(bytes))
    guard reader.count >= 4, try reader.uint32(at: 0) == magic else { return nil }
    guard reader.count >= headerBytes else {
      throw .failedPrecondition(
        "md superblock is cut short: \(reader.count) bytes, its header alone takes \(headerBytes)")
    }
    let majorVersion = try reader.uint32(at: 4)
    guard majorVersion == 1 else {
      throw .failedPrecondition("md superblock has major version \(majorVersion): only version 1 is understood")
    }
    let maxDev = Int(try reader.uint32(at: 220))
    guard maxDev <= maximumDevices else {
      throw .failedPrecondition(
        "md superblock lists \(maxDev) devices (max_dev): more than the \(maximumDevices) md allows")
    }
    let length = headerBytes + 2 * maxDev
    guard length <= reader.count else {
      throw .failedPrecondition(
        "md superblock is cut short: its \(maxDev) device roles need \(length) bytes, \(reader.count) were read")
    }
    let recorded = try reader.uint32(at: 216)
    let computed = try checksum(reader, length: length)
    guard recorded == computed else {
      throw .failedPrecondition(
        "md superblock checksum is wrong (recorded \(hex32(recorded)), computed \(hex32(computed))): torn or corrupt")
    }
    // Metadata 1.2 records itself at sector 8; anything else is another version's
    // superblock that happens to sit here.
    let superOffset = try reader.uint64(at: 144)
    guard superOffset == offsetBytes / 512 else {
      throw .failedPrecondition(
        "md superblock says it sits at sector \(superOffset), not \(offsetBytes / 512): not metadata 1.2")
    }
    let devNumber = Int(try reader.uint32(at: 160))
    guard devNumber < maxDev else {
      throw .failedPrecondition(
        "md superblock's device number \(devNumber) is outside its role table of \(maxDev) entries")
    }
    let role: Role
    switch try reader.uint16(at: headerBytes + 2 * devNumber) {
    case spareRole: role = .spare
    case faultyRole: role = .faulty
    case journalRole: role = .journal
    case let slot where slot < firstSpecialRole: role = .active(slot: Int(slot))
    case let other: throw .failedPrecondition("md superblock gives this device the unknown role \(hex16(other))")
    }
    let dataOffsetSectors = try reader.uint64(at: 128)
    let (dataOffsetBytes, overflow) = dataOffsetSectors.multipliedReportingOverflow(by: 512)
    guard !overflow else {
      throw .failedPrecondition("md superblock's data offset of \(dataOffsetSectors) sectors is past any device")
    }
    guard let arrayUUID = ObjectUUID(bytes: try reader.bytes(at: 16, count: 16)),
      let deviceUUID = ObjectUUID(bytes: try reader.bytes(at: 168, count: 16))
    else { throw .internalError("md superblock UUIDs were not 16 bytes") }
    return MDSuperblock(
      arrayUUID: arrayUUID, deviceUUID: deviceUUID, events: try reader.uint64(at: 200),
      legCount: Int(try reader.uint32(at: 92)), level: Int(Int32(bitPattern: try reader.uint32(at: 72))),
      dataOffsetBytes: dataOffsetBytes, role: role,
      isRecovering: try reader.uint32(at: 8) & recoveryOffsetFeature != 0)
  }

  /// md's checksum of the first `length` bytes, as the kernel's calc_sb_1_csum computes
  /// it: the sum of the 32-bit words with sb_csum taken as zero (a 16-bit tail added
  /// as is), its upper half folded once onto the lower.
  static func checksum(_ reader: LittleEndianReader, length: Int) throws(NVMeCSIError) -> UInt32 {
    var sum: UInt64 = 0
    var offset = 0
    while offset + 4 <= length {
      if offset != 216 { sum &+= UInt64(try reader.uint32(at: offset)) }
      offset += 4
    }
    if length - offset == 2 { sum &+= UInt64(try reader.uint16(at: offset)) }
    return UInt32(truncatingIfNeeded: (sum & 0xffff_ffff) &+ (sum >> 32))
  }

  private static func hex32(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
  private static func hex16(_ value: UInt16) -> String { "0x" + String(value, radix: 16) }
}

/// Little-endian integers from a byte buffer, every read bounds-checked.
struct LittleEndianReader {
  let buffer: [UInt8]
  var count: Int { buffer.count }

  func bytes(at offset: Int, count length: Int) throws(NVMeCSIError) -> [UInt8] {
    guard offset >= 0, length >= 0, offset <= buffer.count - length else {
      throw .failedPrecondition("md superblock is cut short: \(length) bytes at \(offset) of \(buffer.count)")
    }
    return Array(buffer[offset..<offset + length])
  }

  func uint16(at offset: Int) throws(NVMeCSIError) -> UInt16 { UInt16(try value(at: offset, size: 2)) }
  func uint32(at offset: Int) throws(NVMeCSIError) -> UInt32 { UInt32(try value(at: offset, size: 4)) }
  func uint64(at offset: Int) throws(NVMeCSIError) -> UInt64 { try value(at: offset, size: 8) }

  private func value(at offset: Int, size: Int) throws(NVMeCSIError) -> UInt64 {
    try bytes(at: offset, count: size).reversed().reduce(0) { $0 << 8 | UInt64($1) }
  }
}
