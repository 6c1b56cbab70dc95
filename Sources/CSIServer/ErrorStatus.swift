import GRPCCore
import NVMeCSICore

/// The one place where domain errors become gRPC statuses. The CSI spec's code table
/// is the contract; the message is passed through untouched.
extension NVMeCSIError: RPCErrorConvertible {
  public var rpcErrorCode: RPCError.Code {
    switch kind {
    case .invalidArgument: .invalidArgument
    case .notFound: .notFound
    case .alreadyExists: .alreadyExists
    case .failedPrecondition: .failedPrecondition
    case .resourceExhausted: .resourceExhausted
    case .outOfRange: .outOfRange
    case .aborted: .aborted
    case .unavailable: .unavailable
    case .unimplemented: .unimplemented
    case .internalError: .internalError
    }
  }

  public var rpcErrorMessage: String { message }
}
