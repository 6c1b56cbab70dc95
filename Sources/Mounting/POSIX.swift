import Foundation
import NVMeCSICore

#if canImport(Glibc)
import Glibc
#endif

/// Small wrappers over the POSIX calls this module is built from.
enum POSIX {
  static func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }

  /// `stat(2)` following symlinks; the errno on failure.
  static func status(_ path: String) -> Result<stat, Errno> {
    var st = stat()
    return stat(path, &st) == 0 ? .success(st) : .failure(Errno(errno))
  }

  /// An errno value as a Swift error.
  struct Errno: Error, Equatable {
    var code: Int32
    init(_ code: Int32) { self.code = code }
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
  static func major(_ dev: dev_t) -> UInt32 { UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfff)) }
  static func minor(_ dev: dev_t) -> UInt32 { UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~0xff)) }

  /// Creates `path` and any missing parents with `mode`; an existing directory is success.
  static func makeDirectories(_ path: String, mode: mode_t) throws(NVMeCSIError) {
    switch status(path) {
    case .success(let st):
      guard isDirectory(st) else {
        throw .failedPrecondition("\(quoted(path)) exists and is not a directory")
      }
      return
    case .failure(let error) where error.code == ENOENT:
      let parent = (path as NSString).deletingLastPathComponent
      if !parent.isEmpty && parent != path { try makeDirectories(parent, mode: mode) }
      if mkdir(path, mode) != 0 && errno != EEXIST {
        throw .internalError("cannot create directory \(quoted(path)): \(errorText(errno))")
      }
    case .failure(let error) where error.code == ENOTDIR:
      throw .failedPrecondition("cannot create \(quoted(path)): part of its path is not a directory")
    case .failure(let error):
      throw .internalError("cannot stat \(quoted(path)): \(errorText(error.code))")
    }
  }

  /// `pipe2(fds, O_CLOEXEC)`: both ends close on exec, set atomically where glibc allows
  /// (Swift does not import pipe2, it needs _GNU_SOURCE).
  static func makePipe(_ fds: inout [Int32]) -> Int32 {
    if let pipe2 = Self.pipe2 {
      return fds.withUnsafeMutableBufferPointer { pipe2($0.baseAddress, O_CLOEXEC) }
    }
    guard pipe(&fds) == 0 else { return -1 }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    return 0
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
