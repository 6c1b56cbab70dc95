import Foundation
import GRPCCore
import NVMeCSICore
import TargetAgent
import TargetContract
import TargetProto
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

  @Test(
    "ListSnapshots without a filter pages the index: max_entries bounded, a bad starting_after refused, filters as before"
  )
  func listSnapshotsPaging() async throws {
    try await withTarget(.inProcess) { api, target in
      let volume = try await api.createVolume(newVolume("pvc-ls")).volume
      let other = try await api.createVolume(newVolume("pvc-ls2")).volume
      var uuids: [String] = []
      for i in 0..<3 {
        uuids.append(try await api.createSnapshot(named: "s-\(i)", of: volume.uuid).snapshot.uuid.value)
      }
      let lone = try await api.createSnapshot(named: "s-other", of: other.uuid).snapshot.uuid.value
      uuids = (uuids + [lone]).sorted()
      let service = TargetService(target: target.agent)
      let context = ServerContext(
        descriptor: MethodDescriptor(fullyQualifiedService: "test", method: "ListSnapshots"),
        remotePeer: "in-process:test", localPeer: "in-process:test", cancellation: .init())
      // A client that sends no max_entries (an older controller) gets every snapshot.
      let everything = try await service.listSnapshots(request: .init(), context: context)
      #expect(everything.snapshots.map(\.uuid) == uuids && everything.nextStartingAfter.isEmpty)
      let first = try await service.listSnapshots(request: .with { $0.maxEntries = 3 }, context: context)
      #expect(first.snapshots.map(\.uuid) == Array(uuids.prefix(3)) && first.nextStartingAfter == uuids[2])
      let rest = try await service.listSnapshots(
        request: .with {
          $0.maxEntries = UInt32.max
          $0.startingAfter = first.nextStartingAfter
        }, context: context)
      #expect(rest.snapshots.map(\.uuid) == [uuids[3]] && rest.nextStartingAfter.isEmpty)
      await expectError(.invalidArgument, mentioning: ["UUID"]) {
        try await service.listSnapshots(request: .with { $0.startingAfter = "../etc" }, context: context)
      }
      let ofSource = try await service.listSnapshots(
        request: .with {
          $0.sourceVolumeUuid = volume.uuid.value
          $0.maxEntries = 2
        }, context: context)
      #expect(ofSource.snapshots.count == 2 && !ofSource.nextStartingAfter.isEmpty)
      #expect(ofSource.snapshots.allSatisfy { $0.sourceVolumeUuid == volume.uuid.value })
    }
  }

  @Test("An md superblock crosses the wire unchanged; a malformed answer is refused, not guessed at")
  func mdSuperblockOnTheWire() throws {
    let roles: [MDSuperblock.Role] = [.active(slot: 0), .active(slot: 2), .spare, .faulty, .journal]
    for role in roles {
      let superblock = MDSuperblock(
        arrayUUID: .random(), deviceUUID: .random(), events: .max, legCount: 3, level: -1,
        dataOffsetBytes: 4 * MiB, role: role, isRecovering: true)
      let answer = Nvmecsi_Target_V1_ReadMDSuperblockResponse(superblock)
      #expect(try answer.superblockIfPresent() == superblock)
    }
    #expect(try Nvmecsi_Target_V1_ReadMDSuperblockResponse(nil).superblockIfPresent() == nil)

    // Present, yet empty: no UUIDs.
    var empty = Nvmecsi_Target_V1_ReadMDSuperblockResponse()
    empty.present = true
    expectError(.invalidArgument) { try empty.superblockIfPresent() }
    var unknownRole = Nvmecsi_Target_V1_ReadMDSuperblockResponse(
      MDSuperblock(
        arrayUUID: .random(), deviceUUID: .random(), events: 1, legCount: 2, level: 1, dataOffsetBytes: 0,
        role: .spare, isRecovering: false))
    unknownRole.superblock.role = .UNRECOGNIZED(9)
    expectError(.invalidArgument, mentioning: ["role"]) { try unknownRole.superblockIfPresent() }
    unknownRole.superblock.role = .unspecified
    expectError(.invalidArgument, mentioning: ["role"]) { try unknownRole.superblockIfPresent() }
  }

  @Test(
    "A leg map block of the wrong size, damaged, empty or foreign on the wire is invalidArgument and writes nothing")
  func legMapBlockOnTheWire() async throws {
    try await withTarget(.inProcess) { api, target in
      let set = ObjectUUID.random()
      let leg = try await TargetAPIContractTests.createLeg(api, of: set)
      let map = try TargetAPIContractTests.legMap(of: set, version: 1)
      let block = try map.block()
      let service = TargetService(target: target.agent)
      let context = ServerContext(
        descriptor: MethodDescriptor(fullyQualifiedService: "test", method: "WriteLegMap"),
        remotePeer: "in-process:test", localPeer: "in-process:test", cancellation: .init())
      var damaged = block
      damaged[30] ^= 0x01
      var foreign = block
      foreign[0] ^= 0xff
      let bad: [(bytes: [UInt8], fragment: String)] = [
        ([], "4096"), (Array(block.prefix(512)), "512"), (block + [0], "4097"), (damaged, "damaged"),
        ([UInt8](repeating: 0, count: LegMap.blockBytes), "zeros"), (foreign, "not hold a leg map"),
      ]
      for (bytes, fragment) in bad {
        await expectError(.invalidArgument, mentioning: [fragment]) {
          try await service.writeLegMap(
            request: .with {
              $0.uuid = leg.uuid.value
              $0.block = Data(bytes)
            }, context: context)
        }
      }
      #expect(try TargetAPIContractTests.mapBlock(of: leg.uuid, on: target).allSatisfy { $0 == 0 })
      _ = try await service.writeLegMap(request: try .init(map, to: leg.uuid), context: context)
      let answer = try await service.readLegMap(request: .with { $0.uuid = leg.uuid.value }, context: context)
      #expect(answer.block == Data(block))
      #expect(try answer.legMapIfPresent() == map)
      #expect(try Nvmecsi_Target_V1_ReadLegMapResponse(nil).legMapIfPresent() == nil)
      var malformed = answer
      malformed.block = Data(damaged)
      expectError(.invalidArgument, mentioning: ["damaged"]) { try malformed.legMapIfPresent() }
    }
  }
}
