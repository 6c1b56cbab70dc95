import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// Crash-safe small files (records). A write leaves either the old content or all of
/// the new: temp file in the same directory, fsync, rename, fsync the directory.
public enum DurableFile {
  public static func write(_ data: Data, to path: String) throws(NVMeCSIError) {
    let directory = (path as NSString).deletingLastPathComponent
    let temp = directory + "/." + (path as NSString).lastPathComponent + ".tmp"
    let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw failure("cannot create", temp) }
    var failed: NVMeCSIError?
    data.withUnsafeBytes { raw in
      var offset = 0
      while offset < raw.count {
        switch valueOrErrno({ Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset) }) {
        case .success(let n): offset += n
        case .failure(let error):
          failed = NVMeCSIError(systemCall: "cannot write", temp, error)
          return
        }
      }
    }
    if failed == nil && fsync(fd) != 0 { failed = failure("cannot fsync", temp) }
    close(fd)
    if let failed {
      unlink(temp)
      throw failed
    }
    guard rename(temp, path) == 0 else {
      let error = failure("cannot rename into place", path)
      unlink(temp)
      throw error
    }
    try syncDirectory(directory)
  }

  /// Removes a file and, when `durably`, makes the removal durable; a missing file is
  /// success.
  public static func remove(_ path: String, durably: Bool = true) throws(NVMeCSIError) {
    if unlink(path) != 0 {
      if errno == ENOENT { return }
      throw failure("cannot remove", path)
    }
    if durably { try syncDirectory((path as NSString).deletingLastPathComponent) }
  }

  public static func syncDirectory(_ path: String) throws(NVMeCSIError) {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw failure("cannot open directory", path) }
    defer { close(fd) }
    guard fsync(fd) == 0 else { throw failure("cannot fsync directory", path) }
  }

  /// The error for a failed call on `path`, from the errno now (see `NVMeCSIError(systemCall:)`).
  public static func failure(_ what: String, _ path: String, _ error: Errno = .current) -> NVMeCSIError {
    NVMeCSIError(systemCall: what, path, error)
  }
}
