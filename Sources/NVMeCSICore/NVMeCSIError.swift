/// The one error type of the domain. It carries no gRPC: each service turns it into a
/// status in exactly one place (see `CSIServer`). `message` says what was wrong and,
/// where there is something to do, what to do.
public struct NVMeCSIError: Error, Equatable, CustomStringConvertible, Sendable {
  public enum Kind: String, Sendable {
    case invalidArgument, notFound, alreadyExists, failedPrecondition, resourceExhausted
    case outOfRange, aborted, unavailable, unimplemented, internalError
  }

  public var kind: Kind
  public var message: String
  /// The system call's errno behind this error, when one was.
  public var cause: Errno?

  public init(_ kind: Kind, _ message: String, cause: Errno? = nil) {
    self.kind = kind
    self.message = message
    self.cause = cause
  }

  public var description: String { "\(kind.rawValue): \(message)" }

  public static func invalidArgument(_ m: String) -> Self { .init(.invalidArgument, m) }
  public static func notFound(_ m: String) -> Self { .init(.notFound, m) }
  public static func alreadyExists(_ m: String) -> Self { .init(.alreadyExists, m) }
  public static func failedPrecondition(_ m: String) -> Self { .init(.failedPrecondition, m) }
  public static func resourceExhausted(_ m: String) -> Self { .init(.resourceExhausted, m) }
  public static func outOfRange(_ m: String) -> Self { .init(.outOfRange, m) }
  public static func aborted(_ m: String) -> Self { .init(.aborted, m) }
  public static func unavailable(_ m: String) -> Self { .init(.unavailable, m) }
  public static func unimplemented(_ m: String) -> Self { .init(.unimplemented, m) }
  public static func internalError(_ m: String) -> Self { .init(.internalError, m) }
}
