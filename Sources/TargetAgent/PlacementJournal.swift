import Foundation
import NVMeCSICore
import Synchronization
import TargetContract

#if canImport(Glibc)
  import Glibc
#endif

/// The placements recorded on this target as the names' home: name → target. Kept in
/// memory; on disk an append-only journal of JSON lines, rewritten compactly at start
/// and whenever most of its lines are superseded (create/delete churn), so its size
/// follows the live names: one rewrite per as many changes as there are names, at most.
///
/// Group commit: the changes that arrive while one append is being written and synced
/// are queued, and the next append writes them all with one `fdatasync`. So there is
/// at most one unsynced append at a time, as with one change per append, and
/// concurrent reservations do not wait for each other's syncs one by one. A change
/// answers only once its append is synced; until then a queued reservation is seen by
/// other reservations (the earlier one wins, and they wait for it too) but not by
/// `placement(of:)`.
///
/// A volume created here as its name's home needs no line: its own record says so
/// (`homeAttribute`), and it is durable before the create answers. Such placements
/// (`claim`) live in memory beside the journal's, are rebuilt from the records at
/// start, and count the same for `reserve` (an earlier record wins).
///
/// A crash can leave a last line half written: it was never acknowledged (the sync
/// comes before the answer), so loading drops it.
final class PlacementJournal: Sendable {
  let path: String
  /// The attribute of a volume record created here as its name's home, naming the
  /// home (this target, as the controller calls it): the record is the placement.
  static let homeAttribute = "placement/home"

  private struct Recorded {
    /// Name → target, from the journal's lines and (`inRecord`) from records here.
    private(set) var placements: [String: (target: TargetName, inRecord: Bool)] = [:]
    /// How many of them a record here holds.
    private(set) var inRecords = 0

    func target(of name: String) -> TargetName? { placements[name]?.target }
    func isInRecord(_ name: String) -> Bool { placements[name]?.inRecord ?? false }
    /// The placements the journal's lines hold.
    var journaled: [String: TargetName] { placements.filter { !$0.value.inRecord }.mapValues(\.target) }
    var journaledCount: Int { placements.count - inRecords }

    mutating func place(_ name: String, on target: TargetName, inRecord: Bool) {
      remove(name)
      placements[name] = (target, inRecord)
      if inRecord { inRecords += 1 }
    }

    mutating func remove(_ name: String) {
      if placements.removeValue(forKey: name)?.inRecord == true { inRecords -= 1 }
    }
  }
  /// What is recorded: read without waiting for a write in progress.
  private let recorded: Mutex<Recorded>
  /// One append of queued lines and its sync; answered to every change queued in it.
  private final class Batch: Sendable {
    let outcome = Mutex<Result<Void, NVMeCSIError>?>(nil)
  }

  /// The open journal and the changes queued for its next append. Never held across
  /// I/O but a compaction's.
  private struct Writer: ~Copyable {
    var fd: Int32
    /// Why the file can no longer be trusted (an append that could not be undone).
    var broken: String?
    /// Lines in the file, live or superseded.
    var lines: Int
    /// The lines of the next append, and its batch.
    var queued = Data()
    var queuedLines = 0
    var queuedBatch = Batch()
    /// Reservations queued or being written, not durable yet.
    var unsynced: [String: (target: TargetName, batch: Batch)] = [:]
  }
  /// Below this many lines the journal is never rewritten between starts.
  static let compactionFloor = 1024
  private let writer: Mutex<Writer>
  /// Held across one batch's append and sync: batches are written one at a time.
  private let committing = Mutex(())
  /// Called with the number of lines before each append (tests hold an append with it).
  private let beforeAppend: @Sendable (Int) -> Void

  private struct Line: Codable {
    /// The name.
    var n: String
    /// Its target; nil: forgotten.
    var t: String?
  }

