import CSIProto
import Foundation
import NVMeCSICore
import TestSupport
import Testing

@Suite("ListVolumes, ControllerGetVolume and GetCapacity")
struct ListAndCapacityTests {
  @Test(
    "ListVolumes pages through every volume on every target exactly once, in ID order; the last page has no token",
    arguments: [2, 3, 6])
  func pagination(pageSize: Int32) async throws {
    try await Harness.with { h in
      var created: Set<String> = []
      for i in 0..<6 {
        let target = i.isMultiple(of: 2) ? "store-a" : "store-b"
        let request = createRequest("pvc-\(i)", bytes: mebibyte, parameters: ["target": target])
        created.insert(try await h.controller.createVolume(request).volume.volumeID)
      }
      var seen: [String] = []
      var token = ""
      var pages = 0
      repeat {
        let page = try await h.controller.listVolumes(
          .with {
            $0.maxEntries = pageSize
            $0.startingToken = token
          })
        #expect(page.entries.count <= Int(pageSize))
        seen += page.entries.map(\.volume.volumeID)
        token = page.nextToken
        pages += 1
      } while !token.isEmpty && pages < 10
      #expect(pages == 6 / Int(pageSize), "a full last page must not carry a token")
      #expect(seen == seen.sorted())
      #expect(Set(seen) == created && seen.count == 6)
      let observed1 = try await h.controller.listVolumes(.init()).entries.count
      #expect(observed1 == 6)
    }
  }

  @Test("A bad starting_token is Aborted and a negative max_entries is InvalidArgument")
  func badPaging() async throws {
    try await Harness.with { h in
      await expectStatus(.aborted) { try await h.controller.listVolumes(.with { $0.startingToken = "page-2" }) }
      await expectStatus(.invalidArgument) { try await h.controller.listVolumes(.with { $0.maxEntries = -1 }) }
    }
  }

  @Test("ListVolumes and ControllerGetVolume report published nodes and an abnormal condition when data is gone")
  func statusAndCondition() async throws {
    try await Harness.with { h in
      let volume = try await h.controller.createVolume(createRequest("pvc-status", parameters: ["target": "store-a"]))
        .volume
      _ = try await h.controller.controllerPublishVolume(publishRequest(volume.volumeID, node: 3))
      let entry = try #require(try await h.controller.listVolumes(.init()).entries.first)
      #expect(entry.status.publishedNodeIds == [nodeID(3)])
      #expect(entry.status.volumeCondition.abnormal == false)

      try FileManager.default.removeItem(atPath: h.storeA.dataPath(ofVolume: volume.volumeID))
      let status = try await h.controller.controllerGetVolume(.with { $0.volumeID = volume.volumeID }).status
      #expect(status.volumeCondition.abnormal)
      #expect(status.volumeCondition.message.contains("missing"))
    }
  }

  @Test("ListVolumes fails as Unavailable rather than hide the volumes of a dead target")
  func deadTarget() async throws {
    try await Harness.with(processes: true) { h in
      h.storeB.kill()
      await expectStatus(.unavailable, mentioning: "store-b") { try await h.controller.listVolumes(.init()) }
    }
  }

  @Test("GetCapacity reports free space per topology and target, and validates parameters")
  func capacity() async throws {
    try await Harness.with { h in
      let all = try await h.controller.getCapacity(.init())
      #expect(all.availableCapacity > 0)
      #expect(all.maximumVolumeSize.value > 0 && all.maximumVolumeSize.value <= all.availableCapacity)
      #expect(all.minimumVolumeSize.value == mebibyte)
      let zoneA = try await h.controller.getCapacity(.with { $0.accessibleTopology.segments = [Harness.zoneKey: "a"] })
      #expect(zoneA.availableCapacity > 0 && zoneA.availableCapacity < all.availableCapacity)
      let zoneC = try await h.controller.getCapacity(.with { $0.accessibleTopology.segments = [Harness.zoneKey: "c"] })
      #expect(zoneC.availableCapacity == 0)
      let pinned = try await h.controller.getCapacity(.with { $0.parameters = ["target": "store-b"] })
      #expect(pinned.availableCapacity > 0 && pinned.availableCapacity < all.availableCapacity)
      await expectStatus(.invalidArgument, mentioning: "colour") {
        try await h.controller.getCapacity(.with { $0.parameters = ["colour": "blue"] })
      }
    }
  }
}
