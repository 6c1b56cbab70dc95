import Dispatch
import Foundation
import NVMeCSICore
import Synchronization
import TargetContract
import TestSupport
import Testing

@testable import TargetAgent

/// The placement journal's group commit: reservations that arrive while an append is
/// being written share the next append and its sync, and answer only once it is durable.
@Suite("Placement journal: group commit")
struct GroupCommitTests {
  let a = try! TargetName("store-a")
  let b = try! TargetName("store-b")

  @Test("nine reservations made while the first append is held go to disk in one more append, all durable")
  func reservationsShareAnAppend() async throws {
    try await withTemporaryDirectory { directory in
      let path = directory + "/placements.journal"
      let gate = DispatchSemaphore(value: 0)
      let appends = Mutex<[Int]>([])  // lines per append
      let journal = try PlacementJournal(
        path: path,
        beforeAppend: { lines in
          let first = appends.withLock { appends in
            appends.append(lines)
            return appends.count == 1
          }
          if first { gate.wait() }
        })
      let answers = Mutex<[String: TargetName]>([:])
      let finished = DispatchSemaphore(value: 0)
      // Threads of their own: each blocks in `reserve`, as the target's pool threads do.
      func reserve(_ n: Int) {
        Thread {
          let name = "pvc-\(n)"
          // The same name twice: the earlier reservation wins, and both wait for it.
          let placed = try? journal.reserve([Placement(name: name, target: a), Placement(name: name, target: b)])
          answers.withLock { $0[name] = placed?.allSatisfy { $0.target == a } == true ? a : nil }
          finished.signal()
        }.start()
      }
      defer { gate.signal() }  // whatever happens, no thread stays held
      reserve(0)
      #expect(try await eventually { appends.withLock { $0 } == [1] }, "the first append is held")
      for n in 1..<10 { reserve(n) }
      #expect(try await eventually { journal.queuedChanges == 9 }, "the others queue behind it")
      gate.signal()
      for _ in 0..<10 { #expect(finished.wait(timeout: .now() + 30) == .success) }
      #expect(appends.withLock { $0 } == [1, 9], "lines per append")
      #expect(answers.withLock { $0 } == Dictionary(uniqueKeysWithValues: (0..<10).map { ("pvc-\($0)", a) }))
      let reloaded = try PlacementJournal(path: path)
      #expect((0..<10).allSatisfy { reloaded.placement(of: "pvc-\($0)") == a })
    }
  }

  /// Polls `condition` for up to 30 s; whether it came true.
  private func eventually(_ condition: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + .seconds(30)
    while !condition() {
      guard ContinuousClock.now < deadline else { return false }
      try await Task.sleep(for: .milliseconds(1))
    }
    return true
  }

  @Test("a release answers once synced, and a reservation of the name after it is recorded anew")
  func releaseThenReserve() async throws {
    try await withTemporaryDirectory { directory in
      let path = directory + "/placements.journal"
      let journal = try PlacementJournal(path: path)
      #expect(try journal.reserve([Placement(name: "pvc-1", target: a)]).map(\.target) == [a])
      try journal.release("pvc-1", on: a)
      #expect(journal.placement(of: "pvc-1") == nil)
      #expect(try journal.reserve([Placement(name: "pvc-1", target: b)]).map(\.target) == [b])
      #expect(try PlacementJournal(path: path).placement(of: "pvc-1") == b)
    }
  }

  @Test("a crash in a many-line append can leave NUL bytes before its last lines: they and all after are dropped")
  func holeInTheLastAppend() async throws {
    try await withTemporaryDirectory { directory in
      let path = directory + "/placements.journal"
      _ = try PlacementJournal(path: path).reserve([Placement(name: "pvc-synced", target: a)])
      // What a crash mid-append can leave: the start of the append never written.
      let handle = try #require(FileHandle(forWritingAtPath: path))
      handle.seekToEndOfFile()
      handle.write(Data(repeating: 0, count: 40) + Data(#"9","t":"store-b"}"#.utf8) + Data("\n".utf8))
      handle.write(Data(#"{"n":"pvc-after","t":"store-b"}"#.utf8) + Data("\n".utf8))
      try handle.close()
      let reloaded = try PlacementJournal(path: path)
      #expect(reloaded.placement(of: "pvc-synced") == a)
      #expect(reloaded.placement(of: "pvc-after") == nil, "written after the hole: never acknowledged")
      // Other garbage before the last line is still refused.
      let text = try String(contentsOfFile: path, encoding: .utf8)
      try ("garbage\n" + text).write(toFile: path, atomically: true, encoding: .utf8)
      #expect(throws: NVMeCSIError.self) { try PlacementJournal(path: path) }
    }
  }
}
