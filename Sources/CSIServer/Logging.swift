import Foundation
import Logging

#if canImport(Glibc)
  import Glibc
#endif

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

/// One JSON object per line, on stderr unless told otherwise. A line costs one
/// dictionary and one serialization: the time is formatted by hand from `gmtime_r`, so
/// no date formatter is made (or shared between threads) per line.
public struct JSONLogHandler: LogHandler {
  public var metadata: Logger.Metadata = [:]
  public var logLevel: Logger.Level = .info
  let label: String
  let output: @Sendable (Data) -> Void

  public init(label: String, output: @escaping @Sendable (Data) -> Void = { FileHandle.standardError.write($0) }) {
    self.label = label
    self.output = output
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  public func log(event: LogEvent) {
    var object: [String: String] = [
      "time": Self.timestamp(secondsSinceEpoch: time(nil)),
      "level": event.level.rawValue,
      "logger": label,
      "msg": "\(event.message)",
    ]
    for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
      object[key] = "\(value)"
    }
    // A dictionary of strings always serializes; there is nowhere to report it if not.
    guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
    data.append(0x0a)
    output(data)
  }

  /// RFC 3339 in UTC to the second, "2024-05-01T12:34:56Z" (what ISO8601DateFormatter
  /// wrote before). A time gmtime_r cannot break down (a year beyond Int32) is written
  /// as seconds since the epoch.
  static func timestamp(secondsSinceEpoch: time_t) -> String {
    var seconds = secondsSinceEpoch
    var parts = tm()
    guard gmtime_r(&seconds, &parts) != nil else { return String(secondsSinceEpoch) }
    func padded(_ value: Int32, _ width: Int) -> String {
      let digits = String(value)
      return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
    let date = "\(padded(parts.tm_year + 1900, 4))-\(padded(parts.tm_mon + 1, 2))-\(padded(parts.tm_mday, 2))"
    return "\(date)T\(padded(parts.tm_hour, 2)):\(padded(parts.tm_min, 2)):\(padded(parts.tm_sec, 2))Z"
  }
}