  /// Loads the journal (a missing one is empty) and rewrites it compactly, and adds
  /// the placements of the volumes here created as their names' home (`placedHere`:
  /// name → home; a journal line for the name wins). A crash mid-append can leave the
  /// last line without its newline, or, when the append held several lines, NUL bytes
  /// where the kernel had not written them yet: neither was acknowledged (a sync covers
  /// everything written before it, so nothing after a hole was synced), and reading
  /// stops there. Any other unreadable line stops the target rather than forget what
  /// it acknowledged (JSON lines never hold a NUL byte).
  init(
    path: String, placedHere: [(name: String, home: TargetName)] = [],
    beforeAppend: @escaping @Sendable (Int) -> Void = { _ in }
  ) throws(NVMeCSIError) {
    self.path = path
    self.beforeAppend = beforeAppend
    var placements: [String: TargetName] = [:]
    if let data = FileManager.default.contents(atPath: path) {
      let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
      for (index, line) in lines.enumerated() where !line.isEmpty {
        // A record names a valid target; a release names none.
        guard let entry = try? JSONDecoder().decode(Line.self, from: Data(line)),
          entry.t == nil || (try? TargetName(entry.t!)) != nil
        else {
          if index == lines.count - 1 || line.contains(0) { break }  // never acknowledged
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
    var recorded = Recorded()
    for (name, target) in placements { recorded.place(name, on: target, inRecord: false) }
    for (name, home) in placedHere where recorded.target(of: name) == nil {
      recorded.place(name, on: home, inRecord: true)
    }
    self.recorded = Mutex(recorded)
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

  func placement(of name: String) -> TargetName? { recorded.withLock { $0.target(of: name) } }

  var count: Int { recorded.withLock { $0.placements.count } }

  /// Changes queued for the next append.
  var queuedChanges: Int { writer.withLock { $0.queuedLines } }

  /// For a create here as the name's `home`, whose record will say so: places the name
  /// here unless it is recorded (or queued) already; answers where it is placed.
  /// Nothing is written: the volume's record is the placement. `unclaim` if no volume
  /// came of it.
  func claim(_ name: String, for home: TargetName) -> TargetName {
    writer.withLock { writer in
      if let queued = writer.unsynced[name] { return queued.target }
      return recorded.withLock { recorded in
        if let placed = recorded.target(of: name) { return placed }
        recorded.place(name, on: home, inRecord: true)
        return home
      }
    }
  }

  /// Takes back a `claim` whose create made no volume.
  func unclaim(_ name: String, for home: TargetName) {
    writer.withLock { _ in
      recorded.withLock { recorded in
        guard recorded.isInRecord(name), recorded.target(of: name) == home else { return }
        recorded.remove(name)
      }
    }
  }

  /// Records the names not recorded yet (one append, synced, for all); answers what is
  /// recorded, once it is durable.
  func reserve(_ requested: [Placement]) throws(NVMeCSIError) -> [Placement] {
    let (answers, waits) = try writer.withLock {
      (writer: inout Writer) throws(NVMeCSIError) -> ([Placement], [ObjectIdentifier: Batch]) in
      if let broken = writer.broken { throw unusable(broken) }
      var answers: [Placement] = []
      var waits: [ObjectIdentifier: Batch] = [:]
      let durable = recorded.withLock { current in requested.map { current.target(of: $0.name) } }
      for (placement, durable) in zip(requested, durable) {
        if let durable {
          answers.append(Placement(name: placement.name, target: durable))
        } else if let queued = writer.unsynced[placement.name] {
          // Queued by this or another reservation: it wins, once its batch is synced.
          answers.append(Placement(name: placement.name, target: queued.target))
          waits[ObjectIdentifier(queued.batch)] = queued.batch
        } else {
          writer.queued += try Self.encode(Line(n: placement.name, t: placement.target.value))
          writer.queuedLines += 1
          writer.unsynced[placement.name] = (placement.target, writer.queuedBatch)
          answers.append(placement)
          waits[ObjectIdentifier(writer.queuedBatch)] = writer.queuedBatch
        }
      }
      return (answers, waits)
    }
    for batch in waits.values { try commit(batch) }
    return answers
  }

  /// Returns once `batch` is written and synced (or throws why it is not). The first
  /// caller to find it unwritten writes it, with every change queued by then.
  private func commit(_ batch: Batch) throws(NVMeCSIError) {
    try committing.withLock { _ throws(NVMeCSIError) in
      if let outcome = batch.outcome.withLock({ $0 }) { return try outcome.get() }
      // Unwritten, so it is the queued batch (one is taken only to be written here).
      let (lines, count, fd, broken) = writer.withLock { writer in
        defer {
          writer.queued = Data()
          writer.queuedLines = 0
          writer.queuedBatch = Batch()
        }
        return (writer.queued, writer.queuedLines, writer.fd, writer.broken)
      }
      var outcome: Result<Void, NVMeCSIError> = .success(())
      var unrecoverable: String?
      if let broken {
        outcome = .failure(unusable(broken))
      } else {
        beforeAppend(count)
        if let failure = Self.appendDurably(lines, to: fd, path: path) {
          outcome = .failure(failure.error)
          unrecoverable = failure.unrecoverable
        }
      }
      writer.withLock { writer in
        if let unrecoverable { writer.broken = unrecoverable }
        let written = writer.unsynced.filter { $0.value.batch === batch }
        for name in written.keys { writer.unsynced[name] = nil }
        guard case .success = outcome else { return }
        recorded.withLock { recorded in
          for (name, queued) in written where recorded.target(of: name) == nil {
            recorded.place(name, on: queued.target, inRecord: false)
          }
        }
        writer.lines += count
        compactIfMostlySuperseded(&writer)
      }
      batch.outcome.withLock { $0 = outcome }
      try outcome.get()
    }
  }

  /// Forgets the name's placement if it names `target`: a journal line for it is
  /// superseded by a release line; one held by a record here (deleted by now) just goes.
  /// A line's release is forgotten in memory at once (a crash before its sync only
  /// leaves the name pointing at `target` again: the safe side) and answered once synced.
  func release(_ name: String, on target: TargetName) throws(NVMeCSIError) {
    let line = try Self.encode(Line(n: name, t: nil))
    let batch = try writer.withLock { (writer: inout Writer) throws(NVMeCSIError) -> Batch? in
      let (placed, inRecord) = recorded.withLock { ($0.target(of: name), $0.isInRecord(name)) }
      guard placed == target else { return nil }
      if inRecord {
        recorded.withLock { $0.remove(name) }
        return nil
      }
      if let broken = writer.broken { throw unusable(broken) }
      writer.queued += line
      writer.queuedLines += 1
      recorded.withLock { $0.remove(name) }
      return writer.queuedBatch
    }
    if let batch { try commit(batch) }
  }

  /// Rewrites the journal with the live placements once more than half its lines are
  /// superseded. The change that triggers it is durable already, so a failure here
  /// costs nothing but the space: appends go on to whichever file is at `path`.
  private func compactIfMostlySuperseded(_ writer: inout Writer) {
    let lines = recorded.withLock { $0.journaledCount }
    guard writer.broken == nil, writer.lines > max(Self.compactionFloor, 2 * lines) else { return }
    let live = recorded.withLock { $0.journaled }
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

  private func unusable(_ broken: String) -> NVMeCSIError {
    .unavailable("placement journal \(path) takes no changes until the target restarts: \(broken)")
  }

  /// Appends whole lines and syncs them, or appends nothing: a failed append is cut off
  /// again, so the next line never joins a half-written one. When even that fails
  /// (`unrecoverable`), the journal takes no more changes until the target restarts
  /// (and re-reads what is really there).
  private static func appendDurably(_ data: Data, to fd: Int32, path: String) -> (
    error: NVMeCSIError, unrecoverable: String?
  )? {
    let start = lseek(fd, 0, SEEK_END)
    guard start >= 0 else { return (DurableFile.failure("cannot seek in", path), nil) }
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
    guard let failure else { return nil }
    guard ftruncate(fd, start) == 0, fdatasync(fd) == 0 else {
      return (failure, "an append failed (\(failure.message)) and could not be undone")
    }
    return (failure, nil)
  }
}
