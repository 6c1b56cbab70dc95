import Foundation
import NVMeCSICore
import NVMetExporter
import TestSupport
import Testing

/// A fresh, empty directory standing in for the configfs mount point, removed afterwards.
func withConfigfsDirectory<R>(_ body: (String) throws -> R) throws -> R {
  let path = FileManager.default.temporaryDirectory.path + "/nvme-csi-nvmet-test-" + UUID().uuidString.lowercased()
  try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  defer { try? FileManager.default.removeItem(atPath: path) }
  return try body(path)
}

/// Reads the nvmet tree the way an administrator would look at it.
struct Inspector {
  let root: String

  func attribute(_ path: String) -> String? {
    guard let data = FileManager.default.contents(atPath: root + "/" + path) else { return nil }
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
  }

  func entries(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: root + "/" + path)) ?? []).sorted()
  }

  /// Where the symlink at `path` points, relative to the root (nil if not a link).
  func linkTarget(_ path: String) -> String? {
    guard let destination = try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + path) else {
      return nil
    }
    return destination.hasPrefix(root + "/") ? String(destination.dropFirst(root.count + 1)) : destination
  }

  func isDirectory(_ path: String) -> Bool {
    var isDirectory: ObjCBool = false
    return FileManager.default.fileExists(atPath: root + "/" + path, isDirectory: &isDirectory) && isDirectory.boolValue
  }

  func exists(_ path: String) -> Bool {
    (try? FileManager.default.attributesOfItem(atPath: root + "/" + path)) != nil
  }
}

/// A configfs tree that records every change it makes, to prove that converging an
/// already converged export changes nothing.
final class RecordingConfigfs: ConfigfsTree, @unchecked Sendable {
  let inner: DirectoryConfigfs
  private let lock = NSLock()
  private var _changes: [String] = []

  init(root: String) { inner = DirectoryConfigfs(root: root) }

  var root: String { inner.root }
  var changes: [String] { lock.withLock { _changes } }
  func reset() { lock.withLock { _changes = [] } }
  private func note(_ change: String) { lock.withLock { _changes.append(change) } }

  func makeDirectory(_ path: String) throws(NVMeCSIError) -> Bool {
    let created = try inner.makeDirectory(path)
    if created { note("mkdir \(path)") }
    return created
  }
  func read(_ path: String) -> String? { inner.read(path) }
  func write(_ path: String, _ value: String) throws(NVMeCSIError) {
    note("write \(path) = \(value)")
    try inner.write(path, value)
  }
  func link(_ path: String, to target: String) throws(NVMeCSIError) {
    if !inner.exists(path) { note("link \(path)") }
    try inner.link(path, to: target)
  }
  func removeLink(_ path: String) throws(NVMeCSIError) {
    if inner.exists(path) { note("unlink \(path)") }
    try inner.removeLink(path)
  }
  func removeDirectory(_ path: String) throws(NVMeCSIError) {
    if inner.exists(path) { note("rmdir \(path)") }
    try inner.removeDirectory(path)
  }
  func list(_ path: String) -> [String] { inner.list(path) }
  func exists(_ path: String) -> Bool { inner.exists(path) }
}

enum Hosts {
  static let a = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-0000-4000-8000-000000000001"
  static let b = "nqn.2014-08.org.nvmexpress:uuid:bbbbbbbb-0000-4000-8000-000000000002"
  static let c = "nqn.2014-08.org.nvmexpress:uuid:cccccccc-0000-4000-8000-000000000003"
}

let twoPortals = [HostPort(host: "10.0.0.1", port: 4420), HostPort(host: "fd00::1", port: 4420)]

/// A tree where another target wins the race for the first port: it creates that port
/// (with its own portal) just before this process's mkdir of it.
final class RacingConfigfs: ConfigfsTree, @unchecked Sendable {
  let inner: DirectoryConfigfs
  let rivalPortal: HostPort
  private let raced = NSLock()
  private var done = false

  init(root: String, rivalPortal: HostPort) {
    inner = DirectoryConfigfs(root: root)
    self.rivalPortal = rivalPortal
  }

  var root: String { inner.root }

  func makeDirectory(_ path: String) throws(NVMeCSIError) -> Bool {
    let rivalFirst = raced.withLock { () -> Bool in
      defer { done = true }
      return !done && path.hasPrefix("ports/")
    }
    if rivalFirst {
      _ = try inner.makeDirectory(path)
      try inner.write(path + "/addr_trtype", "tcp")
      try inner.write(path + "/addr_traddr", rivalPortal.host)
      try inner.write(path + "/addr_trsvcid", String(rivalPortal.port))
    }
    return try inner.makeDirectory(path)
  }
  func read(_ path: String) -> String? { inner.read(path) }
  func write(_ path: String, _ value: String) throws(NVMeCSIError) { try inner.write(path, value) }
  func link(_ path: String, to target: String) throws(NVMeCSIError) { try inner.link(path, to: target) }
  func removeLink(_ path: String) throws(NVMeCSIError) { try inner.removeLink(path) }
  func removeDirectory(_ path: String) throws(NVMeCSIError) { try inner.removeDirectory(path) }
  func list(_ path: String) -> [String] { inner.list(path) }
  func exists(_ path: String) -> Bool { inner.exists(path) }
}
