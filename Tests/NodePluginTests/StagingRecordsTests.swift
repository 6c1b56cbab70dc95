import Foundation
import NVMeCSICore
import NodePlugin
import TestSupport
import Testing

@Suite("Staging records on disk")
struct StagingRecordsTests {
  func withStateDirectory(_ body: (String) throws -> Void) throws {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    try body(directory + "/state")
  }

  static func record(_ uuid: ObjectUUID) -> StagingRecord {
    let volume = ObjectID(kind: .volume, target: try! TargetName("store-a"), uuid: uuid)
    return StagingRecord(
      volumeID: volume.description, stagingPath: "/staging/\(uuid)", subsystemNQN: SubsystemNaming.nqn(for: uuid),
      namespaceUUID: uuid.value, accessType: .mount, fsType: "ext4", state: .staged)
  }

  @Test("Loading all records skips a corrupt one and a stray name, logging each with its path and the reason")
  func skipsAndLogsUnreadable() throws {
    try withStateDirectory { state in
      let records = try StagingRecords(stateDirectory: state)
      let good = Self.record(.random())
      try records.save(good)
      let corruptPath = records.directory + "/v1.store-a.\(ObjectUUID.random()).json"
      let strayPath = records.directory + "/not-a-volume.json"
      try Data("{ half a record".utf8).write(to: URL(fileURLWithPath: corruptPath))
      try Data("{}".utf8).write(to: URL(fileURLWithPath: strayPath))
      try Data("{}".utf8).write(to: URL(fileURLWithPath: records.directory + "/.temporary.json"))
      try Data("notes".utf8).write(to: URL(fileURLWithPath: records.directory + "/README"))

      let logs = CapturedLogs()
      #expect(records.loadAll(logger: logs.logger) == [good])

      let skipped = logs.lines(containing: "skipping staging record")
      #expect(skipped.map { $0.metadata["path"] } == [strayPath, corruptPath].sorted())
      let reasons = Dictionary(
        uniqueKeysWithValues: skipped.map { ($0.metadata["path"] ?? "", $0.metadata["reason"] ?? "") })
      #expect(reasons[corruptPath]?.contains("is corrupt") == true, "\(reasons)")
      #expect(reasons[strayPath]?.contains("not a volume ID") == true, "\(reasons)")
      #expect(logs.all.count == 2, "hidden temporaries and other files are not logged: \(logs.all.map(\.message))")
    }
  }

  @Test("A replicated volume's record from before leg maps reads as map version 0, and round-trips")
  func mirrorRecordWithoutMapVersion() throws {
    let old = Data(
      #"""
      {"mirror": {"legs": [{"subsystemNQN": "nqn.a", "namespaceUUID": "u", "paths": ["10.0.0.1:4420"]}],
                  "connection": {"fastIoFailTmo": "5"}}}
      """#.utf8)
    let mirror = try JSONDecoder().decode([String: MirrorRecord].self, from: old)["mirror"]
    #expect(mirror?.mapVersion == nil)
    #expect(mirror?.droppedLegs == nil)
    #expect(mirror?.legs.map(\.paths) == [["10.0.0.1:4420"]])

    var current = try #require(mirror)
    current.mapVersion = 3
    current.droppedLegs = current.legs
    #expect(try JSONDecoder().decode(MirrorRecord.self, from: JSONEncoder().encode(current)) == current)
    #expect(MirrorRecord(legs: [], connection: [:], mapVersion: 0).mapVersion == nil, "0 is written as absent")
  }

  @Test("A state directory without records loads none and logs nothing")
  func empty() throws {
    try withStateDirectory { state in
      let records = try StagingRecords(stateDirectory: state)
      let logs = CapturedLogs()
      #expect(records.loadAll(logger: logs.logger).isEmpty)
      #expect(logs.all.isEmpty)
    }
  }
}
