import Foundation
import NVMeCSICore
import TargetAgent
import TargetContract
import TestSupport
import Testing

/// The placements a target records as the names' home: durable, first record wins,
/// released only by the target they name, and a crash mid-write loses nothing
/// acknowledged.
@Suite("Placement journal")
struct PlacementJournalTests {
  let a = try! TargetName("store-a")
  let b = try! TargetName("store-b")

  @Test("the first record of a name wins, survives a restart, and is released only by the target it names")
  func firstWinsAndSurvives() async throws {
    try await withTemporaryDirectory { directory in
      let target = try LocalTarget(name: "home", directory: directory)
      let recorded = try await target.agent.reservePlacements([
        Placement(name: "pvc-1", target: a), Placement(name: "pvc-2", target: b), Placement(name: "pvc-1", target: b),
      ])
      #expect(recorded.map(\.target) == [a, b, a])
      #expect(try await target.agent.reservePlacements([Placement(name: "pvc-2", target: a)]).map(\.target) == [b])
      try await target.agent.releasePlacement(of: "pvc-2", on: a)  // not its target: nothing happens
      let restarted = try LocalTarget(name: "home", directory: directory)
      #expect(try await restarted.agent.placement(of: "pvc-1") == NamePlacement(target: a, volumeHere: false))
      #expect(try await restarted.agent.placement(of: "pvc-2").target == b)
      try await restarted.agent.releasePlacement(of: "pvc-2", on: b)
      let again = try LocalTarget(name: "home", directory: directory)
      #expect(try await again.agent.placement(of: "pvc-2").target == nil)
      #expect(try await again.agent.placement(of: "pvc-1").target == a)
    }
  }

