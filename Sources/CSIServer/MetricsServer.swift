import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NVMeCSICore
import ServiceLifecycle
import Synchronization

/// Serves `GET /metrics` (Prometheus text format) over plain HTTP/1.1 as a
/// ServiceLifecycle service. Everything else is 404; nothing is read from requests
/// beyond the request line.
public struct MetricsServer: Service {
  let address: HostPort
  let metrics: DriverMetrics
  let logger: Logger

  public init(address: HostPort, metrics: DriverMetrics, logger: Logger) {
    self.address = address
    self.metrics = metrics
    self.logger = logger
  }

  /// A connection that has not sent its request by then is closed; more than this many
  /// at once are refused: a stuck or hostile client holds neither shutdown nor file
  /// descriptors for long.
  static let requestTimeout: Duration = .seconds(10)
  static let maximumConnections = 32

  public func run() async throws {
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .bind(host: address.host, port: Int(address.port)) { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.configureHTTPServerPipeline()
          return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
            wrappingChannelSynchronously: channel)
        }
      }
    logger.info("serving metrics", metadata: ["address": "\(address)", "path": "/metrics"])
    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        let open = OpenConnections()
        try await server.executeThenClose { connections in
          for try await connection in connections {
            guard open.claim(upTo: Self.maximumConnections) else {
              try? await connection.channel.close()
              continue
            }
            group.addTask {
              await withTaskGroup(of: Void.self) { race in
                race.addTask { await serve(connection) }
                race.addTask {
                  try? await Task.sleep(for: Self.requestTimeout)
                  try? await connection.channel.close()
                }
                await race.next()
                race.cancelAll()
              }
              open.release()
            }
          }
        }
      }
    } onGracefulShutdown: {
      server.channel.close(promise: nil)
    }
  }

  private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>)
    async
  {
    // One request per connection ("Connection: close"): no idle connection can hold
    // up a shutdown.
    try? await connection.executeThenClose { inbound, outbound in
      for try await part in inbound {
        guard case .head(let request) = part else { continue }
        let found = request.method == .GET && request.uri.split(separator: "?").first == "/metrics"
        let body = found ? await metrics.exposition() : Array("not found: try GET /metrics\n".utf8)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: "close")
        try await outbound.write(
          .head(HTTPResponseHead(version: request.version, status: found ? .ok : .notFound, headers: headers)))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
        try await outbound.write(.end(nil))
        return
      }
    }
  }
}

/// How many connections are being served.
private final class OpenConnections: Sendable {
  private let count = Mutex(0)

  func claim(upTo limit: Int) -> Bool {
    count.withLock { count in
      guard count < limit else { return false }
      count += 1
      return true
    }
  }

  func release() { count.withLock { $0 -= 1 } }
}
