import CSIProto
import CSIServer
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NVMeCSICore
import ServiceLifecycle

/// Serves CSI services on a real unix socket (plus any `alongside` services, such as
/// target clients), waits (bounded) until Identity answers there, runs `body` with a
/// client connected to the socket, and shuts everything down afterwards. Connections
/// and handlers run on one event loop, as `nvme-csi controller` runs them.
public func withServedPlugin(
  socket: String, services: [any RegistrableRPCService], alongside: [any Service] = [], logger: Logger,
  _ body: (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> Void
) async throws {
  try await RPCEventLoop.with { eventLoop in
    let server = try GRPCService(
      endpoint: .unix(path: socket), services: services, eventLoop: eventLoop, logger: logger)
    let client = try makeClient(to: .unix(path: socket), eventLoop: eventLoop)
    let group = ServiceGroup(
      services: alongside + [server, GRPCClientService(client, eventLoop: eventLoop)], gracefulShutdownSignals: [],
      logger: logger)
    try await withThrowingTaskGroup(of: Void.self) { tasks in
      tasks.addTask { try await group.run() }
      do {
        try await waitUntilServing(socket: socket, identity: .init(wrapping: client))
        try await body(client)
      } catch {
        await group.triggerGracefulShutdown()
        throw error
      }
      await group.triggerGracefulShutdown()
      try await tasks.waitForAll()
    }
  }
}

private func waitUntilServing(socket: String, identity: Csi_V1_Identity.Client<HTTP2ClientTransport.Posix>) async throws
{
  let deadline = ContinuousClock.now + .seconds(20)
  while ContinuousClock.now < deadline {
    if FileManager.default.fileExists(atPath: socket), (try? await identity.probe(.init())) != nil { return }
    try await Task.sleep(for: .milliseconds(20))
  }
  throw NotServing(socket: socket)
}

struct NotServing: Error, CustomStringConvertible {
  let socket: String
  var description: String { "no plugin answered on \(socket) within 20 s" }
}
