import GRPCCore
import Logging

/// Who may call what, by the names in the client's certificate (`PeerIdentity`).
///
/// Writers may call every method; readers only `readMethods`; anyone else nothing.
/// Enforced on mutual-TLS endpoints only (`GRPCService`); a plaintext endpoint is on
/// loopback or a unix socket, where whoever connects is already on the machine.
public struct PeerAuthorization: Sendable {
  public var writers: Set<String>
  public var readers: Set<String>
  public var readMethods: Set<MethodDescriptor>

  public init(writers: Set<String>, readers: Set<String>, readMethods: Set<MethodDescriptor>) {
    self.writers = writers
    self.readers = readers
    self.readMethods = readMethods
  }

  /// nil when allowed; otherwise why not, for a PermissionDenied status.
  public func refusal(names: [String], method: MethodDescriptor) -> String? {
    if names.contains(where: writers.contains) { return nil }
    if readMethods.contains(method), names.contains(where: readers.contains) { return nil }
    let shown = names.isEmpty ? "no name" : Set(names).sorted().joined(separator: ", ")
    let wanted = readMethods.contains(method) ? writers.union(readers) : writers
    return "the client certificate (\(shown)) may not call \(method.method): it must name one of "
      + wanted.sorted().joined(separator: ", ")
  }
}

/// Enforces a `PeerAuthorization` before the service sees the request.
public struct PeerAuthorizationInterceptor: ServerInterceptor {
  let authorization: PeerAuthorization

  public init(_ authorization: PeerAuthorization) { self.authorization = authorization }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    // Fails closed: a call whose certificate cannot be read has no names.
    if let refusal = authorization.refusal(names: PeerIdentity.names(of: context) ?? [], method: context.descriptor) {
      throw RPCError(code: .permissionDenied, message: refusal)
    }
    return try await next(request, context)
  }
}
