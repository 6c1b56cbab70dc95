import CSIProto
import NVMeCSICore
import TestSupport
import Testing

@Suite("ControllerModifyVolume (VolumeAttributesClass)")
struct ModifyVolumeTests {
  @Test("Changed connection settings reach the node in publish_context; repeating the change changes nothing")
  func modifiedSettingsReachPublish() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-mod", parameters: ["ctrlLossTmo": "300"]))
        .volume
      let before = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
      #expect(before.publishContext["ctrlLossTmo"] == nil)  // the volume_context's value holds

      let modify = Csi_V1_ControllerModifyVolumeRequest.with {
        $0.volumeID = volume.volumeID
        $0.mutableParameters = ["ctrlLossTmo": "-1", "fastIoFailTmo": "30"]
      }
      _ = try await h.controller.controllerModifyVolume(modify)
      _ = try await h.controller.controllerModifyVolume(modify)

      _ = try await h.controller.controllerUnpublishVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.nodeID = nodeID(1)
        })
      let after = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
        .publishContext
      #expect(after["ctrlLossTmo"] == "-1")
      #expect(after["fastIoFailTmo"] == "30")
      // What the node does with it: the changed settings win over the volume_context.
      let decoded = try PublishContext(decoding: after)
      let settings = try ConnectionParameters(from: volume.volumeContext.merging(decoded.connection) { $1 })
      #expect(settings.ctrlLossTmo == -1 && settings.fastIoFailTmo == 30 && settings.reconnectDelay == 2)
      // The volume_context (what Kubernetes keeps in the PV) and a retried create are unchanged.
      let again = try await h.controller.createVolume(createRequest("pvc-mod", parameters: ["ctrlLossTmo": "300"]))
      #expect(again.volume.volumeID == volume.volumeID)
      #expect(again.volume.volumeContext == volume.volumeContext)
    }
  }

  @Test("A VolumeAttributesClass at creation is applied like a later change")
  func mutableParametersAtCreate() async throws {
    try await Harness.with { h in
      var request = createRequest("pvc-vac")
      request.mutableParameters = ["keepAliveTmo": "15"]
      let volume = try await h.controller.createVolume(request).volume
      let context = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
        .publishContext
      #expect(context["keepAliveTmo"] == "15")
      request.mutableParameters = ["target": "store-b"]
      await expectStatus(.invalidArgument, mentioning: "cannot be modified") {
        try await h.controller.createVolume(request)
      }
    }
  }

  @Test("Unknown, immutable, out-of-range or conflicting settings are InvalidArgument and change nothing")
  func badChanges() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-bad")).volume
      let refused: [([String: String], String)] = [
        (["target": "store-b"], "stays on the target"),
        (["fsType": "xfs"], "only ctrlLossTmo"),
        (["XXX_FakeKey": "XXX_FakeValue"], "cannot be modified"),
        (["keepAliveTmo": "0"], "out of range"),
        (["ctrlLossTmo": "9999999999999999999999"], "out of range"),
        (["reconnectDelay": "700"], "must not exceed ctrlLossTmo"),
        ([:], "mutable_parameters is empty"),
      ]
      for (parameters, message) in refused {
        await expectStatus(.invalidArgument, mentioning: message) {
          try await h.controller.controllerModifyVolume(
            .with {
              $0.volumeID = volume.volumeID
              $0.mutableParameters = parameters
            })
        }
      }
      await expectStatus(.invalidArgument, mentioning: "volume_id") {
        try await h.controller.controllerModifyVolume(.with { $0.mutableParameters = ["keepAliveTmo": "9"] })
      }
      await expectStatus(.notFound) {
        try await h.controller.controllerModifyVolume(
          .with {
            $0.volumeID = "v1.store-a.00000000-0000-4000-8000-000000000000"
            $0.mutableParameters = ["keepAliveTmo": "9"]
          })
      }
      let context = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
        .publishContext
      #expect(Set(context.keys) == ["transport", "paths", "subsystemNQN", "namespaceUUID"])
    }
  }
}
