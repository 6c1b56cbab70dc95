import NVMeCSICore
import TestSupport
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
  @Test("A second operation on a busy key is Aborted at once, and the key is free afterwards", .timeLimit(.minutes(1)))
  func busyKeyAborts() async throws {
    let lock = KeyedLock<String>()
    let occupancy = Occupancy()
    let (release, releaser) = AsyncStream<Void>.makeStream()
    async let first: Void = lock.withLock("volume-1") {
      await occupancy.enter()
      for await _ in release { break }
      await occupancy.leave()
    }
    await occupancy.waitForOccupancy(1)
    let second = await expectError(.aborted, mentioning: ["volume-1", "pending"]) {
      try await lock.withLock("volume-1") { 1 }
    }
    #expect(second != nil)
    releaser.yield()
    try await first
    #expect(try await lock.withLock("volume-1") { 2 } == 2)
    #expect(await occupancy.maximum == 1)
  }

  @Test("A request waits for background work on its key; background work skips a busy key", .timeLimit(.minutes(1)))
  func backgroundWork() async throws {
    let lock = KeyedLock<String>()
    let occupancy = Occupancy()
    let (release, releaser) = AsyncStream<Void>.makeStream()
    async let background: Int? = lock.withBackgroundLock("volume-1") {
      await occupancy.enter()
      for await _ in release { break }
      await occupancy.leave()
      return 1
    }
    await occupancy.waitForOccupancy(1)
    async let request: Int = lock.withLock("volume-1") { 2 }
    try await Task.sleep(for: .milliseconds(50))
    releaser.yield()
    #expect(try await background == 1)
    #expect(try await request == 2, "the request ran after the background work instead of being Aborted")
    #expect(await occupancy.maximum == 1)

    // Background work never waits or interrupts: it skips a busy key.
    let held = Occupancy()
    let (hold, holder) = AsyncStream<Void>.makeStream()
    async let busy: Void = lock.withLock("volume-2") {
      await held.enter()
      for await _ in hold { break }
      await held.leave()
    }
    await held.waitForOccupancy(1)
    let skipped: Int? = try await lock.withBackgroundLock("volume-2") { 3 }
    #expect(skipped == nil)
    holder.yield()
    try await busy
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
