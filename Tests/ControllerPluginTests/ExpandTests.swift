import CSIProto
import Foundation
import NVMeCSICore
import TestSupport
import Testing

@Suite("ControllerExpandVolume")
struct ExpandTests {
  @Test("Growing a volume grows its backing file, tells nvmet to re-read the size, and asks the node to grow mounts")
  func grow() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-grow", parameters: ["target": "store-a"]))
        .volume
      let response = try await h.controller.controllerExpandVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.capacityRange = .with { $0.requiredBytes = 100 * mebibyte }
          $0.volumeCapability = mountCapability()
        })
      #expect(response.capacityBytes == 100 * mebibyte)
      #expect(response.nodeExpansionRequired)
      let size =
        try FileManager.default.attributesOfItem(atPath: h.storeA.dataPath(ofVolume: volume.volumeID))[.size] as? UInt64
      #expect(size == UInt64(100 * mebibyte))
      let id = try ObjectID(parsing: volume.volumeID, as: .volume)
      let revalidate = h.storeA.nvmet + "/subsystems/\(SubsystemNaming.nqn(for: id.uuid))/namespaces/1/revalidate_size"
      #expect(FileManager.default.fileExists(atPath: revalidate))
      let observed1 = try await h.controller.controllerGetVolume(.with { $0.volumeID = volume.volumeID }).volume
        .capacityBytes
      #expect(observed1 == 100 * mebibyte)
    }
  }

  @Test(
    "Block volumes need no node expansion; a smaller request keeps the size; shrinking below the limit is OutOfRange")
  func blockAndShrink() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-blk", capability: blockCapability())).volume
      let grown = try await h.controller.controllerExpandVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.capacityRange = .with { $0.requiredBytes = 80 * mebibyte }
        })
      #expect(grown.capacityBytes == 80 * mebibyte)
      #expect(grown.nodeExpansionRequired == false)
      let same = try await h.controller.controllerExpandVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.capacityRange = .with { $0.requiredBytes = 10 * mebibyte }
        })
      #expect(same.capacityBytes == 80 * mebibyte)
      await expectStatus(.outOfRange, mentioning: "shrink") {
        try await h.controller.controllerExpandVolume(
          .with {
            $0.volumeID = volume.volumeID
            $0.capacityRange = .with {
              $0.requiredBytes = 10 * mebibyte
              $0.limitBytes = 10 * mebibyte
            }
          })
      }
    }
  }

  @Test("Expanding an unknown volume is NotFound; without capacity_range it is InvalidArgument")
  func errors() async throws {
    try await Harness.with { h in
      await expectStatus(.notFound) {
        try await h.controller.controllerExpandVolume(
          .with {
            $0.volumeID = "v1.store-b.00000000-0000-4000-8000-000000000000"
            $0.capacityRange.requiredBytes = mebibyte
          })
      }
      await expectStatus(.invalidArgument, mentioning: "capacity_range") {
        try await h.controller.controllerExpandVolume(
          .with { $0.volumeID = "v1.store-b.00000000-0000-4000-8000-000000000000" })
      }
    }
  }
}
