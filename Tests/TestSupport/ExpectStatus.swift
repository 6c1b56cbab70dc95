import GRPCCore
import Testing

/// Expects `body` (a gRPC call) to fail with `code`, and the message to mention
/// `fragment` when given.
public func expectStatus(
  _ code: RPCError.Code, mentioning fragment: String? = nil, sourceLocation: SourceLocation = #_sourceLocation,
  _ body: () async throws -> some Any
) async {
  do {
    _ = try await body()
    Issue.record("expected \(code), but the call succeeded", sourceLocation: sourceLocation)
  } catch let error as RPCError {
    #expect(error.code == code, "message: \(error.message)", sourceLocation: sourceLocation)
    if let fragment {
      #expect(
        error.message.contains(fragment), "message \"\(error.message)\" should mention \"\(fragment)\"",
        sourceLocation: sourceLocation)
    }
  } catch {
    Issue.record("expected RPCError \(code), got \(error)", sourceLocation: sourceLocation)
  }
}

/// Volume IDs this driver cannot have issued: path tricks, NUL and newline, wrong case,
/// version or kind, too long. Every plugin must treat them as unknown volumes.
public let hostileVolumeIDs = [
  "../../../etc/passwd",
  "v1.store-a.../../../tmp/x",
  "v1.store-a.00000000-0000-4000-8000-00000000000\0",
  "v1.STORE-A.00000000-0000-4000-8000-000000000000",
  "v1.store-a.00000000-0000-4000-8000-000000000000/../x",
  "v1.store-a.ABCDEF00-0000-4000-8000-000000000000",
  "v2.store-a.00000000-0000-4000-8000-000000000000",
  "s1.store-a.00000000-0000-4000-8000-000000000000",
  "v1.store-a.00000000-0000-4000-8000-000000000000.extra",
  "v1." + String(repeating: "a", count: 200) + ".00000000-0000-4000-8000-000000000000",
  "v1.store-a\n.00000000-0000-4000-8000-000000000000",
]
