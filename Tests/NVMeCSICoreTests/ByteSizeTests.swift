import NVMeCSICore
import TestSupport
import Testing

@Suite("Human sizes")
struct ByteSizeTests {
  static let parsed: [(String, UInt64)] = [
    ("0", 0), ("1073741824", 1 << 30), ("1Ki", 1024), ("512Mi", 512 << 20), ("10Gi", 10 << 30),
    ("1Ti", 1 << 40), ("1K", 1_000), ("1M", 1_000_000), ("1G", 1_000_000_000), ("2T", 2_000_000_000_000),
    ("16777215Ti", 16_777_215 << 40),
  ]

  @Test("Sizes with binary or decimal units parse", arguments: parsed)
  func parses(_ text: String, _ bytes: UInt64) throws {
    #expect(try ByteSize.parse(text) == bytes)
  }

  @Test(
    "Anything else is an invalid argument quoting the input",
    arguments: [
      "", "Gi", "1.5Gi", "-1", "10GB", "10 Gi", "10gi", "ten", "1Pi", "0x10", "Mi10",
      "18446744073709551616", "16777216Ti", "20000000000000000G",
    ])
  func rejects(_ text: String) {
    expectError(.invalidArgument, mentioning: [quoted(text)]) { try ByteSize.parse(text) }
  }

  static let formatted: [(UInt64, String)] = [
    (0, "0 B"), (100, "100 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
    (512 << 20, "512 MiB"), (3 << 29, "1.5 GiB"), (10 << 30, "10 GiB"), (1 << 40, "1 TiB"),
    (1 << 50, "1 PiB"), (1 << 60, "1024 PiB"),
  ]

  @Test("Sizes format with binary units and at most one decimal", arguments: formatted)
  func formats(_ bytes: UInt64, _ text: String) {
    #expect(ByteSize.format(bytes) == text)
  }

  @Test("A size just below a unit boundary rounds into the next unit")
  func roundsIntoNextUnit() {
    #expect(ByteSize.format((1 << 20) - 1) == "1 MiB")
  }
}
