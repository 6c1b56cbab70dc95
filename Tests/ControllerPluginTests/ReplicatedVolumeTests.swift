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
      let name = String(repeating: "n", count: 250)  // fits a target alone, not with "~replica-1-255"
      await expectStatus(.invalidArgument, mentioning: "use a name of at most 239 bytes") {
        try await fleet.controller.createVolume(createRequest(name, parameters: Self.replicated))
      }
      let counts = try await fleet.volumeCounts()
      #expect(counts.isEmpty)
    }
  }

  @Test("names shaped like a leg's are refused")
  func reservedNames() async throws {
    try await Fleet.with(targets: 2) { fleet in
      await expectStatus(.invalidArgument, mentioning: "reserved") {
        try await fleet.controller.createVolume(createRequest("pvc-src~replica-1"))
      }
      let nothingCreated = try await fleet.volumeCounts().isEmpty
      #expect(nothingCreated)
    }
  }

  // MARK: snapshots, restores and clones

  /// A replicated volume whose legs carry md superblocks as `legs` says (nil: none).
  static func mirror(
    _ fleet: Fleet, name: String, legs: [(events: UInt64, roles: [UInt16], recovering: Bool)?]
  ) async throws -> VolumeID {
    let volume = try await fleet.controller.createVolume(
      createRequest(name, bytes: 64 * mebibyte, parameters: ["replicas": String(legs.count)])
    ).volume
    let id = try VolumeID(parsing: volume.volumeID)
    for (index, (leg, state)) in zip(id.legs, legs).enumerated() {
      guard let state else { continue }
      var superblock = MDSuperblockBytes()
      superblock.arrayUUID = id.uuid.bytes
      superblock.raidDisks = UInt32(legs.count)
      superblock.dataOffsetSectors = ReplicaLayout.dataOffsetBytes / 512
      superblock.devNumber = UInt32(index)
      superblock.events = state.events
      superblock.roles = state.roles
      if state.recovering { superblock.featureMap |= 2 }  // MD_FEATURE_RECOVERY_OFFSET
      try superblock.write(to: fleet.target(leg.target).local.dataPath(of: leg.uuid))
    }
    return id
  }

  @Test("a snapshot is taken of md's freshest in-sync leg, listed under the volume with its size, and found again")
  func snapshotOfCurrentLeg() async throws {
    try await Fleet.with(targets: 3) { fleet in
      // Leg 0 was failed: its own superblock is older, and leg 1's marks it faulty.
      let id = try await Self.mirror(
        fleet, name: "pvc-src", legs: [(10, [0, 1], false), (12, [0xfffe, 1], false)])
      let request = Csi_V1_CreateSnapshotRequest.with {
        $0.name = "snap-1"
        $0.sourceVolumeID = id.description
      }
      let snapshot = try await fleet.controller.createSnapshot(request).snapshot
      #expect(snapshot.sourceVolumeID == id.description)
      #expect(snapshot.sizeBytes == 64 * mebibyte, "the volume's size, not its leg's")
      let snapshotID = try ObjectID(parsing: snapshot.snapshotID, as: .snapshot)
      #expect(snapshotID.target == id.targets[1], "taken of leg 1, the one in sync")
      let recorded = try await fleet.target(id.targets[1]).local.agent.snapshots(matching: .init(uuid: snapshotID.uuid))
      #expect(recorded.map(\.sourceVolume) == [id.legs[1].uuid])

      let repeated = try await fleet.controller.createSnapshot(request).snapshot.snapshotID
      #expect(repeated == snapshot.snapshotID)
      let listed = try await fleet.controller.listSnapshots(.with { $0.sourceVolumeID = id.description })
      #expect(listed.entries.map(\.snapshot) == [snapshot])
      let all = try await fleet.controller.listSnapshots(.init())
      #expect(all.entries.map(\.snapshot.sourceVolumeID) == [id.description])
      let leg1Only = try await fleet.controller.listSnapshots(.with { $0.sourceVolumeID = id.legs[1].description })
      #expect(leg1Only.entries.isEmpty, "a leg's own ID is no volume with snapshots")
    }
  }

  @Test("ControllerGetVolume reads md's superblocks on the legs: a leg md failed, or one it resyncs, is reported")
  func conditionFromSuperblocks() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let stale = try await Self.mirror(
        fleet, name: "pvc-stale", legs: [(10, [0, 1], false), (12, [0xfffe, 1], false)])
      let degraded = try await fleet.controller.controllerGetVolume(.with { $0.volumeID = stale.description })
      #expect(degraded.status.volumeCondition.abnormal)
      #expect(
        degraded.status.volumeCondition.message
          == "degraded: leg 0 on \(stale.targets[0]): md failed it (its superblock is at event 10, the freshest at 12);"
          + " the node re-adds it when it answers")

      let resyncing = try await Self.mirror(
        fleet, name: "pvc-resync", legs: [(12, [0, 1], false), (12, [0, 1], true)])
      let condition = try await fleet.controller.controllerGetVolume(.with { $0.volumeID = resyncing.description })
        .status.volumeCondition
      #expect(condition.abnormal && condition.message.hasSuffix("leg 1 on \(resyncing.targets[1]): md is resyncing it"))

      let healthy = try await Self.mirror(fleet, name: "pvc-ok", legs: [(12, [0, 1], false), (12, [0, 1], false)])
      let normal = try await fleet.controller.controllerGetVolume(.with { $0.volumeID = healthy.description })
      #expect(
        normal.status.volumeCondition
          == .with { $0.message = "all 2 legs present and exported, in sync by md's superblocks" })
    }
  }

  @Test("no snapshot while md is catching up the only fresh-looking leg, or while a leg's target does not answer")
  func snapshotNeedsAKnownCurrentLeg() async throws {
    try await Fleet.with(targets: 2) { fleet in
      // Leg 0 went stale and leg 1 is being rebuilt: neither is known to hold the data.
      let id = try await Self.mirror(
        fleet, name: "pvc-src", legs: [(10, [0, 1], false), (12, [0, 1], true)])
      let request = Csi_V1_CreateSnapshotRequest.with {
        $0.name = "snap-1"
        $0.sourceVolumeID = id.description
      }
      await expectStatus(.unavailable, mentioning: "leg 0 active events 10, leg 1 recovering events 12") {
        try await fleet.controller.createSnapshot(request)
      }
      let down = fleet.target(id.targets[1])
      down.isDown = true
      // Its snapshot could be there (a retry must find it), and its leg could be the current one.
      await expectStatus(.unavailable, mentioning: "\(down.name) is unreachable") {
        try await fleet.controller.createSnapshot(request)
      }
      down.isDown = false
      for target in fleet.targets {
        let none = try await target.local.agent.snapshots(matching: .init()).isEmpty
        #expect(none)
      }
    }
  }

  @Test("a restore is a new set whose leg 0 is the snapshot's copy, next to it, seeding the node's mirror")
  func restore() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let id = try await Self.mirror(fleet, name: "pvc-src", legs: [(12, [0, 1], false), (12, [0, 1], false)])
      let snapshot = try await fleet.controller.createSnapshot(
        .with {
          $0.name = "snap-1"
          $0.sourceVolumeID = id.description
        }
      ).snapshot
      let snapshotID = try ObjectID(parsing: snapshot.snapshotID, as: .snapshot)
      var request = createRequest("pvc-restored", bytes: 64 * mebibyte, parameters: Self.replicated)
      request.volumeContentSource = .with { $0.snapshot = .with { $0.snapshotID = snapshot.snapshotID } }
      let restored = try await fleet.controller.createVolume(request).volume
      let copy = try VolumeID(parsing: restored.volumeID)
      #expect(copy.isReplicated && copy.uuid != id.uuid)
      #expect(copy.targets[0] == snapshotID.target, "leg 0 is a reflink copy, on the snapshot's target")
      #expect(restored.volumeContext[ReplicaLayout.seedKey] == id.uuid.value)
      #expect(restored.contentSource.snapshot.snapshotID == snapshot.snapshotID)
      #expect(restored.capacityBytes == 64 * mebibyte)
      // Leg 0 carries the source's data, md's superblock included; leg 1 is blank.
      let leg0 = try await fleet.target(copy.targets[0]).local.agent.mdSuperblock(of: copy.uuid)
      #expect(leg0?.arrayUUID == id.uuid)
      let leg1 = copy.legs[1]
      let blankLeg = try await fleet.target(leg1.target).local.agent.mdSuperblock(of: leg1.uuid)
      #expect(blankLeg == nil)

      let restoredAgain = try await fleet.controller.createVolume(request).volume.volumeID
      #expect(restoredAgain == restored.volumeID)
      var single = createRequest("pvc-single", bytes: 64 * mebibyte)
      single.volumeContentSource = request.volumeContentSource
      await expectStatus(.invalidArgument, mentioning: "copy of a replicated volume") {
        try await fleet.controller.createVolume(single)
      }
      // A snapshot of the restored volume before any node staged it: leg 0, still the seed.
      let again = try await fleet.controller.createSnapshot(
        .with {
          $0.name = "snap-of-copy"
          $0.sourceVolumeID = restored.volumeID
        }
      ).snapshot
      #expect(try ObjectID(parsing: again.snapshotID, as: .snapshot).target == copy.targets[0])
    }
  }

  @Test("a clone is seeded from the source's in-sync leg; a single volume's snapshot cannot seed a replicated one")
  func cloneAndRefusals() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let id = try await Self.mirror(fleet, name: "pvc-src", legs: [(7, [0, 1], false), (9, [0xfffe, 1], false)])
      var clone = createRequest("pvc-clone", bytes: 64 * mebibyte, parameters: Self.replicated)
      clone.volumeContentSource = .with { $0.volume = .with { $0.volumeID = id.description } }
      let volume = try await fleet.controller.createVolume(clone).volume
      let copy = try VolumeID(parsing: volume.volumeID)
      #expect(copy.targets[0] == id.targets[1], "copied from leg 1, the one in sync")
      #expect(volume.contentSource.volume.volumeID == id.description)
      let clonedAgain = try await fleet.controller.createVolume(clone).volume.volumeID
      #expect(clonedAgain == volume.volumeID)

      let single = try await fleet.controller.createVolume(createRequest("pvc-single", bytes: 64 * mebibyte)).volume
      let snapshot = try await fleet.controller.createSnapshot(
        .with {
          $0.name = "snap-single"
          $0.sourceVolumeID = single.volumeID
        }
      ).snapshot
      var restore = createRequest("pvc-r", bytes: 64 * mebibyte, parameters: Self.replicated)
      restore.volumeContentSource = .with { $0.snapshot = .with { $0.snapshotID = snapshot.snapshotID } }
      await expectStatus(.invalidArgument, mentioning: "only be restored or cloned from a replicated volume") {
        try await fleet.controller.createVolume(restore)
      }
      let refused = try await fleet.volumeCounts()["pvc-r"]
      #expect(refused == nil)
    }
  }
}
