import NVMeCSICore
import Synchronization
import TestSupport
import Testing

@testable import NVMeFabrics

/// An attacher whose device shows up after a number of lookups (or never), to drive
/// the protocol's default `waitForDevice`.
final class PollingAttacher: Attacher {
  let appearsAfter: Int?
  let error: NVMeCSIError?
  private let lookups = Mutex(0)

  init(appearsAfter: Int?, error: NVMeCSIError? = nil) {
    self.appearsAfter = appearsAfter
    self.error = error
  }

  var lookupCount: Int { lookups.withLock { $0 } }

  func checkKernelSupport() throws(NVMeCSIError) {}
  func connect(_ context: PublishContext, as host: HostIdentity, with parameters: ConnectionParameters)
    async throws(NVMeCSIError)
  {}
  func device(subsystemNQN: String, namespaceUUID: String) throws(NVMeCSIError) -> BlockDevice? {
    if let error { throw error }
    let n = lookups.withLock { count in
      count += 1
      return count
    }
    guard let appearsAfter, n > appearsAfter else { return nil }
    return BlockDevice(name: "nvme0n1", sizeBytes: 1 << 30)
  }
  func paths(subsystemNQN: String) -> [ControllerPath] {
    [
      .init(name: "nvme0", address: "127.0.0.1:4420", state: "connecting"),
      .init(name: "nvme1", address: "[fd00::1]:4420", state: "dead"),
    ]
  }
  func rescan(subsystemNQN: String) throws(NVMeCSIError) {}
  func disconnect(subsystemNQN: String) async throws(NVMeCSIError) {}
}

@Suite("Waiting for a namespace's block device")
struct WaitForDeviceTests {
  @Test("The device is returned as soon as a lookup finds it", arguments: [0, 1, 5])
  func appears(after polls: Int) async throws {
    let attacher = PollingAttacher(appearsAfter: polls)
    let device = try await attacher.waitForDevice(
      subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA, timeout: .seconds(30))
    #expect(device == BlockDevice(name: "nvme0n1", sizeBytes: 1 << 30))
    #expect(attacher.lookupCount == polls + 1)
  }

  @Test("A device already there is returned even with no time to wait")
  func zeroTimeout() async throws {
    let attacher = PollingAttacher(appearsAfter: 0)
    let device = try await attacher.waitForDevice(
      subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA, timeout: .zero)
    #expect(device.name == "nvme0n1")
  }

  @Test("A device that never appears is Unavailable, listing every controller and its state")
  func neverAppears() async throws {
    let attacher = PollingAttacher(appearsAfter: nil)
    await expectError(
      .unavailable,
      mentioning: [Sample.uuidA, Sample.nqnA, "nvme0 127.0.0.1:4420 connecting", "nvme1 [fd00::1]:4420 dead"]
    ) {
      try await attacher.waitForDevice(
        subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA, timeout: .milliseconds(200))
    }
    #expect(attacher.lookupCount > 1, "it polled instead of giving up at once")
  }

  @Test("Cancelling the request ends the wait at once with Aborted")
  func cancelled() async throws {
    let attacher = PollingAttacher(appearsAfter: nil)
    let clock = ContinuousClock()
    let started = clock.now
    let wait = Task {
      try await attacher.waitForDevice(subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA, timeout: .seconds(30))
    }
    try await Task.sleep(for: .milliseconds(50))
    wait.cancel()
    await expectError(.aborted, mentioning: ["cancelled", Sample.uuidA]) { try await wait.value }
    #expect(clock.now - started < .seconds(10), "it stopped instead of polling until the deadline")
  }

  @Test("A lookup error ends the wait with that error")
  func lookupFails() async throws {
    let attacher = PollingAttacher(appearsAfter: nil, error: .internalError("sysfs unreadable"))
    await expectError(.internalError, mentioning: ["sysfs unreadable"]) {
      try await attacher.waitForDevice(subsystemNQN: Sample.nqnA, namespaceUUID: Sample.uuidA, timeout: .seconds(30))
    }
  }
}
