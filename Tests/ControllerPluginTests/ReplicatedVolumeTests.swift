import CSIProto
import GRPCCore
import NVMeCSICore
import TargetContract
import TestSupport
import Testing

/// Replicated volumes at the controller (docs/architecture.md, "Replicated volumes"):
/// legs on distinct targets and failure domains, one CSI volume for the set.
@Suite("Replicated volumes: legs on different targets")
struct ReplicatedVolumeTests {
  static let replicated = ["replicas": "2"]

  @Test("replicas=2 puts a leg on each of two targets, each md's overhead bigger; a repeat returns the same volume")
  func create() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let request = createRequest("pvc-mirror", bytes: 64 * mebibyte, parameters: Self.replicated)
      let volume = try await fleet.controller.createVolume(request).volume
      let id = try VolumeID(parsing: volume.volumeID)
      #expect(id.isReplicated && id.targets.count == 2 && Set(id.targets).count == 2)
      #expect(volume.volumeID.hasPrefix("r1.\(id.uuid)."))
      #expect(volume.capacityBytes == 64 * mebibyte, "the volume has the size asked for")
      #expect(volume.volumeContext["replicas"] == "2")
      // Defaults for legs: md must see a dead leg fail in seconds, and it must come back by itself.
      #expect(volume.volumeContext["fastIoFailTmo"] == "2" && volume.volumeContext["ctrlLossTmo"] == "-1")
      for (index, leg) in id.legs.enumerated() {
        let record = try await fleet.target(leg.target).local.agent.volume(leg.uuid).record
        #expect(record.sizeBytes == ReplicaLayout.legBytes(forVolume: 64 << 20))
        #expect(record.name == ReplicaLayout.legName("pvc-mirror", index: index))
      }
      #expect(id.legs[1].uuid != id.uuid, "each leg has its own subsystem")

      let again = try await fleet.controller.createVolume(request).volume
      #expect(again.volumeID == volume.volumeID)
      #expect(try await fleet.volumeCounts().values.reduce(0, +) == 2, "no third leg")

