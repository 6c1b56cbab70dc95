import Logging
import Synchronization

/// Log lines kept in memory, to check that a failure the plugin works around is logged
/// with its reason.
final class CapturedLogs: Sendable {
  struct Line: Sendable {
    var level: Logger.Level
    var message: String
    var metadata: [String: String]
  }

  private let lines = Mutex<[Line]>([])

  var all: [Line] { lines.withLock { $0 } }

  /// A logger at debug level that records here.
  var logger: Logger {
    var logger = Logger(label: "test.node") { _ in Handler(logs: self) }
    logger.logLevel = .debug
    return logger
  }

  /// The lines at `level` or above whose message contains `text`.
  func lines(containing text: String, atLeast level: Logger.Level = .warning) -> [Line] {
    all.filter { $0.level >= level && $0.message.contains(text) }
  }

  fileprivate func append(_ line: Line) { lines.withLock { $0.append(line) } }

  struct Handler: LogHandler {
    let logs: CapturedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .debug

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
      get { metadata[key] }
      set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
      let merged = metadata.merging(event.metadata ?? [:]) { $1 }
      logs.append(Line(level: event.level, message: "\(event.message)", metadata: merged.mapValues { "\($0)" }))
    }
  }
}
