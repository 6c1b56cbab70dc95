import CSIProto
import Foundation
import GRPCCore
import NVMeCSICore
import TestSupport
import Testing

/// A target killed in the middle of a multi-step operation comes back consistent: the
/// old state or the new one, no debris, no leaked export, and the retried RPC works.
@Suite("Crash consistency of the target")
struct CrashConsistencyTests {
  static func failpoint(_ point: String) -> [String: String] {
    [Failpoints.environmentVariable: "\(point)=crash"]
  }

  @Test("A crash after the data file is written but before its record leaves no volume and no debris")
  func crashDuringCreate() async throws {
    try await Harness.with(failpoints: Self.failpoint("store.create-volume.after-data")) { h in
      let request = createRequest("pvc-crash", parameters: ["target": "store-a"])
      await expectStatus(.unavailable, mentioning: "store-a") { try await h.controller.createVolume(request) }
      #expect(h.storeA.waitForExit() == Failpoints.crashExitCode)
      #expect(h.storeA.files(in: "volumes").count == 1, "the crash left an unrecorded data file behind")

      try await h.restart(h.storeA)
      #expect(h.storeA.files(in: "volumes").isEmpty, "restart removes the debris")
      #expect(h.storeA.subsystems().isEmpty)
      let observed1 = try await h.controller.listVolumes(.init()).entries.isEmpty
      #expect(observed1)

      let volume = try await h.controller.createVolume(request).volume
      let uuid = String(volume.volumeID.split(separator: ".").last!)
      #expect(h.storeA.files(in: "volumes") == ["\(uuid).img", "\(uuid).json"])
      #expect(h.storeA.subsystems() == [SubsystemNaming.prefix + uuid])
    }
  }

  @Test("A crash after the record is removed but before the data finishes the delete on restart")
  func crashDuringDelete() async throws {
    try await Harness.with(failpoints: Self.failpoint("store.delete-volume.after-record")) { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-del", parameters: ["target": "store-a"]))
        .volume
      await expectStatus(.unavailable) { try await h.controller.deleteVolume(.with { $0.volumeID = volume.volumeID }) }
      #expect(h.storeA.waitForExit() == Failpoints.crashExitCode)
      try await h.restart(h.storeA)
      #expect(h.storeA.files(in: "volumes").isEmpty)
      #expect(h.storeA.subsystems().isEmpty)
      _ = try await h.controller.deleteVolume(.with { $0.volumeID = volume.volumeID })
    }
  }

  @Test("A crash while taking a snapshot leaves no half snapshot, and the retry succeeds")
  func crashDuringSnapshot() async throws {
    try await Harness.with(failpoints: Self.failpoint("store.create-snapshot.after-data")) { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-snap", parameters: ["target": "store-a"]))
        .volume
      let request = Csi_V1_CreateSnapshotRequest.with {
        $0.name = "snap"
        $0.sourceVolumeID = volume.volumeID
      }
      await expectStatus(.unavailable) { try await h.controller.createSnapshot(request) }
      #expect(h.storeA.waitForExit() == Failpoints.crashExitCode)
      try await h.restart(h.storeA)
      #expect(h.storeA.files(in: "snapshots").isEmpty)
      let observed2 = try await h.controller.listSnapshots(.init()).entries.isEmpty
      #expect(observed2)
      let snapshot = try await h.controller.createSnapshot(request).snapshot
      #expect(snapshot.readyToUse)
      #expect(h.storeA.files(in: "snapshots").count == 2)
    }
  }

  @Test("A crash after the data grew but before the record did completes the expansion on restart")
  func crashDuringExpand() async throws {
    try await Harness.with(failpoints: Self.failpoint("store.expand-volume.after-data")) { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-exp", parameters: ["target": "store-a"]))
        .volume
      let request = Csi_V1_ControllerExpandVolumeRequest.with {
        $0.volumeID = volume.volumeID
        $0.capacityRange.requiredBytes = 96 * mebibyte
      }
      await expectStatus(.unavailable) { try await h.controller.controllerExpandVolume(request) }
      #expect(h.storeA.waitForExit() == Failpoints.crashExitCode)
      try await h.restart(h.storeA)
      let after = try await h.controller.controllerGetVolume(.with { $0.volumeID = volume.volumeID }).volume
      #expect(after.capacityBytes == 96 * mebibyte)
      let observed3 = try await h.controller.controllerExpandVolume(request).capacityBytes
      #expect(observed3 == 96 * mebibyte)
    }
  }
}