      await expectStatus(.alreadyExists, mentioning: "parameters") {
        try await fleet.controller.createVolume(createRequest("pvc-mirror", bytes: 64 * mebibyte))
      }
    }
  }

  @Test("legs go to different failure domains; with too few domains the create is ResourceExhausted")
  func failureDomains() async throws {
    try await Fleet.with(targets: 3, domains: ["rack-1", "rack-1", "rack-2"]) { fleet in
      for n in 0..<6 {
        let volume = try await fleet.controller.createVolume(
          createRequest("pvc-\(n)", bytes: mebibyte, parameters: Self.replicated)
        ).volume
        let targets = try VolumeID(parsing: volume.volumeID).targets.map(\.value)
        #expect(targets.contains("store-2"), "one leg in rack-2: \(targets)")
      }
      await expectStatus(.resourceExhausted, mentioning: "3 targets in different failure domains") {
        try await fleet.controller.createVolume(
          createRequest("pvc-three-legs", bytes: mebibyte, parameters: ["replicas": "3"]))
      }
    }
  }

  @Test("publish allows the node on every leg and names each in publish_context; unpublish revokes every leg")
  func publish() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let volume = try await fleet.controller.createVolume(
        createRequest("pvc-pub", parameters: Self.replicated)
      ).volume
      let id = try VolumeID(parsing: volume.volumeID)
      let response = try await fleet.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
      let context = try PublishContext(decoding: response.publishContext)
      #expect(context.legs.map(\.subsystemNQN) == id.legs.map { SubsystemNaming.nqn(for: $0.uuid) })
      for leg in id.legs {
        let record = try await fleet.target(leg.target).local.agent.volume(leg.uuid).record
        #expect(record.publications.map(\.nodeID.description) == [nodeID(1)])
      }
      // Single-node: a second node is refused on the legs as on any volume.
      await expectStatus(.failedPrecondition) {
        try await fleet.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 2))
      }
      _ = try await fleet.controller.controllerUnpublishVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.nodeID = nodeID(1)
        })
      for leg in id.legs {
        #expect(try await fleet.target(leg.target).local.agent.volume(leg.uuid).record.publications.isEmpty)
      }
    }
  }

  @Test("the set is listed once, under its own ID, and deleted leg by leg; a repeated delete succeeds")
  func listAndDelete() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let mirrored = try await fleet.controller.createVolume(
        createRequest("pvc-list", parameters: ["replicas": "3"])
      ).volume
      let single = try await fleet.controller.createVolume(createRequest("pvc-single")).volume
      for pageSize in [0, 1] {
        var ids: [String] = []
        var token = ""
        repeat {
          let page = try await fleet.controller.listVolumes(
            .with {
              $0.maxEntries = Int32(pageSize)
              $0.startingToken = token
            })
          ids += page.entries.map(\.volume.volumeID)
          token = page.nextToken
        } while !token.isEmpty
        #expect(ids.sorted() == [mirrored.volumeID, single.volumeID].sorted(), "pages of \(pageSize)")
      }
      let status = try await fleet.controller.controllerGetVolume(.with { $0.volumeID = mirrored.volumeID })
      #expect(status.volume.capacityBytes == mirrored.capacityBytes)
      #expect(status.status.volumeCondition.abnormal == false)

      for _ in 0..<2 { _ = try await fleet.controller.deleteVolume(.with { $0.volumeID = mirrored.volumeID }) }
      #expect(try await fleet.volumeCounts() == ["pvc-single": 1])
      // The name is free again.
      let again = try await fleet.controller.createVolume(createRequest("pvc-list", parameters: ["replicas": "3"]))
      #expect(again.volume.volumeID != mirrored.volumeID)
    }
  }

  @Test("a leg is never deleted alone: not by its own v1 ID, not by a made-up set ID naming other targets")
  func legsGoOnlyWithTheirVolume() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let volume = try await fleet.controller.createVolume(createRequest("pvc-legs", parameters: Self.replicated))
        .volume
      let id = try VolumeID(parsing: volume.volumeID)
      await expectStatus(.failedPrecondition, mentioning: "is a leg of replicated volume \(id)") {
        try await fleet.controller.deleteVolume(.with { $0.volumeID = id.legs[1].description })
      }
      let other = fleet.targets.map(\.name).first { !id.targets.contains($0) }!
      let madeUp = try VolumeID(replicated: id.uuid, on: [id.targets[0], other])
      _ = try await fleet.controller.deleteVolume(.with { $0.volumeID = madeUp.description })
      #expect(try await fleet.volumeCounts().values.reduce(0, +) == 2, "both legs still there")
    }
  }

  @Test("ControllerGetVolume reports a leg whose target does not answer; deleting then waits for it")
  func legDown() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let volume = try await fleet.controller.createVolume(createRequest("pvc-down", parameters: Self.replicated))
        .volume
      let id = try VolumeID(parsing: volume.volumeID)
      let down = fleet.target(id.targets[1])
      down.isDown = true
      let status = try await fleet.controller.controllerGetVolume(.with { $0.volumeID = volume.volumeID })
      #expect(status.status.volumeCondition.abnormal)
      #expect(status.status.volumeCondition.message.hasPrefix("degraded: leg 1 on \(down.name)"))
      await expectStatus(.unavailable) {
        try await fleet.controller.deleteVolume(.with { $0.volumeID = volume.volumeID })
      }
      down.isDown = false
      _ = try await fleet.controller.deleteVolume(.with { $0.volumeID = volume.volumeID })
      #expect(try await fleet.volumeCounts().isEmpty)
    }
  }

  @Test("expansion grows every leg by md's overhead and always needs the node (md grows there)")
  func expand() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let volume = try await fleet.controller.createVolume(
        createRequest("pvc-grow", bytes: 64 * mebibyte, capability: blockCapability(), parameters: Self.replicated)
      ).volume
      let response = try await fleet.controller.controllerExpandVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.capacityRange = .with { $0.requiredBytes = 128 * mebibyte }
          $0.volumeCapability = blockCapability()
        })
      #expect(response.capacityBytes == 128 * mebibyte)
      #expect(response.nodeExpansionRequired, "md must grow on the node even for a block volume")
      for leg in try VolumeID(parsing: volume.volumeID).legs {
        let record = try await fleet.target(leg.target).local.agent.volume(leg.uuid).record
        #expect(record.sizeBytes == ReplicaLayout.legBytes(forVolume: 128 << 20))
      }
    }
  }

  @Test(
    "what replicated volumes cannot do is refused with its reason, and creates nothing",
    arguments: [
      (["replicas": "4"], "replicas=\"4\" is out of range"),
      (["replicas": "two"], "out of range"),
      (["replicas": "2", "target": "store-0"], "exclude each other"),
    ])
  func refusedParameters(parameters: [String: String], fragment: String) async throws {
    try await Fleet.with(targets: 3) { fleet in
      await expectStatus(.invalidArgument, mentioning: fragment) {
        try await fleet.controller.createVolume(createRequest("pvc-bad", parameters: parameters))
      }
      let counts = try await fleet.volumeCounts()
      #expect(counts.isEmpty)
    }
  }

  @Test("a name too long for its legs' names is refused before any leg exists")
  func nameTooLongForLegs() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let name = String(repeating: "n", count: 250)  // fits a target alone, not with "~replica-1"
      await expectStatus(.invalidArgument, mentioning: "use a name of at most 243 bytes") {
        try await fleet.controller.createVolume(createRequest(name, parameters: Self.replicated))
      }
      let counts = try await fleet.volumeCounts()
      #expect(counts.isEmpty)
    }
  }

  @Test("snapshots and clones of a replicated volume, and names shaped like a leg's, are refused")
  func refusedOperations() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let volume = try await fleet.controller.createVolume(createRequest("pvc-src", parameters: Self.replicated))
        .volume
      await expectStatus(.failedPrecondition, mentioning: "not supported yet") {
        try await fleet.controller.createSnapshot(
          .with {
            $0.name = "snap"
            $0.sourceVolumeID = volume.volumeID
          })
      }
      var clone = createRequest("pvc-clone")
      clone.volumeContentSource = .with { $0.volume = .with { $0.volumeID = volume.volumeID } }
      await expectStatus(.failedPrecondition, mentioning: "not supported yet") {
        try await fleet.controller.createVolume(clone)
      }
      await expectStatus(.invalidArgument, mentioning: "reserved") {
        try await fleet.controller.createVolume(createRequest("pvc-src~replica-1"))
      }
      #expect(try await fleet.volumeCounts().count == 2)
    }
  }
}
