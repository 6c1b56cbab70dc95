import Foundation
import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// The few POSIX file operations the file store is built from, each turning errno
/// into a message that names the path.
enum FileOperations {
  static func makeDirectory(_ path: String) throws(NVMeCSIError) {
    if mkdir(path, 0o700) != 0 && errno != EEXIST { throw DurableFile.failure("cannot create directory", path) }
  }

  static func exists(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0
  }

  static func size(of path: String) throws(NVMeCSIError) -> UInt64 {
    var st = stat()
    guard stat(path, &st) == 0 else { throw DurableFile.failure("cannot stat", path) }
    return UInt64(st.st_size)
  }

  static func list(_ directory: String) throws(NVMeCSIError) -> [String] {
    switch Directory.names(in: directory) {
    case .success(let names): return names
    case .failure(let error): throw DurableFile.failure("cannot list", directory, error)
    }
  }

  // Linux lseek whences (GNU extensions the Glibc module does not import).
  static let seekData: Int32 = 3
  static let seekHole: Int32 = 4

  /// Linux FICLONE: make `dst` share all of `src`'s blocks (XFS, btrfs).
  static let ficlone: UInt = 0x4004_9409

  /// Makes `dst` (a new, empty file) hold `src`'s content: by reflink when the file
  /// system can, otherwise by a sparse copy (holes stay holes). Returns whether it
  /// was a reflink.
  @discardableResult
  static func copyContents(from src: Int32, to dst: Int32, srcPath: String, dstPath: String) throws(NVMeCSIError)
    -> Bool
  {
    if ioctl(dst, ficlone, CInt(src)) == 0 { return true }
    let total = try size(ofDescriptor: src, path: srcPath)
    guard ftruncate(dst, off_t(total)) == 0 else { throw DurableFile.failure("cannot size", dstPath) }
    var offset: off_t = 0
    let bufferSize = 1 << 20
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 4096)
    defer { buffer.deallocate() }
    while offset < off_t(total) {
      // Skip holes: only data extents are copied.
      let data = lseek(src, offset, seekData)
      if data < 0 { break }  // ENXIO: no more data
      let hole = lseek(src, data, seekHole)
      var position = data
      while position < hole {
        let n = pread(src, buffer, min(bufferSize, Int(hole - position)), position)
        if n < 0 {
          if errno == EINTR { continue }
          throw DurableFile.failure("cannot read", srcPath)
        }
        if n == 0 { break }
        var written = 0
        while written < n {
          let w = pwrite(dst, buffer + written, n - written, position + off_t(written))
          if w < 0 {
            if errno == EINTR { continue }
            throw DurableFile.failure("cannot write", dstPath)
          }
          written += w
        }
        position += off_t(n)
      }
      offset = hole
    }
    return false
  }

  static func size(ofDescriptor fd: Int32, path: String) throws(NVMeCSIError) -> UInt64 {
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw DurableFile.failure("cannot stat", path) }
    return UInt64(st.st_size)
  }

  /// Whether this directory's file system supports reflinks (tried, not guessed).
  static func supportsReflink(in directory: String) -> Bool {
    let a = directory + "/.reflink-probe-a"
    let b = directory + "/.reflink-probe-b"
    defer {
      unlink(a)
      unlink(b)
    }
    let fa = open(a, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    let fb = open(b, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    defer {
      if fa >= 0 { close(fa) }
      if fb >= 0 { close(fb) }
    }
    guard fa >= 0, fb >= 0 else { return false }
    var block = [UInt8](repeating: 1, count: 4096)
    guard write(fa, &block, 4096) == 4096 else { return false }
    return ioctl(fb, ficlone, CInt(fa)) == 0
  }
}
