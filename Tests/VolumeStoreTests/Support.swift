import Foundation
import NVMeCSICore
import TestSupport
import Testing
import VolumeStore

#if canImport(Glibc)
  import Glibc
#endif

/// One `VolumeStore` implementation under test. `open` opens (creating if needed) a
/// store kept in `directory`; opening the same directory again must show the same
/// volumes and snapshots. Add an implementation to `makeStores()` and it runs the
/// whole contract suite.
struct StoreFactory: Sendable, CustomTestStringConvertible {
  let name: String
  let open: @Sendable (_ directory: String) throws -> any VolumeStore

  var testDescription: String { name }
}

func makeStores() -> [StoreFactory] {
  // LVM thin needs device-mapper: the VM harness sets this (Tests/e2e/guest.sh) and
  // runs the contract against LVM alone (the file store's run is on the host).
  if let pool = ProcessInfo.processInfo.environment["NVME_CSI_TEST_LVM_POOL"] {
    return [
      StoreFactory(name: "LVMThinStore") { directory in
        // Each test's directory names its own owner tag, so tests never see each other's LVs.
        let owner = "test-" + String(directory.split(separator: "/").dropLast().last?.suffix(12) ?? "x")
        return try LVMThinStore(spec: pool, lvm: LVMCommand(pool: .forTests), owner: owner)
      }
    ]
  }
  let fileStore = StoreFactory(name: "FileStore") { directory in
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    return try FileStore(root: directory)
  }
  // The target wraps its store in RecordCachingStore: the wrapped store keeps the contract.
  return [fileStore, StoreFactory(name: "RecordCachingStore(FileStore)") { try cached(fileStore.open($0)) }]
}

/// The store wrapped as the target wraps it, its cache filled as at the target's start.
func cached(_ store: any VolumeStore) throws -> any VolumeStore {
  let cached = RecordCachingStore(store)
  _ = try cached.volumes()
  return cached
}

/// A fresh, empty directory, removed when `body` returns.
func withTemporaryDirectory<R>(_ body: (String) throws -> R) throws -> R {
  let path = FileManager.default.temporaryDirectory.path + "/nvme-csi-store-test-" + UUID().uuidString.lowercased()
  try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  defer { try? FileManager.default.removeItem(atPath: path) }
  return try body(path)
}

/// Runs `body` against a new, empty store of `factory` in its own directory.
func withStore<R>(_ factory: StoreFactory, _ body: (any VolumeStore, String) throws -> R) throws -> R {
  try withTemporaryDirectory { directory in try body(try factory.open(directory + "/store"), directory + "/store") }
}

/// A node with this host NQN (and a fixed host ID).
func node(_ hostNQN: String) throws -> NodeID {
  NodeID(hostID: try ObjectUUID("11111111-2222-4333-8444-555555555555"), hostNQN: try HostNQN(hostNQN))
}

/// A fixed creation time with whole milliseconds, so records compare equal after a
/// round trip through storage.
let created = Date(timeIntervalSince1970: 1_700_000_000)

/// Device I/O that works on a regular file and on a block device alike.
enum Device {
  static func write(_ bytes: [UInt8], at offset: UInt64, to path: String) throws {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw DeviceError("open \(path): errno \(errno)") }
    defer { close(fd) }
    let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
    guard n == bytes.count else { throw DeviceError("write \(path): errno \(errno)") }
    guard fsync(fd) == 0 else { throw DeviceError("fsync \(path): errno \(errno)") }
  }

  static func read(_ count: Int, at offset: UInt64, from path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw DeviceError("open \(path): errno \(errno)") }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0xEE, count: count)
    let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
    guard n == count else { throw DeviceError("read \(path) at \(offset): got \(n) of \(count) bytes") }
    return buffer
  }

  /// The size of a file or block device.
  static func size(of path: String) throws -> UInt64 {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw DeviceError("open \(path): errno \(errno)") }
    defer { close(fd) }
    let end = lseek(fd, 0, SEEK_END)
    guard end >= 0 else { throw DeviceError("seek \(path): errno \(errno)") }
    return UInt64(end)
  }
}

struct DeviceError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// Recognisable, non-zero test data.
func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
  (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) ^ seed | 1 }
}

func zeros(_ count: Int) -> [UInt8] { [UInt8](repeating: 0, count: count) }
