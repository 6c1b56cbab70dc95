#if canImport(Glibc)
  import Glibc
#endif

/// Reads a few bytes of a file or block device past the page cache (O_DIRECT). The
/// target reads what a remote host wrote through nvmet: nvmet's block-device backend
/// writes beneath the page cache, so a cached read could return bytes older than the
/// device holds.
public enum UncachedRead {
  /// Linux O_DIRECT (a GNU extension the Glibc module does not import).
  #if arch(x86_64) || arch(i386)
    static let directFlag: Int32 = 0o40000
  #elseif arch(arm64) || arch(arm)
    static let directFlag: Int32 = 0o200000
  #else
    #error("O_DIRECT's value for this architecture is not known")
  #endif

  /// O_DIRECT wants the buffer, offset and length aligned to the device's logical
  /// block size; 4 KiB covers every size Linux allows.
  public static let alignment = 4096

  /// Up to `count` bytes at `offset` of `path` (fewer only where the file ends). Falls
  /// back to a plain read only when the file system refuses O_DIRECT (EINVAL: tmpfs
  /// before Linux 6.6, some FUSE file systems), where there is no cache to bypass
  /// anyway. `offset` and `count` must be multiples of `alignment`.
  public static func bytes(at offset: UInt64, count: Int, from path: String) throws(NVMeCSIError) -> [UInt8] {
    guard offset % UInt64(alignment) == 0, count >= 0, count % alignment == 0, let position = off_t(exactly: offset)
    else {
      throw .internalError("an uncached read needs offset and length in whole \(alignment)-byte blocks")
    }
    switch read(path, at: position, count: count, flags: directFlag) {
    case .success(let bytes): return bytes
    case .failure(let error) where error.cause == Errno(EINVAL):
      switch read(path, at: position, count: count, flags: 0) {
      case .success(let bytes): return bytes
      case .failure(let error): throw error
      }
    case .failure(let error): throw error
    }
  }

  private static func read(_ path: String, at offset: off_t, count: Int, flags: Int32) -> Result<
    [UInt8], NVMeCSIError
  > {
    let fd: Int32
    switch valueOrErrno({ open(path, O_RDONLY | O_CLOEXEC | flags) }) {
    case .success(let opened): fd = opened
    case .failure(let error): return .failure(NVMeCSIError(systemCall: "cannot open", path, error))
    }
    defer { close(fd) }
    var raw: UnsafeMutableRawPointer?
    guard posix_memalign(&raw, alignment, max(count, alignment)) == 0, let buffer = raw else {
      return .failure(.internalError("cannot allocate \(count) aligned bytes to read \(path)"))
    }
    defer { free(buffer) }
    var got = 0
    while got < count {
      switch valueOrErrno({ pread(fd, buffer + got, count - got, offset + off_t(got)) }) {
      case .success(0): return .success(Array(UnsafeRawBufferPointer(start: buffer, count: got)))
      case .success(let n): got += n
      case .failure(let error): return .failure(NVMeCSIError(systemCall: "cannot read", path, error))
      }
    }
    return .success(Array(UnsafeRawBufferPointer(start: buffer, count: got)))
  }
}

/// Writes a few bytes of a file or block device past the page cache (O_DIRECT) and
/// durably (fsync), the counterpart of `UncachedRead`: what the target writes into a
/// leg must be what a host reading it through nvmet sees, and must survive a crash.
public enum UncachedWrite {
  /// Writes all of `bytes` at `offset` of `path`, then fsyncs it. Falls back to a plain
  /// write (still fsynced) only when the file system refuses O_DIRECT (EINVAL), as
  /// `UncachedRead` does. `offset` and the length must be multiples of the alignment.
  public static func bytes(_ bytes: [UInt8], at offset: UInt64, to path: String) throws(NVMeCSIError) {
    let alignment = UncachedRead.alignment
    guard offset % UInt64(alignment) == 0, bytes.count % alignment == 0, let position = off_t(exactly: offset)
    else {
      throw .internalError("an uncached write needs offset and length in whole \(alignment)-byte blocks")
    }
    switch write(bytes, to: path, at: position, flags: UncachedRead.directFlag) {
    case .success: return
    case .failure(let error) where error.cause == Errno(EINVAL):
      if case .failure(let error) = write(bytes, to: path, at: position, flags: 0) { throw error }
    case .failure(let error): throw error
    }
  }

  private static func write(_ bytes: [UInt8], to path: String, at offset: off_t, flags: Int32) -> Result<
    Void, NVMeCSIError
  > {
    let fd: Int32
    switch valueOrErrno({ open(path, O_WRONLY | O_CLOEXEC | flags) }) {
    case .success(let opened): fd = opened
    case .failure(let error): return .failure(NVMeCSIError(systemCall: "cannot open", path, error))
    }
    defer { close(fd) }
    let alignment = UncachedRead.alignment
    var raw: UnsafeMutableRawPointer?
    guard posix_memalign(&raw, alignment, max(bytes.count, alignment)) == 0, let buffer = raw else {
      return .failure(.internalError("cannot allocate \(bytes.count) aligned bytes to write \(path)"))
    }
    defer { free(buffer) }
    buffer.copyMemory(from: bytes, byteCount: bytes.count)
    var done = 0
    while done < bytes.count {
      switch valueOrErrno({ pwrite(fd, buffer + done, bytes.count - done, offset + off_t(done)) }) {
      case .success(0):
        return .failure(.internalError("cannot write \(path): it took no bytes at \(offset + off_t(done))"))
      case .success(let n): done += n
      case .failure(let error): return .failure(NVMeCSIError(systemCall: "cannot write", path, error))
      }
    }
    if case .failure(let error) = valueOrErrno({ fsync(fd) }) {
      return .failure(NVMeCSIError(systemCall: "cannot sync", path, error))
    }
    return .success(())
  }
}
