import Foundation
import Logging
import Synchronization
import Testing

@testable import CSIServer

/// The node's (and every service's) `--log-format json` lines.
@Suite("JSON log lines")
struct JSONLogHandlerTests {
  /// Collects what the handler writes instead of sending it to stderr.
  final class Lines: Sendable {
    private let written = Mutex<[Data]>([])
    func append(_ data: Data) { written.withLock { $0.append(data) } }
    var all: [Data] { written.withLock { $0 } }
  }

  static func logger(into lines: Lines) -> Logger {
    Logger(label: "nvme-csi.test") { label in JSONLogHandler(label: label, output: { lines.append($0) }) }
  }

  @Test("A line is one JSON object with an RFC 3339 UTC time of now, the level, the logger, the message and metadata")
  func lineShape() throws {
    let lines = Lines()
    var logger = Self.logger(into: lines)
    logger[metadataKey: "request"] = "r-1"
    // The handler reads time(), the kernel's coarse clock, which may lag Date() by a tick.
    let before = Date().timeIntervalSince1970.rounded(.down) - 1
    logger.info("volume staged", metadata: ["volume": "v1.a.b"])
    let after = Date().timeIntervalSince1970.rounded(.up)

    let data = try #require(lines.all.first)
    #expect(lines.all.count == 1)
    #expect(data.last == 0x0a, "each object ends its line")
    #expect(!data.dropLast().contains(0x0a), "one object, one line")
    let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: String])
    #expect(object["level"] == "info")
    #expect(object["logger"] == "nvme-csi.test")
    #expect(object["msg"] == "volume staged")
    #expect(object["volume"] == "v1.a.b")
    #expect(object["request"] == "r-1")

    let time = try #require(object["time"])
    #expect(time.count == 20 && time.hasSuffix("Z"), "\(time) is yyyy-MM-ddTHH:mm:ssZ")
    let parsed = try #require(ISO8601DateFormatter().date(from: time), "\(time) parses as ISO 8601")
    #expect((before...after).contains(parsed.timeIntervalSince1970), "\(time) is the time of logging")
  }

  @Test(
    "Times format as RFC 3339 UTC, zero-padded, across leap days and far years",
    arguments: [
      (0, "1970-01-01T00:00:00Z"),
      (951_782_400, "2000-02-29T00:00:00Z"),
      (1_709_251_199, "2024-02-29T23:59:59Z"),
      (1_234_567_890, "2009-02-13T23:31:30Z"),
      (-1, "1969-12-31T23:59:59Z"),
      (253_402_300_799, "9999-12-31T23:59:59Z"),
    ])
  func timestamps(seconds: Int, expected: String) {
    #expect(JSONLogHandler.timestamp(secondsSinceEpoch: seconds) == expected)
  }

  @Test("The hand-written time matches Foundation's formatter over many instants")
  func matchesFoundation() {
    let formatter = ISO8601DateFormatter()
    var seconds = -86_400 * 365
    while seconds < 4_102_444_800 {  // 2100
      let expected = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
      #expect(JSONLogHandler.timestamp(secondsSinceEpoch: seconds) == expected)
      seconds += 7_777_777
    }
  }
}
