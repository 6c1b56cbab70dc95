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

  @Test("An uncached write lands at its aligned offset and leaves the rest; unaligned ones and missing files fail")
  func writes() throws {
    let content = [UInt8](repeating: 1, count: 3 * 4096)
    try withFile(content) { (path) throws in
      let block = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 3) }
      try UncachedWrite.bytes(block, at: 4096, to: path)
      #expect(try UncachedRead.bytes(at: 0, count: 3 * 4096, from: path) == content[..<4096] + block + content[8192...])
      expectError(.internalError, mentioning: ["4096"]) { try UncachedWrite.bytes(block, at: 100, to: path) }
      expectError(.internalError, mentioning: ["4096"]) { try UncachedWrite.bytes([1, 2], at: 0, to: path) }
    }
    let error = expectError(.internalError, mentioning: ["/nonexistent/x"]) {
      try UncachedWrite.bytes([UInt8](repeating: 0, count: 4096), at: 0, to: "/nonexistent/x")
    }
    #expect(error?.cause == .noEntry)
  }
}
