import GRPCCore
import NVMeCSICore
import TargetAgent
import TargetContract
import TestSupport
import Testing

/// What the target's gRPC service accepts that the typed TargetAPI cannot express.
@Suite("Target API requests on the wire")
struct WireRequestTests {
  @Test("Unpublish with an empty node ID is InvalidArgument and revokes nobody; every node must be asked for")
  func emptyNodeID() async throws {
    try await withTarget(.inProcess) { api, target in
      let volume = try await api.createVolume(newVolume("pvc-w", sharing: .multiNode)).volume
      _ = try await api.publishVolume(volume.uuid, to: try node(1), readonly: false, exclusive: false)
      let service = TargetService(target: target.agent)
      let context = ServerContext(
        descriptor: MethodDescriptor(fullyQualifiedService: "test", method: "UnpublishVolume"),
        remotePeer: "in-process:test", localPeer: "in-process:test", cancellation: .init())
      for (nodeID, allNodes) in [("", false), (try node(1).description, true)] {
        await expectError(.invalidArgument, mentioning: ["node_id"]) {
          try await service.unpublishVolume(
            request: .with {
              $0.uuid = volume.uuid.value
              $0.nodeID = nodeID
              $0.allNodes = allNodes
            }, context: context)
        }
      }
      #expect(try await api.volume(volume.uuid).record.publications.map(\.nodeID) == [try node(1)])
      _ = try await service.unpublishVolume(
        request: .with {
          $0.uuid = volume.uuid.value
          $0.allNodes = true
        }, context: context)
      #expect(try await api.volume(volume.uuid).record.publications.isEmpty)
    }
  }
}
