import GRPCCore
import GRPCNIOTransportHTTP2
import NVMeCSICore
import ServiceLifecycle

/// Keeps a gRPC client's connections running for the lifetime of a service group.
public struct GRPCClientService: Service {
  let client: GRPCClient<HTTP2ClientTransport.Posix>
  /// The client's `RPCEventLoop`, if it has one: its connections run there.
  let eventLoop: RPCEventLoop?

  public init(_ client: GRPCClient<HTTP2ClientTransport.Posix>, eventLoop: RPCEventLoop? = nil) {
    self.client = client
    self.eventLoop = eventLoop
  }

  public func run() async throws {
    try await withGracefulShutdownHandler {
      try await withTaskExecutorPreference(eventLoop) { try await client.runConnections() }
    } onGracefulShutdown: {
      client.beginGracefulShutdown()
    }
  }
}
