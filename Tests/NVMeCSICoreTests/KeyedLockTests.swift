import NVMeCSICore
import Testing

/// Counts how many bodies run at once.
private actor Occupancy {
  private(set) var current = 0
  private(set) var maximum = 0
  private(set) var entries = 0

  func enter() {
    current += 1
    entries += 1
    maximum = max(maximum, current)
  }

  func leave() { current -= 1 }

  /// Waits (at most two seconds) until `count` bodies have been inside at once.
  func waitForOccupancy(_ count: Int) async {
    var polls = 0
    while maximum < count && polls < 400 {
      try? await Task.sleep(for: .milliseconds(5))
      polls += 1
    }
  }
}

private struct Boom: Error {}

@Suite("Keyed lock")
struct KeyedLockTests {
  @Test("Work on one key never overlaps", .timeLimit(.minutes(1)))
  func sameKeySerializes() async throws {
    let lock = KeyedLock<String>()
    let occupancy = Occupancy()
    try await withThrowingTaskGroup(of: Void.self) { group in
      for _ in 0..<20 {
        group.addTask {
          try await lock.withLock("volume-1") {
            await occupancy.enter()
            try await Task.sleep(for: .milliseconds(1))
            await Task.yield()
            await occupancy.leave()
          }
        }
      }
      try await group.waitForAll()
    }
    #expect(await occupancy.entries == 20)
    #expect(await occupancy.maximum == 1)
  }

  @Test("Work on different keys runs at the same time", .timeLimit(.minutes(1)))
  func differentKeysOverlap() async throws {
    let lock = KeyedLock<String>()
    let occupancy = Occupancy()
    try await withThrowingTaskGroup(of: Void.self) { group in
      for key in ["volume-1", "volume-2"] {
        group.addTask {
          try await lock.withLock(key) {
            await occupancy.enter()
            await occupancy.waitForOccupancy(2)
            await occupancy.leave()
          }
        }
      }
      try await group.waitForAll()
    }
    #expect(await occupancy.maximum == 2)
  }

  @Test("The body's result is returned and a thrown error releases the key", .timeLimit(.minutes(1)))
  func releasesOnError() async throws {
    let lock = KeyedLock<Int>()
    await #expect(throws: Boom.self) {
      try await lock.withLock(7) { () async throws -> Int in throw Boom() }
    }
    // Would wait forever if the failed body had kept the key.
    let value = try await lock.withLock(7) { 42 }
    #expect(value == 42)
  }
}
