import GRPCCore
import GRPCNIOTransportHTTP2
import ServiceLifecycle

/// Keeps a gRPC client's connections running for the lifetime of a service group.
public struct GRPCClientService: Service {
  let client: GRPCClient<HTTP2ClientTransport.Posix>

  public init(_ client: GRPCClient<HTTP2ClientTransport.Posix>) { self.client = client }

  public func run() async throws {
    try await withGracefulShutdownHandler {
      try await client.runConnections()
    } onGracefulShutdown: {
      client.beginGracefulShutdown()
    }
  }
}
