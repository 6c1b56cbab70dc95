#if canImport(Glibc)
  import Glibc
#endif

/// An errno value as a typed Swift error (swift-system's shape, without the
/// dependency): what a failed system call said, kept as the cause of the domain
/// error built from it.
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
  public var code: Int32

  public init(_ code: Int32) { self.code = code }

  /// The calling thread's errno now.
  public static var current: Errno { Errno(errno) }

  /// strerror's text, e.g. "No such file or directory".
  public var description: String { String(cString: strerror(code)) }

  public static let noEntry = Errno(ENOENT)
  public static let exists = Errno(EEXIST)
  public static let busy = Errno(EBUSY)
  public static let interrupted = Errno(EINTR)
  public static let noSpace = Errno(ENOSPC)
  public static let quotaExceeded = Errno(EDQUOT)
  public static let notDirectory = Errno(ENOTDIR)
  public static let noDevice = Errno(ENXIO)
}

/// Runs a system call that reports failure as -1 (or nil) with errno: the value on
/// success, the errno as a typed error otherwise. With `retryOnInterrupt` an EINTR
/// repeats the call, so no caller writes that loop by hand.
@inlinable
public func valueOrErrno<T: FixedWidthInteger>(
  retryOnInterrupt: Bool = true, _ call: () -> T
) -> Result<T, Errno> {
  while true {
    let value = call()
    if value != -1 { return .success(value) }
    let error = Errno.current
    if retryOnInterrupt && error.code == EINTR { continue }
    return .failure(error)
  }
}

/// As `valueOrErrno`, throwing a domain error that names what failed and on what
/// (`"cannot open /x: No such file or directory"`); ENOSPC and EDQUOT become
/// `resourceExhausted`.
@inlinable
public func systemCall<T: FixedWidthInteger>(
  _ what: String, _ subject: String, retryOnInterrupt: Bool = true, _ call: () -> T
) throws(NVMeCSIError) -> T {
  switch valueOrErrno(retryOnInterrupt: retryOnInterrupt, call) {
  case .success(let value): return value
  case .failure(let error): throw NVMeCSIError(systemCall: what, subject, error)
  }
}

extension NVMeCSIError {
  /// `"<what> <subject>: <strerror>"`, kept with its errno. Out of space is
  /// `resourceExhausted` (the caller can act on it); everything else is internal.
  public init(systemCall what: String, _ subject: String, _ error: Errno) {
    let text = "\(what) \(subject): \(error)"
    if error == .noSpace || error == .quotaExceeded {
      self.init(.resourceExhausted, text + " (the file system is full: free space)", cause: error)
    } else {
      self.init(.internalError, text, cause: error)
    }
  }
}
