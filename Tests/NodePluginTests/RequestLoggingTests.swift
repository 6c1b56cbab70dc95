import CSIProto
import GRPCCore
import TestSupport
import Testing

@Suite("Request logging")
struct RequestLoggingTests {
  @Test("A failed call is logged once with its method, the client's request ID and its time; a good one at debug")
  func logsEachCall() async throws {
    let logs = CapturedLogs()
    try await Harness.with(logs: logs) { h in
      await expectStatus(.invalidArgument) {
        try await h.node.nodeStageVolume(.init(), metadata: ["x-request-id": "req-42"])
      }
      let failed = logs.all.filter { $0.message.contains("volume_id is required") }
      #expect(failed.count == 1)
      #expect(failed.first?.level == .info)
      #expect(failed.first?.metadata["rpc"] == "NodeStageVolume")
      #expect(failed.first?.metadata["request_id"] == "req-42")
      #expect(failed.first?.metadata["ms"].flatMap { Int($0) } != nil)

      _ = try await h.node.nodeGetCapabilities(.init())
      let ok = logs.all.filter { $0.message == "ok" && $0.metadata["rpc"] == "NodeGetCapabilities" }
      #expect(ok.count == 1)
      #expect(ok.first?.level == .debug)
      // No x-request-id: one is made up, so the call's lines can still be told apart.
      #expect(ok.first?.metadata["request_id"]?.count == 8)
    }
  }
}
