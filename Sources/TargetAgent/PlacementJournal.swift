import Foundation
import NVMeCSICore
import Synchronization
import TargetContract

#if canImport(Glibc)
  import Glibc
#endif

/// The placements recorded on this target as the names' home: name → target. Kept in
/// memory; on disk an append-only journal of JSON lines, one `fdatasync` per change
/// (a batch of reservations is one change), rewritten compactly at start.
///
/// A crash can leave a last line half written: it was never acknowledged (the sync
/// comes before the answer), so loading drops it.
final class PlacementJournal: Sendable {
  let path: String
  private struct State: ~Copyable {
    var placements: [String: TargetName]
    var fd: Int32
  }
  private let state: Mutex<State>

  private struct Line: Codable {
    /// The name.
    var n: String
    /// Its target; nil: forgotten.
    var t: String?
  }

  /// Loads the journal (a missing one is empty) and rewrites it compactly.
  init(path: String) throws(NVMeCSIError) {
    self.path = path
    var placements: [String: TargetName] = [:]
    if let data = FileManager.default.contents(atPath: path) {
      for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
        guard let entry = try? JSONDecoder().decode(Line.self, from: Data(line)) else { continue }
        if let target = entry.t {
          placements[entry.n] = try TargetName(target)
        } else {
          placements[entry.n] = nil
        }
      }
    } else if FileManager.default.fileExists(atPath: path) {
      throw .internalError("placement journal \(path) cannot be read")
    }
    var compact = Data()
    for (name, target) in placements.sorted(by: { $0.key < $1.key }) {
      compact += try Self.encode(Line(n: name, t: target.value))
    }
    try DurableFile.write(compact, to: path)
    let fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
    guard fd >= 0 else { throw DurableFile.failure("cannot open", path) }
    state = Mutex(State(placements: placements, fd: fd))
  }

  deinit { state.withLock { close($0.fd) } }

  func placement(of name: String) -> TargetName? { state.withLock { $0.placements[name] } }

  var count: Int { state.withLock { $0.placements.count } }

  /// Records the names not recorded yet (one sync for all); answers what is recorded.
  func reserve(_ placements: [Placement]) throws(NVMeCSIError) -> [Placement] {
    try state.withLock { (state: inout State) throws(NVMeCSIError) in
      var lines = Data()
      var added: [String: TargetName] = [:]
      for placement in placements where state.placements[placement.name] == nil && added[placement.name] == nil {
        added[placement.name] = placement.target
        lines += try Self.encode(Line(n: placement.name, t: placement.target.value))
      }
      if !lines.isEmpty {
        try Self.append(lines, to: state.fd, path: path)
        state.placements.merge(added) { old, _ in old }
      }
      return placements.map { Placement(name: $0.name, target: state.placements[$0.name]!) }
    }
  }

  func release(_ name: String, on target: TargetName) throws(NVMeCSIError) {
    try state.withLock { (state: inout State) throws(NVMeCSIError) in
      guard state.placements[name] == target else { return }
      try Self.append(try Self.encode(Line(n: name, t: nil)), to: state.fd, path: path)
      state.placements[name] = nil
    }
  }

  private static func encode(_ line: Line) throws(NVMeCSIError) -> Data {
    do { return try JSONEncoder().encode(line) + Data([UInt8(ascii: "\n")]) } catch {
      throw .internalError("cannot encode a placement: \(error)")
    }
  }

  /// Appends whole lines or nothing: a failed append is cut off again, so the next
  /// line never joins a half-written one.
  private static func append(_ data: Data, to fd: Int32, path: String) throws(NVMeCSIError) {
    let start = lseek(fd, 0, SEEK_END)
    guard start >= 0 else { throw DurableFile.failure("cannot seek in", path) }
    var offset = 0
    while offset < data.count {
      let written = data.withUnsafeBytes { write(fd, $0.baseAddress! + offset, data.count - offset) }
      if written < 0 {
        if errno == EINTR { continue }
        let error = DurableFile.failure("cannot append to", path)
        _ = ftruncate(fd, start)
        throw error
      }
      offset += written
    }
    guard fdatasync(fd) == 0 else {
      let error = DurableFile.failure("cannot sync", path)
      _ = ftruncate(fd, start)
      throw error
    }
  }
}
