import CSIProto
import NVMeCSICore
import TestSupport
import Testing

@Suite("ControllerPublishVolume and ControllerUnpublishVolume")
struct PublishTests {
  @Test("Publish allows exactly that node's host NQN and says how to reach the volume")
  func publish() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-pub", parameters: ["target": "store-a"]))
        .volume
      let response = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
      let context = try PublishContext(decoding: response.publishContext)
      let id = try ObjectID(parsing: volume.volumeID, as: .volume)
      #expect(context.subsystemNQN == SubsystemNaming.nqn(for: id.uuid))
      #expect(context.namespaceUUID == id.uuid.value)
      #expect(context.paths == [.init(host: "127.0.0.1", port: 4420)])
      #expect(h.storeA.allowedHosts(ofVolume: volume.volumeID) == [hostNQN(1)])
      // Repeating is success and changes nothing.
      let again = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
      #expect(again.publishContext == response.publishContext)
      #expect(h.storeA.allowedHosts(ofVolume: volume.volumeID) == [hostNQN(1)])
    }
  }

  @Test("A single-node volume published to one node is FailedPrecondition for another")
  func singleNode() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-single")).volume
      _ = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
      await expectStatus(.failedPrecondition, mentioning: hostNQN(1)) {
        try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 2))
      }
      _ = try await h.controller.controllerUnpublishVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.nodeID = nodeID(1)
        })
      _ = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 2))
    }
  }

  @Test("A reader-only multi-node volume can be published to several nodes")
  func multiNodeReaders() async throws {
    try await Harness.with { h in
      let cap = mountCapability(.multiNodeReaderOnly)
      let volume = try await h.controller.createVolume(
        createRequest("pvc-ro", capability: cap, parameters: ["target": "store-a"])
      ).volume
      for node in 1...3 {
        _ = try await h.controller.controllerPublishVolume(
          publishRequest(volume.volumeID, node: node, capability: cap, readonly: true))
      }
      #expect(h.storeA.allowedHosts(ofVolume: volume.volumeID) == [hostNQN(1), hostNQN(2), hostNQN(3)].sorted())
      let status = try await h.controller.controllerGetVolume(.with { $0.volumeID = volume.volumeID }).status
      #expect(Set(status.publishedNodeIds) == Set((1...3).map(nodeID)))
    }
  }

  @Test("Publishing again with a different readonly flag is AlreadyExists")
  func readonlyMismatch() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-rw")).volume
      _ = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
      await expectStatus(.alreadyExists, mentioning: "readonly") {
        try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1, readonly: true))
      }
    }
  }

  @Test("Unknown volumes and nodes are NotFound; missing fields are InvalidArgument")
  func publishErrors() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-err")).volume
      let unknown = "v1.store-a.00000000-0000-4000-8000-000000000000"
      await expectStatus(.notFound) { try await h.controller.controllerPublishVolume(publishRequest(unknown, node: 1)) }
      await expectStatus(.notFound) {
        try await h.controller.controllerPublishVolume(
          publishRequest("v1.store-z.00000000-0000-4000-8000-000000000000", node: 1))
      }
      var badNode = publishRequest(volume.volumeID, node: 1)
      badNode.nodeID = "worker-1"
      await expectStatus(.notFound, mentioning: "worker-1") { try await h.controller.controllerPublishVolume(badNode) }
      var noCapability = publishRequest(volume.volumeID, node: 1)
      noCapability.clearVolumeCapability()
      await expectStatus(.invalidArgument, mentioning: "volume_capability") {
        try await h.controller.controllerPublishVolume(noCapability)
      }
      var noNode = publishRequest(volume.volumeID, node: 1)
      noNode.nodeID = ""
      await expectStatus(.invalidArgument, mentioning: "node_id") {
        try await h.controller.controllerPublishVolume(noNode)
      }
    }
  }

  @Test("Unpublish revokes the host, and repeating it or naming unknown things succeeds")
  func unpublish() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-unpub", parameters: ["target": "store-b"]))
        .volume
      _ = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 4))
      for _ in 0..<2 {
        _ = try await h.controller.controllerUnpublishVolume(
          .with {
            $0.volumeID = volume.volumeID
            $0.nodeID = nodeID(4)
          })
        #expect(h.storeB.allowedHosts(ofVolume: volume.volumeID).isEmpty)
      }
      _ = try await h.controller.controllerUnpublishVolume(
        .with {
          $0.volumeID = "v1.store-b.00000000-0000-4000-8000-000000000000"
          $0.nodeID = nodeID(4)
        })
      _ = try await h.controller.controllerUnpublishVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.nodeID = "garbage"
        })
      let status = try await h.controller.controllerGetVolume(.with { $0.volumeID = volume.volumeID }).status
      #expect(status.publishedNodeIds.isEmpty)
    }
  }

  @Test("ValidateVolumeCapabilities confirms what the driver supports and explains what it does not")
  func validate() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-val")).volume
      let ok = try await h.controller.validateVolumeCapabilities(
        .with {
          $0.volumeID = volume.volumeID
          $0.volumeCapabilities = [mountCapability(), blockCapability()]
        })
      #expect(ok.hasConfirmed)
      #expect(ok.confirmed.volumeCapabilities.count == 2)
      let refused = try await h.controller.validateVolumeCapabilities(
        .with {
          $0.volumeID = volume.volumeID
          $0.volumeCapabilities = [mountCapability(.multiNodeMultiWriter)]
        })
      #expect(!refused.hasConfirmed)
      #expect(refused.message.contains("MULTI_NODE_MULTI_WRITER"))
      await expectStatus(.notFound) {
        try await h.controller.validateVolumeCapabilities(
          .with {
            $0.volumeID = "v1.store-a.00000000-0000-4000-8000-000000000000"
            $0.volumeCapabilities = [mountCapability()]
          })
      }
      await expectStatus(.invalidArgument) {
        try await h.controller.validateVolumeCapabilities(.with { $0.volumeID = volume.volumeID })
      }
    }
  }
}
