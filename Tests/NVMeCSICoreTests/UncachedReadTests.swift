import Foundation
import NVMeCSICore
import TestSupport
import Testing

@Suite("Uncached reads")
struct UncachedReadTests {
  func withFile<R>(_ bytes: [UInt8], _ body: (String) throws -> R) throws -> R {
    let path = FileManager.default.temporaryDirectory.path + "/nvme-csi-uncached-" + UUID().uuidString
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
  }

  @Test("Reads the bytes at an aligned offset, fewer where the file ends")
  func readsBytes() throws {
    let content = (0..<3 * 4096).map { UInt8(truncatingIfNeeded: $0 &* 7) }
    try withFile(content) { (path) throws in
      #expect(try UncachedRead.bytes(at: 4096, count: 4096, from: path) == Array(content[4096..<8192]))
      #expect(try UncachedRead.bytes(at: 8192, count: 8192, from: path) == Array(content[8192...]))
      #expect(try UncachedRead.bytes(at: 3 * 4096, count: 4096, from: path).isEmpty)
    }
  }

  @Test("Unaligned requests and missing files are errors naming the path")
  func errors() throws {
    try withFile([UInt8](repeating: 1, count: 8192)) { path in
      expectError(.internalError, mentioning: ["4096"]) { try UncachedRead.bytes(at: 100, count: 4096, from: path) }
      expectError(.internalError, mentioning: ["4096"]) { try UncachedRead.bytes(at: 0, count: 100, from: path) }
    }
    let error = expectError(.internalError, mentioning: ["/nonexistent/x"]) {
      try UncachedRead.bytes(at: 0, count: 4096, from: "/nonexistent/x")
    }
    #expect(error?.cause == .noEntry)
  }
}
