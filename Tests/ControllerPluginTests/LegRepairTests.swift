import CSIProto
import GRPCCore
import Logging
import NVMeCSICore
import TargetContract
import TestSupport
import Testing

@testable import ControllerPlugin

/// Repair of a replicated volume's lost leg (docs/architecture.md, "Repairing a lost leg").
@Suite("Replicated volumes: a lost leg replaced on another target")
struct LegRepairTests {
  static let replicated = ["replicas": "2"]

  /// A published 2-leg volume and a target that holds no leg of it (nil with two targets).
  private func publishedVolume(_ fleet: Fleet, name: String = "pvc-repair") async throws -> (
    VolumeID, SwitchableTarget?
  ) {
    let volume = try await fleet.controller.createVolume(
      createRequest(name, bytes: 64 * mebibyte, parameters: Self.replicated)
    ).volume
    let id = try VolumeID(parsing: volume.volumeID)
    _ = try await fleet.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 1))
    return (id, fleet.targets.first { !id.targets.contains($0.name) })
  }

  @Test("a leg whose target is lost is replaced by a blank leg on the third target; the map reaches every leg")
  func repairLostLeg() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      let lost = fleet.target(id.targets[1])
      lost.isDown = true

      let map = try await fleet.service.repairVolume(id, leg: 1, to: nil)
      #expect(map.version == 1)
      #expect(map.legs.map(\.target) == [id.targets[0], spare.name])
      #expect(map.legs.map(\.generation) == [0, 1])
      #expect(map.replaced == [LegMap.ReplacedLeg(index: 1, target: lost.name, generation: 0)])
      #expect(map.legs[1].portals == (try await spare.local.agent.info().portals), "nodes learn where to connect")

      // The surviving leg and the new one both carry the map; the new leg is blank, the
      // volume's size, named as a replacement, and its node may attach it.
      let survivorMap = try await fleet.target(id.targets[0]).local.agent.legMap(of: id.uuid)
      #expect(survivorMap == map)
      let newLeg = ReplicaLayout.legUUID(of: id.uuid, index: 1, generation: 1)
      let created = try await spare.local.agent.volume(newLeg).record
      #expect(created.name == "pvc-repair~replica-1-1")
      #expect(created.sizeBytes == ReplicaLayout.legBytes(forVolume: 64 << 20))
      #expect(created.attributes["replica/generation"] == "1" && created.attributes["replica/index"] == "1")
      #expect(created.publications.map(\.nodeID.description) == [nodeID(1)])
      let newMap = try await spare.local.agent.legMap(of: newLeg)
      #expect(newMap == map)
      #expect(try await spare.local.agent.mdSuperblock(of: newLeg) == nil, "blank: md copies the data onto it")

      // The volume keeps its ID; publishing it now names the new leg.
      let context = try await fleet.controller.controllerPublishVolume(publishRequest(id.description, node: 1))
        .publishContext
      #expect(context["leg1/subsystemNQN"] == SubsystemNaming.nqn(for: newLeg))
      #expect(context["legMapVersion"] == "1")
      let status = try await fleet.controller.controllerGetVolume(.with { $0.volumeID = id.description }).status
      #expect(status.volumeCondition.abnormal == false, "\(status.volumeCondition.message)")

      await expectError(.failedPrecondition, mentioning: "present and its target answers") {
        _ = try await fleet.service.repairVolume(id, leg: 1, to: nil)
      }
    }
  }

  @Test("an unpublish while a repair runs is refused (retried), and after it no leg allows the node")
  func unpublishDuringRepair() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      let unpublish = unpublishRequest(id.description, node: 1)
      let map = try await duringHeldRepair(of: id, lost: fleet.target(id.targets[1]), spare: spare, fleet: fleet) {
        try await fleet.controller.controllerUnpublishVolume(unpublish)
      }
      for leg in map.legIDs {
        let volume = try await fleet.target(leg.target).local.agent.volume(leg.uuid)
        #expect(volume.record.publications.isEmpty, "\(leg) still allows \(volume.record.publications)")
      }
    }
  }

  @Test("a delete while a repair runs is refused (retried), and after it no leg of the volume is left")
  func deleteDuringRepair() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      _ = try await fleet.controller.controllerUnpublishVolume(unpublishRequest(id.description, node: 1))
      let delete = Csi_V1_DeleteVolumeRequest.with { $0.volumeID = id.description }
      _ = try await duringHeldRepair(of: id, lost: fleet.target(id.targets[1]), spare: spare, fleet: fleet) {
        try await fleet.controller.deleteVolume(delete)
      }
      let left = try await spare.local.agent.volumes(named: nil).map(\.record.name)
      #expect(left.isEmpty, "the repair's new leg outlived its volume: \(left)")
      #expect(try await fleet.target(id.targets[0]).local.agent.volumes(named: nil).isEmpty)
    }
  }

  @Test("an expand while a repair runs is refused (retried), and after it every leg has the new size")
  func expandDuringRepair() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      let expand = Csi_V1_ControllerExpandVolumeRequest.with {
        $0.volumeID = id.description
        $0.capacityRange = .with { $0.requiredBytes = 128 * mebibyte }
      }
      let map = try await duringHeldRepair(of: id, lost: fleet.target(id.targets[1]), spare: spare, fleet: fleet) {
        try await fleet.controller.controllerExpandVolume(expand)
      }
      for leg in map.legIDs {
        let volume = try await fleet.target(leg.target).local.agent.volume(leg.uuid)
        #expect(volume.record.sizeBytes == ReplicaLayout.legBytes(forVolume: 128 << 20), "\(leg)")
      }
    }
  }

  @Test("settings changed with ControllerModifyVolume survive a repair of leg 0")
  func modifiedSettingsSurviveRepairOfLegZero() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, _) = try await publishedVolume(fleet)
      _ = try await fleet.controller.controllerModifyVolume(
        .with {
          $0.volumeID = id.description
          $0.mutableParameters = ["ctrlLossTmo": "-1"]
        })
      _ = try await fleet.controller.controllerUnpublishVolume(unpublishRequest(id.description, node: 1))
      fleet.target(id.targets[0]).isDown = true
      _ = try await fleet.service.repairVolume(id, leg: 0, to: nil)

      let context = try await fleet.controller.controllerPublishVolume(publishRequest(id.description, node: 1))
        .publishContext
      #expect(context["ctrlLossTmo"] == "-1")
    }
  }

  @Test("a snapshot while a repair runs is refused (retried), and after it is taken of a leg in sync")
  func snapshotDuringRepair() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      let snapshot = Csi_V1_CreateSnapshotRequest.with {
        $0.name = "snap-during-repair"
        $0.sourceVolumeID = id.description
      }
      _ = try await duringHeldRepair(of: id, lost: fleet.target(id.targets[1]), spare: spare, fleet: fleet) {
        try await fleet.controller.createSnapshot(snapshot)
      }
      let taken = try await fleet.target(id.targets[0]).local.agent.snapshots(matching: .init())
      #expect(taken.map(\.sourceVolume) == [id.legs[0].uuid], "the surviving leg, not the blank new one")
    }
  }

  @Test("a clone while a repair runs is seeded from the surviving leg: the replacement not made yet is blank")
  func cloneDuringRepair() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      let repair = try await heldRepair(of: id, leg: 1, spare: spare, fleet: fleet)
      // The map names the replacement on the spare, which does not hold it yet. Before,
      // this answered NotFound ("volume … does not exist") for a source that exists.
      let source = try await fleet.service.currentLeg(of: id)
      #expect(source.leg == id.legs[0], "the surviving leg, not the replacement")
      spare.holdsCreates = false
      _ = try await repair.value
      // A name whose home is up: one homed on the lost target is refused by design.
      let name = (0...).lazy.map { "pvc-clone-\($0)" }.first {
        TargetSet.home(of: $0, among: fleet.names) != id.targets[1]
      }!
      var clone = createRequest(name, bytes: 64 * mebibyte, parameters: Self.replicated)
      clone.volumeContentSource = .with { $0.volume = .with { $0.volumeID = id.description } }
      let copy = try VolumeID(parsing: try await fleet.controller.createVolume(clone).volume.volumeID)
      #expect(copy.targets[0] == id.targets[0], "seeded from the surviving leg, not the blank new one")
    }
  }

  @Test("a copy while leg 0 of a volume never staged is being replaced waits for the repair: that leg held its data")
  func copyDuringRepairOfLegZero() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      let repair = try await heldRepair(of: id, leg: 0, spare: spare, fleet: fleet)
      await expectError(.unavailable, mentioning: "being replaced") { _ = try await fleet.service.currentLeg(of: id) }
      spare.holdsCreates = false
      _ = try await repair.value
    }
  }

  /// Loses leg `index`'s target and starts its repair, held just before it makes the new
  /// leg on `spare`; `spare.holdsCreates = false` lets it go on.
  private func heldRepair(of id: VolumeID, leg index: Int, spare: SwitchableTarget, fleet: Fleet) async throws
    -> Task<LegMap, any Error>
  {
    fleet.target(id.targets[index]).isDown = true
    spare.holdsCreates = true
    let repair = Task { try await fleet.service.repairVolume(id, leg: index, to: nil) }
    let deadline = ContinuousClock.now + .seconds(30)
    while spare.waitingCreates == 0 {
      guard ContinuousClock.now < deadline else {
        spare.holdsCreates = false
        _ = try await repair.value  // its error, if it failed before making the new leg
        throw HarnessError("the repair made its new leg elsewhere than on \(spare.name)")
      }
      try await Task.sleep(for: .milliseconds(5))
    }
    return repair
  }

  /// Loses `lost`, and runs `call` while the repair of its leg is held just before it
  /// makes the new leg on `spare` (and allows the volume's nodes there): `call` must be
  /// refused with Aborted then. Like the CO, calls it again after the repair if it was
  /// refused. Answers the repaired map.
  private func duringHeldRepair(
    of id: VolumeID, lost: SwitchableTarget, spare: SwitchableTarget, fleet: Fleet,
    _ call: () async throws -> some Any
  ) async throws -> LegMap {
    let repair = try await heldRepair(of: id, leg: id.targets.firstIndex(of: lost.name)!, spare: spare, fleet: fleet)
    let refused: Bool
    do {
      _ = try await call()
      refused = false
    } catch let error as RPCError where error.code == .aborted {
      refused = true
    }
    #expect(refused, "a call that changes the legs' access while a repair runs must wait for it")
    spare.holdsCreates = false
    let map = try await repair.value
    if refused { _ = try await call() }
    return map
  }

  @Test("a new controller finds the repaired legs through the ID's surviving leg, even with the lost target back")
  func resolvedAfterRestart() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      fleet.target(id.targets[1]).isDown = true
      _ = try await fleet.service.repairVolume(id, leg: 1, to: nil)
      fleet.target(id.targets[1]).isDown = false

      let restarted = ControllerService(
        targets: TargetSet(fleet.targets.map { StorageTarget(name: $0.name, topology: [:], api: $0) }),
        logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
      let map = try await restarted.currentLegMap(of: id)
      #expect(map.version == 1 && map.legs[1].target == spare.name)
    }
  }

  /// A published volume whose leg 1's target is lost and repaired, then unpublished and
  /// deleted while that target is still down; the target back (its leg left there).
  private func deletedWhileLost(_ fleet: Fleet) async throws -> (VolumeID, SwitchableTarget?) {
    let (id, spare) = try await publishedVolume(fleet)
    let lost = fleet.target(id.targets[1])
    lost.isDown = true
    _ = try await fleet.service.repairVolume(id, leg: 1, to: nil)
    _ = try await fleet.controller.controllerUnpublishVolume(unpublishRequest(id.description, node: 1))
    _ = try await fleet.controller.deleteVolume(.with { $0.volumeID = id.description })
    lost.isDown = false
    return (id, spare)
  }

  @Test("delete removes the current legs and the replaced one; a replaced leg on a target still down is left")
  func deleteAfterRepair() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await deletedWhileLost(fleet)
      let spare = try #require(spareTarget)
      let left = try await fleet.volumeCounts()
      #expect(left == ["pvc-repair~replica-1": 1], "only the lost leg, whose target was down, is left: \(left)")
      #expect(try await spare.local.agent.volumes(named: nil).isEmpty)
      // What the warning says to do: delete the volume's ID again. The left leg still
      // allows the node the unpublish could not reach; it is revoked and deleted.
      _ = try await fleet.controller.deleteVolume(.with { $0.volumeID = id.description })
      #expect(try await fleet.volumeCounts().isEmpty)
    }
  }

  @Test("a controller that never saw the repair cannot tell the left leg was replaced: it asks for the unpublish first")
  func deleteLeftLegFromAnotherController() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, _) = try await deletedWhileLost(fleet)
      // The map naming the leg as replaced went with the deleted legs: to this controller
      // the left leg is a current one, which a node may still use.
      let fresh = ControllerService(
        targets: TargetSet(fleet.targets.map { StorageTarget(name: $0.name, topology: [:], api: $0) }),
        logger: Logger(label: "test.fresh") { _ in SwiftLogNoOpLogHandler() })
      await expectError(.failedPrecondition, mentioning: "unpublish it first") {
        _ = try await fresh.deleteReplicated(id)
      }
      #expect(try await fleet.volumeCounts() == ["pvc-repair~replica-1": 1], "nothing deleted on doubt")
      // As the operator would: `nvme-csi ctl unpublish` for the node the message names.
      let context = ServerContext(
        descriptor: MethodDescriptor(fullyQualifiedService: "test", method: "ControllerUnpublishVolume"),
        remotePeer: "in-process:test", localPeer: "in-process:test", cancellation: .init())
      _ = try await fresh.controllerUnpublishVolume(
        request: unpublishRequest(id.description, node: 1), context: context)
      _ = try await fresh.deleteReplicated(id)
      #expect(try await fleet.volumeCounts().isEmpty)
    }
  }

  @Test("delete with the lost target back removes every leg the volume ever had")
  func deleteEverything() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, _) = try await publishedVolume(fleet)
      fleet.target(id.targets[1]).isDown = true
      _ = try await fleet.service.repairVolume(id, leg: 1, to: nil)
      fleet.target(id.targets[1]).isDown = false
      _ = try await fleet.controller.controllerUnpublishVolume(.with { $0.volumeID = id.description })
      _ = try await fleet.controller.deleteVolume(.with { $0.volumeID = id.description })
      let left = try await fleet.volumeCounts()
      #expect(left.isEmpty, "\(left)")
    }
  }

  @Test("leg 0 (which carries the name) can be replaced too; the name still finds the volume")
  func repairLegZero() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      fleet.target(id.targets[0]).isDown = true
      let map = try await fleet.service.repairVolume(id, leg: 0, to: spare.name)
      #expect(map.legs.map(\.target) == [spare.name, id.targets[1]])
      let created = try await spare.local.agent.volume(ReplicaLayout.legUUID(of: id.uuid, index: 0, generation: 1))
      #expect(created.record.name == "pvc-repair~replica-0-1", "a replacement never carries the name's placement")
      let expanded = try await fleet.controller.controllerExpandVolume(
        .with {
          $0.volumeID = id.description
          $0.capacityRange = .with { $0.requiredBytes = 96 * mebibyte }
        })
      #expect(expanded.capacityBytes == 96 * mebibyte, "every current leg grows")
    }
  }

  @Test("an interrupted repair (map written, leg not made) is finished on its chosen target")
  func interruptedRepair() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      fleet.target(id.targets[1]).isDown = true
      let portals = try await spare.local.agent.info().portals
      let intended = try LegMap(implied: id).replacing(leg: 1, with: spare.name, portals: portals)
      try await fleet.target(id.targets[0]).local.agent.writeLegMap(intended, to: id.uuid)

      let map = try await fleet.service.repairVolume(id, leg: 1, to: nil)
      #expect(map == intended)
      let leg = ReplicaLayout.legUUID(of: id.uuid, index: 1, generation: 1)
      #expect(try await spare.local.agent.volume(leg).record.publications.count == 1)
    }
  }

  @Test("refused: a healthy leg, a survivor down, a single copy, a bad leg or target; nothing changes")
  func refusals() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      await expectError(.failedPrecondition, mentioning: "lost leg only") {
        _ = try await fleet.service.repairVolume(id, leg: 1, to: nil)
      }
      fleet.target(id.targets[0]).isDown = true
      fleet.target(id.targets[1]).isDown = true
      await expectError(.unavailable, mentioning: "no leg's target answers") {
        _ = try await fleet.service.repairVolume(id, leg: 1, to: nil)
      }
      fleet.target(id.targets[0]).isDown = false
      await expectError(.invalidArgument, mentioning: "legs 0 to 1") {
        _ = try await fleet.service.repairVolume(id, leg: 2, to: nil)
      }
      await expectError(.failedPrecondition, mentioning: "holds a leg of the volume") {
        _ = try await fleet.service.repairVolume(id, leg: 1, to: id.targets[0])
      }
      await expectError(.invalidArgument, mentioning: "not in the targets file") {
        _ = try await fleet.service.repairVolume(id, leg: 1, to: try TargetName("elsewhere"))
      }
      // A name whose home is up: one homed on the down target is refused by design.
      let name = (0...).lazy.map { "pvc-single-\($0)" }.first {
        TargetSet.home(of: $0, among: fleet.names) != id.targets[1]
      }!
      let single = try await fleet.controller.createVolume(createRequest(name)).volume
      await expectError(.invalidArgument, mentioning: "single-copy") {
        _ = try await fleet.service.repairVolume(try VolumeID(parsing: single.volumeID), leg: 0, to: nil)
      }
      #expect(try await fleet.target(id.targets[0]).local.agent.legMap(of: id.uuid) == nil, "no map written")
      #expect(try await spare.local.agent.volumes(named: nil).count <= 1, "no leg made (at most the single volume)")
    }
  }

  @Test("every other leg must answer, since the new map is written to each first")
  func survivorDown() async throws {
    try await Fleet.with(targets: 4) { fleet in
      let volume = try await fleet.controller.createVolume(
        createRequest("pvc-three", bytes: 64 * mebibyte, parameters: ["replicas": "3"])
      ).volume
      let id = try VolumeID(parsing: volume.volumeID)
      fleet.target(id.targets[1]).isDown = true
      fleet.target(id.targets[2]).isDown = true
      await expectError(.unavailable, mentioning: "must all answer") {
        _ = try await fleet.service.repairVolume(id, leg: 1, to: nil)
      }
      #expect(try await fleet.target(id.targets[0]).local.agent.legMap(of: id.uuid) == nil, "no map written")
    }
  }

  @Test("with two targets there is nowhere to put a new leg: ResourceExhausted, nothing written")
  func nowhereToGo() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let (id, _) = try await publishedVolume(fleet)
      fleet.target(id.targets[1]).isDown = true
      await expectError(.resourceExhausted, mentioning: "no target can take leg 1") {
        _ = try await fleet.service.repairVolume(id, leg: 1, to: nil)
      }
      #expect(try await fleet.target(id.targets[0]).local.agent.legMap(of: id.uuid) == nil)
    }
  }

  @Test("the controller repairs by itself only once a target has been gone past the grace period, then stops scanning")
  func gracePeriod() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (id, spareTarget) = try await publishedVolume(fleet)
      let spare = try #require(spareTarget)
      let lost = fleet.target(id.targets[1])
      lost.isDown = true
      let start = ContinuousClock.now
      var state = await fleet.service.repairLostLegs(LegRepairState(), grace: .seconds(600), now: start)
      #expect(state.down == [lost.name: start] && state.scanned)
      state = await fleet.service.repairLostLegs(state, grace: .seconds(600), now: start + .seconds(599))
      #expect(try await spare.local.agent.volumes(named: nil).isEmpty, "within the grace period nothing is repaired")

      state = await fleet.service.repairLostLegs(state, grace: .seconds(600), now: start + .seconds(601))
      let map = try await fleet.service.currentLegMap(of: id)
      #expect(map.version == 1 && map.legs[1].target == spare.name)
      #expect(state.settled == [lost.name], "nothing left on the lost target")
      // Once repaired, later passes leave the volume alone and do not scan again.
      let listings = spare.volumePageCalls
      state = await fleet.service.repairLostLegs(state, grace: .seconds(600), now: start + .seconds(700))
      #expect(try await fleet.service.currentLegMap(of: id).version == 1)
      #expect(spare.volumePageCalls == listings, "no scan while the lost target is settled")
      // The target returns: it is no longer down.
      lost.isDown = false
      state = await fleet.service.repairLostLegs(state, grace: .seconds(600), now: start + .seconds(800))
      #expect(state.down.isEmpty && state.settled.isEmpty)
    }
  }
}

/// Expects the controller's own error (a direct call, not over gRPC) of `kind`.
private func expectError(
  _ kind: NVMeCSIError.Kind, mentioning fragment: String, sourceLocation: SourceLocation = #_sourceLocation,
  _ body: () async throws -> Void
) async {
  do {
    try await body()
    Issue.record("expected \(kind), but the call succeeded", sourceLocation: sourceLocation)
  } catch let error as NVMeCSIError {
    #expect(error.kind == kind, "message: \(error.message)", sourceLocation: sourceLocation)
    #expect(
      error.message.contains(fragment), "\(error.message) should mention \(fragment)", sourceLocation: sourceLocation)
  } catch {
    Issue.record("expected \(kind), got \(error)", sourceLocation: sourceLocation)
  }
}
