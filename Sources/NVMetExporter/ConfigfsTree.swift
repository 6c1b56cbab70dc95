import Foundation
import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// The configfs operations the exporter needs. Two implementations:
/// `KernelConfigfs` (the real /sys/kernel/config: attributes exist, rmdir removes a
/// directory together with its attributes and default groups) and `DirectoryConfigfs`
/// (a plain directory that behaves the same way, for machines without nvmet and for
/// tests; the same exporter test suite runs against the real kernel in the VM harness).
///
/// Every path is relative to the root and built only from validated names.
public protocol ConfigfsTree: Sendable {
  var root: String { get }
  /// Creates a directory; an existing one is success. Returns whether it was created.
  @discardableResult func makeDirectory(_ path: String) throws(NVMeCSIError) -> Bool
  func read(_ path: String) -> String?
  func write(_ path: String, _ value: String) throws(NVMeCSIError)
  func link(_ path: String, to target: String) throws(NVMeCSIError)
  func removeLink(_ path: String) throws(NVMeCSIError)
  /// Removes a directory the exporter made (with its attributes); missing is success.
  func removeDirectory(_ path: String) throws(NVMeCSIError)
  func list(_ path: String) -> [String]
  func exists(_ path: String) -> Bool
}

extension ConfigfsTree {
  func absolute(_ path: String) -> String { root + "/" + path }

  func failure(_ what: String, _ path: String, _ code: Int32 = errno) -> NVMeCSIError {
    NVMeCSIError(systemCall: "nvmet configfs: cannot \(what)", absolute(path), Errno(code))
  }

  /// The attribute's value without surrounding whitespace; nil when it cannot be read.
  /// (Plain open and read: listing volumes reads several attributes of each one.)
  public func read(_ path: String) -> String? {
    let fd = open(absolute(path), O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)  // a configfs attribute is at most a page
    while true {
      let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
      if count == 0 { break }
      if count < 0 {
        if errno == EINTR { continue }
        return nil
      }
      bytes += chunk[..<count]
    }
    let isSpace: (UInt8) -> Bool = { $0 == 0x20 || (0x09...0x0d).contains($0) }
    guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) })
    else { return "" }
    return String(decoding: bytes[first...last], as: UTF8.self)
  }

  @discardableResult
  public func makeDirectory(_ path: String) throws(NVMeCSIError) -> Bool {
    if mkdir(absolute(path), 0o755) == 0 { return true }
    if errno == EEXIST { return false }
    throw failure("create", path)
  }

  public func link(_ path: String, to target: String) throws(NVMeCSIError) {
    if symlink(absolute(target), absolute(path)) == 0 || errno == EEXIST { return }
    throw failure("link", path)
  }

  public func removeLink(_ path: String) throws(NVMeCSIError) {
    if unlink(absolute(path)) == 0 || errno == ENOENT { return }
    throw failure("unlink", path)
  }

  /// The directory's entries, sorted; none when it cannot be read.
  public func list(_ path: String) -> [String] {
    guard let directory = opendir(absolute(path)) else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
      if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
  }

  public func exists(_ path: String) -> Bool {
    var st = stat()
    return lstat(absolute(path), &st) == 0
  }
}

/// The kernel's configfs.
public struct KernelConfigfs: ConfigfsTree {
  public let root: String
  public init(root: String) { self.root = root }

  public func write(_ path: String, _ value: String) throws(NVMeCSIError) {
    // Attributes exist already; never create files in configfs.
    let fd = open(absolute(path), O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw failure("open attribute", path) }
    defer { close(fd) }
    let bytes = Array((value + "\n").utf8)
    guard Glibc.write(fd, bytes, bytes.count) == bytes.count else { throw failure("write \(quoted(value)) to", path) }
  }

  public func removeDirectory(_ path: String) throws(NVMeCSIError) {
    if rmdir(absolute(path)) == 0 || errno == ENOENT { return }
    throw failure("remove", path)
  }
}

/// A plain directory standing in for configfs: attributes are files, and removing a
/// directory removes its attribute files and empty subdirectories (the kernel's
/// default groups) but, like the kernel, refuses while links or user-made
/// subdirectories remain. Like the kernel it rejects attributes nvmet does not have
/// and identity changes on an enabled namespace.
public struct DirectoryConfigfs: ConfigfsTree {
  public let root: String
  public init(root: String) { self.root = root }

  /// The nvmet attributes (Linux 6.1) this stand-in accepts.
  static let kernelAttributes: Set<String> = [
    "attr_allow_any_host", "attr_serial", "attr_model", "attr_version", "attr_cntlid_min", "attr_cntlid_max",
    "device_path", "device_uuid", "device_nguid", "enable", "buffered_io", "revalidate_size", "ana_grpid",
    "addr_trtype", "addr_adrfam", "addr_traddr", "addr_trsvcid", "addr_treq", "param_inline_data_size",
  ]
  static let namespaceIdentity: Set<String> = ["device_path", "device_uuid", "device_nguid"]

  public func write(_ path: String, _ value: String) throws(NVMeCSIError) {
    let name = String(path.split(separator: "/").last ?? "")
    guard Self.kernelAttributes.contains(name) else { throw failure("open attribute", path, ENOENT) }
    if Self.namespaceIdentity.contains(name) {
      let enable = String(path.dropLast(name.count)) + "enable"
      if read(enable) == "1" { throw failure("write \(quoted(value)) to", path, EBUSY) }
    }
    // A plain write, never synced: configfs lives in memory and is gone after a reboot,
    // so syncing would make the stand-in slower than what it stands for.
    let fd = open(absolute(path), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw failure("open attribute", path) }
    defer { close(fd) }
    let bytes = Array((value + "\n").utf8)
    guard Glibc.write(fd, bytes, bytes.count) == bytes.count else { throw failure("write \(quoted(value)) to", path) }
  }

  public func removeDirectory(_ path: String) throws(NVMeCSIError) {
    guard exists(path) else { return }
    for child in list(path) {
      let childPath = path + "/" + child
      var st = stat()
      guard lstat(absolute(childPath), &st) == 0 else { continue }
      switch st.st_mode & S_IFMT {
      case S_IFREG: unlink(absolute(childPath))
      case S_IFDIR where list(childPath).isEmpty: rmdir(absolute(childPath))
      default: throw failure("remove", path, ENOTEMPTY)
      }
    }
    if rmdir(absolute(path)) != 0 && errno != ENOENT { throw failure("remove", path) }
  }
}

/// Whether `path` is on configfs (the kernel's, not a stand-in directory): the file
/// system of the longest mount point containing it, from /proc/self/mounts.
public func isConfigfs(_ path: String, mounts: String = "/proc/self/mounts") -> Bool {
  guard let table = try? String(contentsOfFile: mounts, encoding: .utf8) else { return false }
  var best: (point: String, type: String)?
  for line in table.split(separator: "\n") {
    let fields = line.split(separator: " ")
    guard fields.count >= 3 else { continue }
    let point = String(fields[1]).replacingOccurrences(of: "\\040", with: " ")
    let contains = path == point || path.hasPrefix(point == "/" ? "/" : point + "/")
    if contains && point.count >= (best?.point.count ?? -1) { best = (point, String(fields[2])) }
  }
  return best?.type == "configfs"
}
