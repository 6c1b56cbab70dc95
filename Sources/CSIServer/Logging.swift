import Foundation
import Logging

/// How log lines look: `text` for people, `json` for log pipelines.
public enum LogFormat: String, Sendable, CaseIterable {
  case text, json
}

/// Builds the process's root logger. No global bootstrap: loggers are passed down.
public func makeLogger(label: String, level: Logger.Level, format: LogFormat) -> Logger {
  var logger = Logger(label: label) { label in
    switch format {
    case .text: StreamLogHandler.standardError(label: label)
    case .json: JSONLogHandler(label: label)
    }
  }
  logger.logLevel = level
  return logger
}

/// One JSON object per line on stderr.
public struct JSONLogHandler: LogHandler {
  public var metadata: Logger.Metadata = [:]
  public var logLevel: Logger.Level = .info
  let label: String

  public init(label: String) { self.label = label }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  public func log(event: LogEvent) {
    var object: [String: String] = [
      "time": ISO8601DateFormatter().string(from: Date()),
      "level": event.level.rawValue,
      "logger": label,
      "msg": "\(event.message)",
    ]
    for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
      object[key] = "\(value)"
    }
    guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
    data.append(0x0a)
    FileHandle.standardError.write(data)
  }
}
