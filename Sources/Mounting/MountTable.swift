import Foundation
import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// One line of /proc/self/mountinfo, every field (see proc(5)):
///
///     36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
///     (1)(2) (3)   (4)     (5)         (6)      (7)   (8) (9)    (10)       (11)
///
/// Paths and the source have space, tab, newline and backslash escaped as `\ooo`
/// octal; they are stored unescaped.
public struct MountTableEntry: Hashable, Sendable {
  public var id: Int
  public var parentID: Int
  /// The device number of the mounted file system (`st_dev` of files on it).
  public var major: UInt32
  public var minor: UInt32
  /// Path inside the file system that is mounted here ("/" unless a bind mount of a subtree).
  public var root: String
  public var mountPoint: String
  /// Per-mount options: "rw"/"ro", "nosuid", "relatime", …
  public var mountOptions: [String]
  /// Propagation tags: "shared:1", "master:2", "unbindable", …
  public var optionalFields: [String]
  public var fsType: String
  /// "/dev/nvme0n1", "tmpfs", "none"; may be empty.
  public var source: String
  /// Options of the file system itself (its superblock).
  public var superOptions: [String]

  public init(
    id: Int, parentID: Int, major: UInt32, minor: UInt32, root: String, mountPoint: String,
    mountOptions: [String], optionalFields: [String], fsType: String, source: String, superOptions: [String]
  ) {
    self.id = id
    self.parentID = parentID
    self.major = major
    self.minor = minor
    self.root = root
    self.mountPoint = mountPoint
    self.mountOptions = mountOptions
    self.optionalFields = optionalFields
    self.fsType = fsType
    self.source = source
    self.superOptions = superOptions
  }

  /// Whether this mount is read-only (the per-mount "ro", which `mount -o remount,ro`
  /// and read-only bind mounts set).
  public var readonly: Bool { mountOptions.contains("ro") }

  public var info: MountInfo {
    MountInfo(mountPoint: mountPoint, source: source, root: root, fsType: fsType, readonly: readonly)
  }
}

/// The mounts of this process's mount namespace, parsed from /proc/self/mountinfo.
///
/// Paths are compared as given after removing a trailing slash; mountinfo holds
/// canonical paths, so callers should pass paths without symlinks or "..".
public struct MountTable: Hashable, Sendable {
  public static let defaultPath = "/proc/self/mountinfo"

  /// In the kernel's order: a mount comes after the mounts it is stacked on.
  public var entries: [MountTableEntry]

  public init(entries: [MountTableEntry]) { self.entries = entries }

  /// Parses mountinfo text. A line that does not have mountinfo's shape is an
  /// `internalError` naming the line: the kernel writes this file, so a surprise is a bug.
  public init(parsing text: String, origin: String = MountTable.defaultPath) throws(NVMeCSIError) {
    var entries: [MountTableEntry] = []
    for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      if line.isEmpty { continue }
      guard let entry = Self.parse(line) else {
        throw .internalError("cannot parse line \(index + 1) of \(origin): \(quoted(String(line)))")
      }
      entries.append(entry)
    }
    self.entries = entries
  }

  /// Reads and parses `path` (normally /proc/self/mountinfo).
  public static func read(from path: String = MountTable.defaultPath) throws(NVMeCSIError) -> MountTable {
    try MountTable(parsing: try readFile(path), origin: path)
  }

  /// The mount visible at `path` (the topmost when several are stacked there), or nil.
  public func mount(at path: String) -> MountTableEntry? {
    let path = POSIX.withoutTrailingSlash(path)
    return entries.last { $0.mountPoint == path }
  }

  /// Every mount whose source is exactly `source`, in table order.
  public func mounts(ofSource source: String) -> [MountTableEntry] {
    entries.filter { $0.source == source }
  }

  // MARK: Parsing

  static func parse(_ line: Substring) -> MountTableEntry? {
    let fields = line.split(separator: " ", omittingEmptySubsequences: false)
    guard fields.count >= 10, let separator = fields[6...].firstIndex(of: "-"), fields.count - separator == 4
    else { return nil }
    guard let id = Int(fields[0]), let parentID = Int(fields[1]) else { return nil }
    let device = fields[2].split(separator: ":", omittingEmptySubsequences: false)
    guard device.count == 2, let major = UInt32(device[0]), let minor = UInt32(device[1]) else { return nil }
    let root = unescape(fields[3])
    let mountPoint = unescape(fields[4])
    // The root is a path, or "net:[4026531840]" and the like for namespace files.
    guard !root.isEmpty, mountPoint.hasPrefix("/"),
      !fields[5].isEmpty, !fields[separator + 1].isEmpty
    else { return nil }
    return MountTableEntry(
      id: id, parentID: parentID, major: major, minor: minor, root: root, mountPoint: mountPoint,
      mountOptions: fields[5].split(separator: ",").map(String.init),
      optionalFields: fields[6..<separator].filter { !$0.isEmpty }.map(String.init),
      fsType: unescape(fields[separator + 1]),
      source: unescape(fields[separator + 2]),
      superOptions: fields[separator + 3].split(separator: ",").map(String.init))
  }

  /// Undoes the kernel's `\ooo` octal escapes (it escapes space, tab, newline and backslash).
  static func unescape(_ field: Substring) -> String {
    let bytes = Array(field.utf8)
    guard bytes.contains(UInt8(ascii: "\\")) else { return String(field) }
    func octal(_ byte: UInt8) -> UInt8? {
      (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(byte) ? byte - UInt8(ascii: "0") : nil
    }
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var index = 0
    while index < bytes.count {
      if bytes[index] == UInt8(ascii: "\\"), index + 3 < bytes.count,
        let a = octal(bytes[index + 1]), let b = octal(bytes[index + 2]), let c = octal(bytes[index + 3]), a <= 3
      {
        out.append(a << 6 | b << 3 | c)
        index += 4
      } else {
        out.append(bytes[index])
        index += 1
      }
    }
    return String(decoding: out, as: UTF8.self)
  }

  /// Reads a whole file whose size stat(2) does not know (procfs reports 0).
  static func readFile(_ path: String) throws(NVMeCSIError) -> String {
    let fd: Int32
    switch valueOrErrno({ open(path, O_RDONLY | O_CLOEXEC) }) {
    case .success(let opened): fd = opened
    case .failure(let error): throw POSIX.internalError("cannot open \(path)", error)
    }
    defer { close(fd) }
    var data: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      switch valueOrErrno({ buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }) {
      case .success(0): return String(decoding: data, as: UTF8.self)
      case .success(let count): data.append(contentsOf: buffer[..<count])
      case .failure(let error): throw POSIX.internalError("cannot read \(path)", error)
      }
    }
  }
}
