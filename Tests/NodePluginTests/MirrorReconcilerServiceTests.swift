import NodePlugin
import TestSupport
import Testing

@Suite("Node background loop", .timeLimit(.minutes(1)))
struct MirrorReconcilerServiceTests {
  @Test("the mirror check stops at shutdown, not at the end of an hour's interval")
  func stopsAtShutdown() async throws {
    try await Harness.with { h in
      try await runThenShutDown([MirrorReconcilerService(node: h.service, interval: .seconds(3600))])
    }
  }
}
