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
  /// How long a shutdown waits for each connection to finish its calls and close, after
  /// which the connection is closed: below the 30 s Kubernetes gives a pod, so an
  /// endpoint still exits by itself when a client never closes (or never even speaks).
  public static let shutdownGrace: Duration = .seconds(20)
  let server: GRPCServer<DeadlineServerTransport<HTTP2ServerTransport.Posix>>
  let eventLoop: RPCEventLoop?
  let shutdownGrace: Duration
  let logger: Logger

  /// - Parameters:
  ///   - security: plaintext only on a unix socket or a loopback address.
  ///   - authorization: who may call what; required with mutual TLS.
  ///   - metrics: where every RPC is counted and timed, if anywhere.
  ///   - eventLoop: the thread that runs connections and handlers; nil: NIO's shared
  ///     threads, handlers on Swift's cooperative pool.
  public init(
    endpoint: Endpoint, security: TransportSecurity = .plaintext, authorization: PeerAuthorization? = nil,
    services: [any RegistrableRPCService], metrics: DriverMetrics? = nil, eventLoop: RPCEventLoop? = nil,
    shutdownGrace: Duration = GRPCService.shutdownGrace, logger: Logger
  ) throws(NVMeCSIError) {
    try security.check(serving: endpoint)
    var interceptors: [any ServerInterceptor] = [RequestLoggingInterceptor(logger: logger, metrics: metrics)]
    let transportSecurity: HTTP2ServerTransport.Posix.TransportSecurity
    switch security {
    case .plaintext:
      transportSecurity = .plaintext
    case .mutualTLS(let tls):
      do { transportSecurity = try tls.server() } catch {
        throw .failedPrecondition("TLS setup from \(tls.files.certificate) failed: \(error)")
      }
      // Every certificate from the CA would otherwise be allowed everything.
      guard let authorization else {
        throw .internalError("a mutual-TLS endpoint needs an authorization: who may call what")
      }
      interceptors.append(PeerAuthorizationInterceptor(authorization))
    }
    if case .unix(let path) = endpoint { try Self.prepareSocketPath(path) }
    self.endpoint = endpoint
    self.eventLoop = eventLoop
    self.shutdownGrace = shutdownGrace
    self.logger = logger
    let group = eventLoop?.group ?? .singletonMultiThreadedEventLoopGroup
    self.server = GRPCServer(
      transport: DeadlineServerTransport(
        base: .http2NIOPosix(
          address: endpoint.serverAddress, transportSecurity: transportSecurity, eventLoopGroup: group),
        timers: eventLoop?.loop ?? group.any()),
      services: services,
      interceptors: interceptors)
  }

  public func run() async throws {
    // true: the server stopped; false: the shutdown grace time passed first; nil: cancelled.
    try await withThrowingTaskGroup(of: Bool?.self) { group in
      group.addTask(executorPreference: eventLoop) {
        try await server.serve()
        return true
      }
      // At shutdown: no new calls; calls in flight finish within the grace time.
      group.addTask { [server, logger, endpoint, shutdownGrace] in
        do { try await gracefulShutdown() } catch { return nil }
        logger.info("shutting down", metadata: ["endpoint": "\(endpoint)"])
        server.beginGracefulShutdown()
        do { try await Task.sleep(for: shutdownGrace) } catch { return nil }
        return false
      }
      if let address = try await server.listeningAddress {
        logger.info("serving", metadata: ["endpoint": "\(endpoint)", "address": "\(address)"])
      }
      if try await group.next() == .some(false) {
        // A connection that never closes, or never even spoke HTTP/2, would hold the
        // process until Kubernetes kills it.
        logger.warning(
          "connections still open after the shutdown grace time: closing them",
          metadata: ["endpoint": "\(endpoint)", "grace": "\(shutdownGrace)"])
      }
      group.cancelAll()
      while true {
        do { guard try await group.next() != nil else { break } } catch {}  // stopped by cancellation
      }
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
  to endpoint: Endpoint, security: ClientSecurity = .plaintext,
  _ body: (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Result
) async throws -> Result {
  try await withGRPCClient(transport: try clientTransport(to: endpoint, security: security), handleClient: body)
}

/// How a client secures its connection: plaintext (unix sockets and loopback only), or
/// mutual TLS expecting the server's certificate to name `serverName`.
public enum ClientSecurity: Sendable {
  case plaintext
  case mutualTLS(MutualTLS, serverName: String)

  public init(_ security: TransportSecurity, serverName: String) {
    switch security {
    case .plaintext: self = .plaintext
    case .mutualTLS(let tls): self = .mutualTLS(tls, serverName: serverName)
    }
  }
}

/// A long-lived client; run it with `GRPCClientService` (on the same `eventLoop`).
///
/// Calls fail fast while the peer is down (the CSI sidecars retry), and reconnect
/// attempts back off to at most a second, so a restarted target is used again
/// within about a second instead of gRPC's default of up to two minutes.
public func makeClient(
  to endpoint: Endpoint, security: ClientSecurity = .plaintext, eventLoop: RPCEventLoop? = nil
) throws -> GRPCClient<HTTP2ClientTransport.Posix> {
  GRPCClient(transport: try clientTransport(to: endpoint, security: security, eventLoop: eventLoop))
}

private func clientTransport(
  to endpoint: Endpoint, security: ClientSecurity, eventLoop: RPCEventLoop? = nil
) throws -> HTTP2ClientTransport.Posix {
  var config = HTTP2ClientTransport.Posix.Config.defaults
  config.backoff = .init(initial: .milliseconds(100), max: .seconds(1), multiplier: 1.6, jitter: 0.2)
  let transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity
  switch security {
  case .plaintext:
    guard TransportSecurity.plaintextAllowed(on: endpoint) else {
      throw NVMeCSIError.invalidArgument(
        "refusing to connect to \(endpoint) in plaintext: only a unix socket or a loopback address may go without TLS")
    }
    transportSecurity = .plaintext
  case .mutualTLS(let tls, let serverName):
    transportSecurity = try tls.client()
    // The name the server's certificate must carry (and the TLS SNI), whatever address
    // the server is reached at: targets are listed by IP.
    config.http2.authority = serverName
  }
  return try .http2NIOPosix(
    target: endpoint.clientTarget, transportSecurity: transportSecurity, config: config,
    eventLoopGroup: eventLoop?.group ?? .singletonMultiThreadedEventLoopGroup)
}
