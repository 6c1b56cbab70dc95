import Foundation
import NVMeCSICore
import Synchronization
import TargetContract

#if canImport(Glibc)
  import Glibc
#endif

/// The placements recorded on this target as the names' home: name → target. Kept in
/// memory; on disk an append-only journal of JSON lines, one `fdatasync` per change
/// (a batch of reservations is one change), rewritten compactly at start and whenever
/// most of its lines are superseded (create/delete churn), so its size follows the
/// live names: one rewrite per as many changes as there are names, at most.
///
/// A crash can leave a last line half written: it was never acknowledged (the sync
/// comes before the answer), so loading drops it.
final class PlacementJournal: Sendable {
  let path: String
  /// What is recorded: read without waiting for a write in progress.
  private let placements: Mutex<[String: TargetName]>
  /// The open journal, held across a write and its sync (writers take turns).
  private struct Writer: ~Copyable {
    var fd: Int32
    /// Why the file can no longer be trusted (an append that could not be undone).
    var broken: String?
    /// Lines in the file, live or superseded.
    var lines: Int
  }
  /// Below this many lines the journal is never rewritten between starts.
  static let compactionFloor = 1024
  private let writer: Mutex<Writer>

  private struct Line: Codable {
    /// The name.
    var n: String
    /// Its target; nil: forgotten.
    var t: String?
  }

  /// Loads the journal (a missing one is empty) and rewrites it compactly. Only a
  /// last line without its newline may be unreadable (a crash mid-append); any other
  /// unreadable line stops the target rather than forget what it acknowledged.
  init(path: String) throws(NVMeCSIError) {
    self.path = path
    var placements: [String: TargetName] = [:]
    if let data = FileManager.default.contents(atPath: path) {
      let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
      for (index, line) in lines.enumerated() where !line.isEmpty {
        // A record names a valid target; a release names none.
        guard let entry = try? JSONDecoder().decode(Line.self, from: Data(line)),
          entry.t == nil || (try? TargetName(entry.t!)) != nil
        else {
          if index == lines.count - 1 { break }  // unterminated: never acknowledged
          throw .failedPrecondition(
            "placement journal \(path) line \(index + 1) is unreadable: refusing to start rather than forget where"
              + " volume names live; restore the file from a backup, or move it aside to have the controller"
              + " re-index")
        }
        placements[entry.n] = try entry.t.map { (t) throws(NVMeCSIError) in try TargetName(t) }
      }
    } else if FileManager.default.fileExists(atPath: path) {
      throw .internalError("placement journal \(path) cannot be read")
    }
    try DurableFile.write(try Self.compact(placements), to: path)
    let fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
    guard fd >= 0 else { throw DurableFile.failure("cannot open", path) }
    self.placements = Mutex(placements)
    self.writer = Mutex(Writer(fd: fd, broken: nil, lines: placements.count))
  }

  private static func compact(_ placements: [String: TargetName]) throws(NVMeCSIError) -> Data {
    var data = Data()
    for (name, target) in placements.sorted(by: { $0.key < $1.key }) {
      data += try encode(Line(n: name, t: target.value))
    }
    return data
  }

  deinit { writer.withLock { close($0.fd) } }

  func placement(of name: String) -> TargetName? { placements.withLock { $0[name] } }

  var count: Int { placements.withLock { $0.count } }

  /// Records the names not recorded yet (one sync for all); answers what is recorded.
  func reserve(_ requested: [Placement]) throws(NVMeCSIError) -> [Placement] {
    try writer.withLock { (writer: inout Writer) throws(NVMeCSIError) in
      var lines = Data()
      var added: [String: TargetName] = [:]
      let recorded = placements.withLock { current in requested.map { current[$0.name] } }
      for (placement, existing) in zip(requested, recorded) where existing == nil && added[placement.name] == nil {
        added[placement.name] = placement.target
        lines += try Self.encode(Line(n: placement.name, t: placement.target.value))
      }
      if !lines.isEmpty {
        try append(lines, with: &writer)
        placements.withLock { $0.merge(added) { old, _ in old } }
        writer.lines += added.count
        compactIfMostlySuperseded(&writer)
      }
      return zip(requested, recorded).map { placement, existing in
        Placement(name: placement.name, target: existing ?? added[placement.name] ?? placement.target)
      }
    }
  }

  func release(_ name: String, on target: TargetName) throws(NVMeCSIError) {
    try writer.withLock { (writer: inout Writer) throws(NVMeCSIError) in
      guard placements.withLock({ $0[name] }) == target else { return }
      try append(try Self.encode(Line(n: name, t: nil)), with: &writer)
      _ = placements.withLock { $0.removeValue(forKey: name) }
      writer.lines += 1
      compactIfMostlySuperseded(&writer)
    }
  }

  /// Rewrites the journal with the live placements once more than half its lines are
  /// superseded. The change that triggers it is durable already, so a failure here
  /// costs nothing but the space: appends go on to whichever file is at `path`.
  private func compactIfMostlySuperseded(_ writer: inout Writer) {
    let live = placements.withLock { $0 }
    guard writer.broken == nil, writer.lines > max(Self.compactionFloor, 2 * live.count) else { return }
    let rewritten = (try? DurableFile.write(try Self.compact(live), to: path)) != nil
    // The rename may have happened even when a later step failed: appends must go to
    // the file at `path`, never to the one it replaced.
    var named = stat()
    var appending = stat()
    guard stat(path, &named) == 0, fstat(writer.fd, &appending) == 0 else {
      writer.broken = "cannot tell which file the journal is after compacting it (\(Errno.current))"
      return
    }
    let replaced = named.st_ino != appending.st_ino || named.st_dev != appending.st_dev
    if replaced {
      let fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
      guard fd >= 0 else {
        writer.broken = "cannot reopen the journal after compacting it (\(Errno.current))"
        return
      }
      close(writer.fd)
      writer.fd = fd
    }
    if rewritten || replaced { writer.lines = live.count }
  }

  private static func encode(_ line: Line) throws(NVMeCSIError) -> Data {
    do { return try JSONEncoder().encode(line) + Data([UInt8(ascii: "\n")]) } catch {
      throw .internalError("cannot encode a placement: \(error)")
    }
  }

  /// Appends whole lines or nothing: a failed append is cut off again, so the next
  /// line never joins a half-written one. When even that fails, the journal takes no
  /// more changes until the target restarts (and re-reads what is really there).
  private func append(_ data: Data, with writer: inout Writer) throws(NVMeCSIError) {
    if let broken = writer.broken {
      throw .unavailable("placement journal \(path) takes no changes until the target restarts: \(broken)")
    }
    let fd = writer.fd
    let start = lseek(fd, 0, SEEK_END)
    guard start >= 0 else { throw DurableFile.failure("cannot seek in", path) }
    var offset = 0
    var failure: NVMeCSIError?
    while offset < data.count {
      let written = data.withUnsafeBytes { write(fd, $0.baseAddress! + offset, data.count - offset) }
      if written < 0 {
        if errno == EINTR { continue }
        failure = DurableFile.failure("cannot append to", path)
        break
      }
      offset += written
    }
    if failure == nil, fdatasync(fd) != 0 { failure = DurableFile.failure("cannot sync", path) }
    guard let failure else { return }
    if ftruncate(fd, start) != 0 || fdatasync(fd) != 0 {
      writer.broken = "an append failed (\(failure.message)) and could not be undone"
    }
    throw failure
  }
}
