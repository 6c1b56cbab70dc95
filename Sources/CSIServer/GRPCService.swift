import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NVMeCSICore
import ServiceLifecycle

#if canImport(Glibc)
  import Glibc
#endif

/// Serves gRPC services on one endpoint as a ServiceLifecycle service: on SIGTERM or
/// SIGINT the group asks it to stop, and in-flight RPCs finish first.
public struct GRPCService: Service {
  public let endpoint: Endpoint
  let server: GRPCServer<HTTP2ServerTransport.Posix>
  let logger: Logger

  public init(endpoint: Endpoint, services: [any RegistrableRPCService], logger: Logger) throws(NVMeCSIError) {
    if case .unix(let path) = endpoint { try Self.prepareSocketPath(path) }
    self.endpoint = endpoint
    self.logger = logger
    self.server = GRPCServer(
      transport: .http2NIOPosix(address: endpoint.serverAddress, transportSecurity: .plaintext),
      services: services,
      interceptors: [RequestLoggingInterceptor(logger: logger)])
  }

  public func run() async throws {
    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await server.serve() }
        if let address = try await server.listeningAddress {
          logger.info("serving", metadata: ["endpoint": "\(endpoint)", "address": "\(address)"])
        }
      }
    } onGracefulShutdown: {
      logger.info("shutting down", metadata: ["endpoint": "\(endpoint)"])
      server.beginGracefulShutdown()
    }
  }

  /// A socket left by an earlier run would make bind fail: remove it (only if it is
  /// a socket), and create the directory if needed.
  static func prepareSocketPath(_ path: String) throws(NVMeCSIError) {
    var st = stat()
    if lstat(path, &st) == 0 {
      guard st.st_mode & S_IFMT == S_IFSOCK else {
        throw .failedPrecondition("endpoint \(path) exists and is not a socket: refusing to replace it")
      }
      unlink(path)
    }
    let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
    if !directory.isEmpty && mkdir(directory, 0o755) != 0 && errno != EEXIST {
      throw .failedPrecondition("cannot create socket directory \(directory): \(String(cString: strerror(errno)))")
    }
  }
}

/// A client connection to an endpoint, running for the lifetime of `body`.
public func withClient<Result: Sendable>(
  to endpoint: Endpoint,
  _ body: (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
) async throws -> Result {
  try await withGRPCClient(
    transport: .http2NIOPosix(target: endpoint.clientTarget, transportSecurity: .plaintext),
    handleClient: body)
}

/// A long-lived client; run it with `GRPCClientService`.
///
/// Calls fail fast while the peer is down (the CSI sidecars retry), and reconnect
/// attempts back off to at most a second, so a restarted target is used again
/// within about a second instead of gRPC's default of up to two minutes.
public func makeClient(to endpoint: Endpoint) throws -> GRPCClient<HTTP2ClientTransport.Posix> {
  var config = HTTP2ClientTransport.Posix.Config.defaults
  config.backoff = .init(initial: .milliseconds(100), max: .seconds(1), multiplier: 1.6, jitter: 0.2)
  return GRPCClient(
    transport: try .http2NIOPosix(target: endpoint.clientTarget, transportSecurity: .plaintext, config: config))
}
