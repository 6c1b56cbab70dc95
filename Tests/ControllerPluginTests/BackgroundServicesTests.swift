import ControllerPlugin
import ServiceLifecycle
import TestSupport
import Testing

/// A pod gets 30 s from SIGTERM to exit before it is killed; a rollout or a leader
/// handover waits for it.
@Suite("Controller background loops", .timeLimit(.minutes(1)))
struct BackgroundServicesTests {
  @Test("the lost-leg repair and the placement indexing stop at shutdown, not at the end of an hour's interval")
  func stopAtShutdown() async throws {
    try await Fleet.with(targets: 2, indexed: false) { fleet in
      fleet.targets[1].isDown = true  // indexing cannot finish: it waits to retry
      try await runThenShutDown([
        LegRepairService(controller: fleet.service, grace: .seconds(600), interval: .seconds(3600)),
        PlacementIndexingService(controller: fleet.service, retryInterval: .seconds(3600)),
      ])
      #expect(await !fleet.service.indexPlacements(), "indexing finished, so it never waited to retry")
    }
  }
}
