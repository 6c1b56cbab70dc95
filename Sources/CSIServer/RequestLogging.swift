import Foundation
import GRPCCore
import Logging
import NVMeCSICore

/// Logs every RPC once (method, request ID, status, duration) and makes sure no error
/// leaves a service as `unknown`: errors that are neither an `RPCError` nor a domain
/// error become `internal` with their description.
///
/// Request and response bodies are never logged: they may carry `csi_secret` fields.
///
/// With `metrics`, every RPC is also counted there (by status code) and timed.
public struct RequestLoggingInterceptor: ServerInterceptor {
  let logger: Logger
  let metrics: DriverMetrics?

  public init(logger: Logger, metrics: DriverMetrics? = nil) {
    self.logger = logger
    self.metrics = metrics
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    var logger = self.logger
    logger[metadataKey: "rpc"] = "\(context.descriptor.method)"
    let requestID =
      request.metadata[stringValues: "x-request-id"].first(where: { _ in true })
      ?? String(UUID().uuidString.prefix(8)).lowercased()
    logger[metadataKey: "request_id"] = "\(requestID)"
    let start = ContinuousClock.now
    do {
      let response = try await next(request, context)
      if case .failure(let error) = response.accepted {
        log(logger, code: error.code, message: error.message, since: start)
        count(context, error.code, since: start)
      } else {
        logger.debug("ok", metadata: ["ms": "\(milliseconds(since: start))"])
        count(context, nil, since: start)
      }
      return response
    } catch let error as RPCError {
      log(logger, code: error.code, message: error.message, since: start)
      count(context, error.code, since: start)
      throw error
    } catch let error as any RPCErrorConvertible {
      log(logger, code: error.rpcErrorCode, message: error.rpcErrorMessage, since: start)
      count(context, error.rpcErrorCode, since: start)
      throw RPCError(code: error.rpcErrorCode, message: error.rpcErrorMessage)
    } catch {
      let mapped = RPCError(code: .internalError, message: "internal error: \(error)")
      log(logger, code: mapped.code, message: mapped.message, since: start)
      count(context, mapped.code, since: start)
      throw mapped
    }
  }

  /// `code` nil: OK. A streamed response's status is counted when it is accepted.
  private func count(_ context: ServerContext, _ code: RPCError.Code?, since start: ContinuousClock.Instant) {
    metrics?.recordRPC(
      service: context.descriptor.service.fullyQualifiedService, method: context.descriptor.method,
      code: code.map { "\($0)" } ?? "ok", duration: ContinuousClock.now - start)
  }

  private func log(_ logger: Logger, code: RPCError.Code, message: String, since start: ContinuousClock.Instant) {
    let level: Logger.Level = code == .internalError || code == .unknown ? .error : .info
    logger.log(level: level, "\(code): \(message)", metadata: ["ms": "\(milliseconds(since: start))"])
  }

  private func milliseconds(since start: ContinuousClock.Instant) -> Int64 {
    let d = ContinuousClock.now - start
    return d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
  }
}
