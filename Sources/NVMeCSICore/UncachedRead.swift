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
