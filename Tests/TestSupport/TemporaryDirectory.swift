import Foundation

/// A fresh directory under the system's temporary directory, removed with everything in
/// it when `body` returns.
public func withTemporaryDirectory<R>(_ body: (String) async throws -> R) async throws -> R {
  let path = FileManager.default.temporaryDirectory.path + "/nvme-csi-test-" + UUID().uuidString.lowercased()
  try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  defer { try? FileManager.default.removeItem(atPath: path) }
  return try await body(path)
}
