import CSIProto
import Foundation
import GRPCCore
import NVMeCSICore
import TestSupport
import Testing

@Suite("CreateVolume and DeleteVolume")
struct CreateDeleteVolumeTests {
  @Test("CreateVolume makes a sparse backing file, a record and an nvmet export")
  func createsVolume() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-1", bytes: 64 * mebibyte + 1)).volume
      // Rounded up to whole MiB.
      #expect(volume.capacityBytes == 65 * mebibyte)
      let id = try ObjectID(parsing: volume.volumeID, as: .volume)
      let target = id.target.value == "store-a" ? h.storeA : h.storeB
      let attributes = try FileManager.default.attributesOfItem(atPath: target.dataPath(ofVolume: volume.volumeID))
      #expect(attributes[.size] as? UInt64 == UInt64(65 * mebibyte))
      #expect(target.files(in: "volumes") == ["\(id.uuid).img", "\(id.uuid).json"])
      #expect(target.subsystems() == [SubsystemNaming.nqn(for: id.uuid)])
      #expect(target.allowedHosts(ofVolume: volume.volumeID).isEmpty, "no host may connect before ControllerPublish")
      // The node gets the connection knobs, with defaults.
      #expect(volume.volumeContext["ctrlLossTmo"] == "600")
      #expect(volume.volumeContext["fastIoFailTmo"] == "120")
      #expect(volume.accessibleTopology.first?.segments[Harness.zoneKey] == target.zone)
    }
  }

  @Test("A request without capacity_range gets the default size of 1 GiB")
  func defaultSize() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-default", bytes: 0)).volume
      #expect(volume.capacityBytes == 1 << 30)
    }
  }

  @Test("Repeating CreateVolume with the same name returns the same volume")
  func idempotentByName() async throws {
    try await Harness.with { h in
      let first = try await h.controller.createVolume(createRequest("pvc-same")).volume
      let second = try await h.controller.createVolume(createRequest("pvc-same")).volume
      #expect(first.volumeID == second.volumeID)
      let observed1 = try await h.controller.listVolumes(.init()).entries.count
      #expect(observed1 == 1)
    }
  }

  @Test(
    "The same name with an incompatible request is AlreadyExists",
    arguments: [
      ("size", createRequest("pvc-x", bytes: 128 * mebibyte)),
      ("capabilities", createRequest("pvc-x", capability: blockCapability())),
      ("parameters", createRequest("pvc-x", parameters: ["ctrlLossTmo": "60"])),
    ])
  func incompatibleRepeat(what: String, second: Csi_V1_CreateVolumeRequest) async throws {
    try await Harness.with { h in
      _ = try await h.controller.createVolume(createRequest("pvc-x"))
      await expectStatus(.alreadyExists, mentioning: what) { try await h.controller.createVolume(second) }
    }
  }

  @Test("Sixteen concurrent CreateVolume calls with one name create one volume; the busy ones are Aborted")
  func concurrentCreate() async throws {
    try await Harness.with { h in
      let outcomes = await withTaskGroup(of: Result<String, RPCError>.self) { group in
        for _ in 0..<16 {
          group.addTask {
            do { return .success(try await h.controller.createVolume(createRequest("pvc-race")).volume.volumeID) } catch
            {
              return .failure(error as? RPCError ?? RPCError(code: .unknown, message: "\(error)"))
            }
          }
        }
        return await group.reduce(into: [Result<String, RPCError>]()) { $0.append($1) }
      }
      var ids = Set(outcomes.compactMap { try? $0.get() })
      for case .failure(let error) in outcomes { #expect(error.code == .aborted, "\(error)") }
      // The provisioner retries an Aborted call: it gets the same volume.
      ids.insert(try await h.controller.createVolume(createRequest("pvc-race")).volume.volumeID)
      #expect(ids.count == 1)
      let observed2 = try await h.controller.listVolumes(.init()).entries.count
      #expect(observed2 == 1)
      #expect(h.storeA.files(in: "volumes").count + h.storeB.files(in: "volumes").count == 2)
    }
  }

  @Test(
    "An unsatisfiable capacity range is OutOfRange",
    arguments: [
      (Int64(10) * mebibyte, Int64(5) * mebibyte),  // required above limit
      (Int64(1) + mebibyte, Int64(1) + mebibyte),  // no whole MiB between them
      (Int64.max, Int64(0)),  // rounds up past the largest file offset: OutOfRange, not a crashed target
    ])
  func outOfRange(required: Int64, limit: Int64) async throws {
    try await Harness.with { h in
      var request = createRequest("pvc-range")
      request.capacityRange = .with {
        $0.requiredBytes = required
        $0.limitBytes = limit
      }
      await expectStatus(.outOfRange) { try await h.controller.createVolume(request) }
    }
  }

  @Test("More than any target has free is ResourceExhausted and creates nothing")
  func tooLarge() async throws {
    try await Harness.with { h in
      await expectStatus(.resourceExhausted, mentioning: "bytes allocatable") {
        try await h.controller.createVolume(createRequest("pvc-huge", bytes: Int64(1) << 60))
      }
      #expect(h.storeA.files(in: "volumes").isEmpty && h.storeB.files(in: "volumes").isEmpty)
    }
  }

  @Test("MULTI_NODE_MULTI_WRITER is refused for file systems and accepted for block")
  func multiWriter() async throws {
    try await Harness.with { h in
      await expectStatus(.invalidArgument, mentioning: "block") {
        try await h.controller.createVolume(createRequest("pvc-mw", capability: mountCapability(.multiNodeMultiWriter)))
      }
      _ = try await h.controller.createVolume(
        createRequest("pvc-mw-block", capability: blockCapability(.multiNodeMultiWriter)))
    }
  }

  @Test(
    "Parameters are validated: unknown keys and out-of-range knobs are InvalidArgument",
    arguments: [
      (["replication": "3"], "replication"),
      (["ctrlLossTmo": "forever"], "ctrlLossTmo"),
      (["keepAliveTmo": "0"], "keepAliveTmo"),
      (["nrIoQueues": "100000"], "nrIoQueues"),
      (["target": "no-such-target"], "no-such-target"),
      (["target": "Bad_Name"], "Bad_Name"),
    ])
  func badParameters(parameters: [String: String], named: String) async throws {
    try await Harness.with { h in
      await expectStatus(.invalidArgument, mentioning: named) {
        try await h.controller.createVolume(createRequest("pvc-params", parameters: parameters))
      }
      let observed3 = try await h.controller.listVolumes(.init()).entries.isEmpty
      #expect(observed3)
    }
  }

  @Test("Sidecar parameters are accepted and StorageClass knobs reach volume_context")
  func goodParameters() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(
        createRequest(
          "pvc-knobs",
          parameters: [
            "csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "db", "ctrlLossTmo": "-1",
            "reconnectDelay": "5", "target": "store-b",
          ])
      ).volume
      #expect(volume.volumeID.hasPrefix("v1.store-b."))
      #expect(volume.volumeContext["ctrlLossTmo"] == "-1")
      #expect(volume.volumeContext["reconnectDelay"] == "5")
    }
  }

  @Test(
    "Topology: requisite zones choose the target, preferred zones order them, impossible zones are ResourceExhausted")
  func topology() async throws {
    try await Harness.with { h in
      func zone(_ z: String) -> Csi_V1_Topology { .with { $0.segments = [Harness.zoneKey: z] } }
      var request = createRequest("pvc-zone-b")
      request.accessibilityRequirements = .with { $0.requisite = [zone("b")] }
      let inB = try await h.controller.createVolume(request).volume
      #expect(inB.volumeID.hasPrefix("v1.store-b."))
      #expect(inB.accessibleTopology == [zone("b")])

      request = createRequest("pvc-prefer-a")
      request.accessibilityRequirements = .with {
        $0.requisite = [zone("a"), zone("b")]
        $0.preferred = [zone("a"), zone("b")]
      }
      let observed4 = try await h.controller.createVolume(request).volume.volumeID.hasPrefix
      #expect(observed4("v1.store-a."))

      request = createRequest("pvc-zone-c")
      request.accessibilityRequirements = .with { $0.requisite = [zone("c")] }
      await expectStatus(.resourceExhausted) { try await h.controller.createVolume(request) }
    }
  }

  @Test("DeleteVolume removes data, record and export, and repeating it succeeds")
  func deleteVolume() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-del", parameters: ["target": "store-a"]))
        .volume
      _ = try await h.controller.deleteVolume(.with { $0.volumeID = volume.volumeID })
      #expect(h.storeA.files(in: "volumes").isEmpty)
      #expect(h.storeA.subsystems().isEmpty)
      _ = try await h.controller.deleteVolume(.with { $0.volumeID = volume.volumeID })
      await expectStatus(.notFound) {
        try await h.controller.controllerGetVolume(.with { $0.volumeID = volume.volumeID })
      }
    }
  }

  @Test("DeleteVolume of a published volume is FailedPrecondition naming the node")
  func deletePublished() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-busy")).volume
      _ = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
      await expectStatus(.failedPrecondition, mentioning: hostNQN(1)) {
        try await h.controller.deleteVolume(.with { $0.volumeID = volume.volumeID })
      }
      _ = try await h.controller.controllerUnpublishVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.nodeID = nodeID(1)
        })
      _ = try await h.controller.deleteVolume(.with { $0.volumeID = volume.volumeID })
    }
  }

  @Test("A target restarted after a reboot rebuilds its exports from its records")
  func targetRestart() async throws {
    try await Harness.with(processes: true) { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-keep", parameters: ["target": "store-a"]))
        .volume
      _ = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 7))
      h.storeA.kill()
      try FileManager.default.removeItem(atPath: h.storeA.nvmet)  // a reboot empties configfs
      try await h.restart(h.storeA)
      let status = try await h.controller.controllerGetVolume(.with { $0.volumeID = volume.volumeID })
      #expect(status.status.publishedNodeIds == [nodeID(7)])
      #expect(status.status.volumeCondition.abnormal == false)
      #expect(h.storeA.allowedHosts(ofVolume: volume.volumeID) == [hostNQN(7)])
    }
  }
}
