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
