import Foundation
import Mounting
import NVMeCSICore
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A fresh, empty directory (canonical path, no symlinks), removed with everything in it when `body` returns.
@discardableResult
func withTemporaryDirectory<R>(_ body: (String) async throws -> R) async throws -> R {
  let base = FileManager.default.temporaryDirectory.path + "/nvme-csi-mounting-test-" + UUID().uuidString.lowercased()
  try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
  defer { try? FileManager.default.removeItem(atPath: base) }
  let path = try #require(
    realpath(base, nil).map { pointer in
      defer { free(pointer) }
      return String(cString: pointer)
    })
  return try await body(path)
}

/// Creates a sparse file of `size` bytes (all zeros, nothing allocated).
func makeSparseFile(_ path: String, size: UInt64) throws {
  let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
  guard fd >= 0 else { throw TestError("create \(path): errno \(errno)") }
  defer { close(fd) }
  guard ftruncate(fd, off_t(size)) == 0 else { throw TestError("truncate \(path): errno \(errno)") }
}

func writeFile(_ path: String, _ text: String) throws {
  try text.write(toFile: path, atomically: false, encoding: .utf8)
}

struct TestError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}