  @Test("a half-written last line (a crash mid-append) is dropped; every acknowledged record stays")
  func tornLastLine() async throws {
    try await withTemporaryDirectory { directory in
      let target = try LocalTarget(name: "home", directory: directory)
      _ = try await target.agent.reservePlacements([Placement(name: "pvc-1", target: a)])
      let journal = target.store + "/placements.journal"
      let handle = try #require(FileHandle(forWritingAtPath: journal))
      handle.seekToEndOfFile()
      handle.write(Data(#"{"n":"pvc-2","t":"sto"#.utf8))
      try handle.close()
      let restarted = try LocalTarget(name: "home", directory: directory)
      #expect(try await restarted.agent.placement(of: "pvc-1").target == a)
      #expect(try await restarted.agent.placement(of: "pvc-2").target == nil)
      _ = try await restarted.agent.reservePlacements([Placement(name: "pvc-3", target: b)])
      let again = try LocalTarget(name: "home", directory: directory)
      #expect(try await again.agent.placement(of: "pvc-3").target == b)
    }
  }

  @Test("an unreadable line before the last is refused at start: acknowledged records are never dropped")
  func corruptMiddleLine() async throws {
    try await withTemporaryDirectory { directory in
      let target = try LocalTarget(name: "home", directory: directory)
      _ = try await target.agent.reservePlacements([Placement(name: "pvc-1", target: a)])
      let journal = target.store + "/placements.journal"
      let text = try String(contentsOfFile: journal, encoding: .utf8)
      try ("garbage\n" + text).write(toFile: journal, atomically: true, encoding: .utf8)
      #expect(throws: (any Error).self) { try LocalTarget(name: "home", directory: directory) }
      #expect(try String(contentsOfFile: journal, encoding: .utf8).hasSuffix(text), "the journal was rewritten")
    }
  }

  @Test("a volume here is reported; bad names and oversized batches are refused and change nothing")
  func boundsAndVolumeHere() async throws {
    try await withTemporaryDirectory { directory in
      let target = try LocalTarget(name: "home", directory: directory)
      _ = try await target.agent.createVolume(
        NewVolume(name: "pvc-here", sizeBytes: 1 << 20, source: nil, attributes: [:], sharing: .singleNode))
      #expect(try await target.agent.placement(of: "pvc-here").volumeHere)
      await expectError(.invalidArgument) { try await target.agent.placement(of: "") }
      await expectError(.invalidArgument) {
        try await target.agent.reservePlacements([Placement(name: "bad\nname", target: a)])
      }
      let tooMany = (0...Placements.maximumBatch).map { Placement(name: "pvc-\($0)", target: a) }
      await expectError(.invalidArgument) { try await target.agent.reservePlacements(tooMany) }
      #expect(try await target.agent.placement(of: "pvc-0").target == nil)
    }
  }

  @Test("create/delete churn does not grow the journal: it is rewritten once most lines are superseded")
  func churnIsCompacted() async throws {
    try await withTemporaryDirectory { directory in
      let target = try LocalTarget(name: "home", directory: directory)
      let journal = target.store + "/placements.journal"
      func lineCount() throws -> Int {
        try String(contentsOfFile: journal, encoding: .utf8).split(separator: "\n").count
      }
      _ = try await target.agent.reservePlacements([Placement(name: "pvc-kept", target: a)])
      var most = 0
      for n in 0..<1500 {  // each name placed on another target, then deleted
        _ = try await target.agent.reservePlacements([Placement(name: "pvc-\(n)", target: b)])
        try await target.agent.releasePlacement(of: "pvc-\(n)", on: b)
        most = max(most, try lineCount())
      }
      #expect(most <= 1025, "the journal reached \(most) lines for 1 live name")
      #expect(try lineCount() < 1025)
      // Compaction kept what is live, and appends after it still land in the journal.
      _ = try await target.agent.reservePlacements([Placement(name: "pvc-last", target: b)])
      let restarted = try LocalTarget(name: "home", directory: directory)
      #expect(try await restarted.agent.placement(of: "pvc-kept").target == a)
      #expect(try await restarted.agent.placement(of: "pvc-last").target == b)
      #expect(try await restarted.agent.placement(of: "pvc-1499").target == nil)
    }
  }

  @Test("a volume created as its name's home is placed by its record: no journal line, and the same answers")
  func homeCreateIsPlacedByItsRecord() async throws {
    try await withTemporaryDirectory { directory in
      let target = try LocalTarget(name: "home", directory: directory)
      let journal = target.store + "/placements.journal"
      let before = try Data(contentsOf: URL(fileURLWithPath: journal))
      let created = try await target.agent.createVolume(
        NewVolume(name: "pvc-home", sizeBytes: 1 << 20, source: nil), asHome: a)
      guard case .volume(let volume, existed: false) = created else {
        Issue.record("expected a new volume, got \(created)")
        return
      }
      #expect(try Data(contentsOf: URL(fileURLWithPath: journal)) == before, "no journal line for it")
      // Placed here: a reservation for another target answers this one, before and after a restart.
      #expect(try await target.agent.placement(of: "pvc-home") == NamePlacement(target: a, volumeHere: true))
      #expect(try await target.agent.reservePlacements([Placement(name: "pvc-home", target: b)]).map(\.target) == [a])
      let restarted = try LocalTarget(name: "home", directory: directory)
      #expect(try await restarted.agent.placement(of: "pvc-home") == NamePlacement(target: a, volumeHere: true))
      #expect(
        try await restarted.agent.reservePlacements([Placement(name: "pvc-home", target: b)]).map(\.target) == [a])
      // Deleted as its home: the placement goes with it, and stays gone after a restart.
      try await restarted.agent.deleteVolume(volume.record.uuid, asHome: a)
      #expect(try await restarted.agent.placement(of: "pvc-home").target == nil)
      let again = try LocalTarget(name: "home", directory: directory)
      #expect(try await again.agent.placement(of: "pvc-home").target == nil)
      #expect(try Data(contentsOf: URL(fileURLWithPath: journal)) == before, "no journal line for any of it")
    }
  }

  @Test("a create as home that makes nothing leaves no placement; one placed elsewhere is not taken over")
  func failedHomeCreateLeavesNoPlacement() async throws {
    try await withTemporaryDirectory { directory in
      let target = try LocalTarget(name: "home", directory: directory)
      await expectError(.resourceExhausted) {
        _ = try await target.agent.createVolume(
          NewVolume(name: "pvc-huge", sizeBytes: 1 << 60, source: nil), asHome: a)
      }
      #expect(try await target.agent.placement(of: "pvc-huge").target == nil)
      #expect(try await target.agent.reservePlacements([Placement(name: "pvc-huge", target: b)]).map(\.target) == [b])
      // Placed on b: a create as home answers b and creates nothing here.
      let answer = try await target.agent.createVolume(
        NewVolume(name: "pvc-huge", sizeBytes: 1 << 20, source: nil), asHome: a)
      guard case .placedOn(let placed) = answer else {
        Issue.record("expected the placement, got \(answer)")
        return
      }
      #expect(placed == b)
      #expect(try await target.agent.volumes(named: "pvc-huge").isEmpty)
    }
  }

  @Test("a request cannot set the home attribute: only a create as home does")
  func homeAttributeIsTheTargets() async throws {
    try await withTemporaryDirectory { directory in
      let target = try LocalTarget(name: "home", directory: directory)
      let forged = NewVolume(
        name: "pvc-plain", sizeBytes: 1 << 20, source: nil, attributes: ["placement/home": "store-a"])
      let created = try await target.agent.createVolume(forged)
      #expect(created.volume.record.attributes["placement/home"] == nil)
      let updated = try await target.agent.updateVolumeAttributes(
        created.volume.record.uuid, setting: ["placement/home": "store-a"])
      #expect(updated.record.attributes["placement/home"] == nil)
      let restarted = try LocalTarget(name: "home", directory: directory)
      #expect(try await restarted.agent.placement(of: "pvc-plain").target == nil)
    }
  }
}
