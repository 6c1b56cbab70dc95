import Foundation
import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// Small wrappers over the POSIX calls this module is built from.
enum POSIX {
  /// `stat(2)` following symlinks; the errno on failure.
  static func status(_ path: String) -> Result<stat, Errno> {
    var st = stat()
    return valueOrErrno { stat(path, &st) }.map { _ in st }
  }

  static func isDirectory(_ st: stat) -> Bool { st.st_mode & S_IFMT == S_IFDIR }
  static func isRegularFile(_ st: stat) -> Bool { st.st_mode & S_IFMT == S_IFREG }
  static func isBlockDevice(_ st: stat) -> Bool { st.st_mode & S_IFMT == S_IFBLK }

  /// The size of the open block device (BLKGETSIZE64) or regular file (its length).
  static func size(of fd: Int32, _ device: String) throws(NVMeCSIError) -> UInt64 {
    var st = stat()
    if case .failure(let error) = valueOrErrno({ fstat(fd, &st) }) {
      throw internalError("cannot stat \(quoted(device))", error)
    }
    if isRegularFile(st) { return UInt64(st.st_size) }
    guard isBlockDevice(st) else {
      throw .invalidArgument("\(quoted(device)) is neither a block device nor a regular file")
    }
    var size: UInt64 = 0
    if case .failure(let error) = valueOrErrno({ ioctl(fd, blkGetSize64, &size) }) {
      throw internalError("cannot get the size of \(quoted(device)) (BLKGETSIZE64)", error)
    }
    return size
  }

  /// _IOR(0x12, 114, size_t)
  static let blkGetSize64: UInt = 0x8008_1272

  /// `realpath(3)`, nil when the path does not resolve.
  static func resolved(_ path: String) -> String? {
    guard let pointer = realpath(path, nil) else { return nil }
    defer { free(pointer) }
    return String(cString: pointer)
  }

  // glibc's gnu_dev_major / gnu_dev_minor, which Swift does not import (they are macros).
  static func major(_ dev: dev_t) -> UInt32 {
    UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfff))
  }
  static func minor(_ dev: dev_t) -> UInt32 { UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~0xff)) }

  /// Creates `path` and any missing parents with `mode`; an existing directory is success.
  static func makeDirectories(_ path: String, mode: mode_t) throws(NVMeCSIError) {
    switch status(path) {
    case .success(let st):
      guard isDirectory(st) else {
        throw .failedPrecondition("\(quoted(path)) exists and is not a directory")
      }
      return
    case .failure(.noEntry):
      let parent = (path as NSString).deletingLastPathComponent
      if !parent.isEmpty && parent != path { try makeDirectories(parent, mode: mode) }
      if case .failure(let error) = valueOrErrno({ mkdir(path, mode) }), error != .exists {
        throw internalError("cannot create directory \(quoted(path))", error)
      }
    case .failure(.notDirectory):
      throw .failedPrecondition("cannot create \(quoted(path)): part of its path is not a directory")
    case .failure(let error):
      throw internalError("cannot stat \(quoted(path))", error)
    }
  }

  /// `"<what>: <strerror>"` as an internal error that keeps the errno. (Not core's
  /// `NVMeCSIError(systemCall:)`: out of space on the node is no storage target's.)
  static func internalError(_ what: String, _ error: Errno) -> NVMeCSIError {
    NVMeCSIError(.internalError, "\(what): \(error)", cause: error)
  }

  /// "/a/b/" → "/a/b"; "/" stays "/".
  static func withoutTrailingSlash(_ path: String) -> String {
    var result = Substring(path)
    while result.count > 1 && result.hasSuffix("/") { result = result.dropLast() }
    return String(result)
  }
}
