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

  /// `pipe2(fds, O_CLOEXEC)`: both ends close on exec, set atomically where glibc allows
  /// (Swift does not import pipe2, it needs _GNU_SOURCE).
  static func makePipe() -> Result<(read: Int32, write: Int32), Errno> {
    var fds: [Int32] = [-1, -1]
    let made: Result<Int32, Errno>
    if let pipe2 = Self.pipe2 {
      made = valueOrErrno { fds.withUnsafeMutableBufferPointer { pipe2($0.baseAddress, O_CLOEXEC) } }
    } else {
      made = valueOrErrno { pipe(&fds) }
      // F_SETFD on a descriptor just made cannot fail.
      if case .success = made { for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) } }
    }
    return made.map { _ in (fds[0], fds[1]) }
  }

  private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32
  private static let pipe2: Pipe2? = {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pipe2") else { return nil }
    return unsafeBitCast(symbol, to: Pipe2.self)
  }()

  /// "/a/b/" → "/a/b"; "/" stays "/".
  static func withoutTrailingSlash(_ path: String) -> String {
    var result = Substring(path)
    while result.count > 1 && result.hasSuffix("/") { result = result.dropLast() }
    return String(result)
  }
}

/// Runs `body` on a thread of its own and returns its result, so that a call which may
/// block for long (waiting for a child process, mount(2) replaying a journal, umount(2)
/// flushing to a slow device) never holds a thread of Swift's cooperative pool.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
  await withCheckedContinuation { continuation in
    Thread { continuation.resume(returning: body()) }.start()
  }
}

/// "30 s", "0.5 s".
func formatSeconds(_ duration: Duration) -> String {
  let (seconds, attoseconds) = duration.components
  if attoseconds == 0 { return "\(seconds) s" }
  let value = Double(seconds) + Double(attoseconds) / 1e18
  return String(format: "%g s", value)
}
