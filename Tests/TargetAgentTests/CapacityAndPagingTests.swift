import Foundation
import NVMeCSICore
import TargetContract
import TargetProto
import TestSupport
import Testing

/// What a target accepts in total and what its lists return, whatever their size.
@Suite("Target capacity and paged lists")
struct CapacityAndPagingTests {
  @Test(
    "Thin volumes together never exceed the store's size times the overcommit ratio; deleting gives room back",
    arguments: TargetAPIFactory.all, [1.0, 2.0])
  func overcommit(_ factory: TargetAPIFactory, ratio: Double) async throws {
    try await withTarget(factory, overcommitRatio: ratio) { api, _ in
      let info = try await api.info()
      #expect(info.overcommitRatio == ratio)
      #expect(info.provisionedBytes == 0)
      // Sparse files take no space, so each fits what is free; only the ratio stops them.
      let size = Capacity.alignDown(info.availableBytes / 10 * 9)
      let limit = Capacity.provisioningLimit(total: info.totalBytes, overcommitRatio: ratio)
      let fitting = Int(limit / size)
      var created: [ObjectUUID] = []
      for n in 0..<fitting {
        created.append(
          try await api.createVolume(NewVolume(name: "v\(n)", sizeBytes: size, source: nil, attributes: [:])).volume
            .uuid)
      }
      #expect(try await api.info().provisionedBytes == UInt64(fitting) * size)
      #expect(try await api.info().allocatableBytes < size)
      await expectError(.resourceExhausted, mentioning: ["overcommit ratio", "\(limit)"]) {
        try await api.createVolume(NewVolume(name: "one-too-many", sizeBytes: size, source: nil, attributes: [:]))
      }
      await expectError(.resourceExhausted, mentioning: ["overcommit ratio"]) {
        try await api.expandVolume(created[0], to: size + Capacity.alignUp(limit - UInt64(fitting) * size + 1)!)
      }
      #expect(try await api.volumes(named: "one-too-many").isEmpty)
      try await api.deleteVolume(created[0])
      _ = try await api.createVolume(NewVolume(name: "one-too-many", sizeBytes: size, source: nil, attributes: [:]))
      #expect(try await api.info().provisionedBytes == UInt64(fitting) * size)
    }
  }

  @Test("A restarted target counts what its volumes provision, finds them by name and knows the hosts in use")
  func provisionedAfterRestart() async throws {
    try await withTarget(.inProcess) { api, target in
      _ = try await api.createVolume(NewVolume(name: "a", sizeBytes: 8 * MiB, source: nil, attributes: [:]))
      _ = try await api.createVolume(NewVolume(name: "b", sizeBytes: 4 * MiB, source: nil, attributes: [:]))
      let reopened = try LocalTarget(name: "store-t", store: target.store, configfs: target.configfs)
      #expect(try await reopened.api.info().provisionedBytes == 12 * MiB)
      // Names are found again after the restart (the name index is rebuilt from the records).
      #expect(try await reopened.api.volumes(named: "a").map(\.record.sizeBytes) == [8 * MiB])
      #expect(try await reopened.api.createVolume(NewVolume(name: "b", sizeBytes: 4 * MiB, source: nil)).existed)
      // Host NQNs in use are recounted too: a clone of a publishing node stays refused.
      let a = try await reopened.api.volumes(named: "a")[0].uuid
      let b = try await reopened.api.volumes(named: "b")[0].uuid
      _ = try await reopened.api.publishVolume(a, to: try node(1), readonly: false, exclusive: true)
      let again = try LocalTarget(name: "store-t", store: target.store, configfs: target.configfs)
      let clone = NodeID(hostID: .random(), hostNQN: try node(1).hostNQN)
      await expectError(.failedPrecondition, mentioning: ["cloned"]) {
        try await again.api.publishVolume(b, to: clone, readonly: false, exclusive: true)
      }
    }
  }

  @Test(
    "A list larger than one gRPC message comes back whole, in pages",
    arguments: [TargetAPIFactory.served])
  func largeList(_ factory: TargetAPIFactory) async throws {
    try await withTarget(factory) { api, _ in
      // Each record carries the most attributes allowed (~256 KiB): 20 are ~5 MiB.
      let attributes = Dictionary(
        uniqueKeysWithValues: (0..<64).map { ("k\($0)", String(repeating: "v", count: 4096)) })
      var uuids: [ObjectUUID] = []
      for n in 0..<20 {
        let volume = try await api.createVolume(
          NewVolume(name: "big-\(n)", sizeBytes: MiB, source: nil, attributes: attributes))
        uuids.append(volume.volume.uuid)
      }
      let listed = try await api.volumes(named: nil)
      #expect(listed.map(\.uuid).sorted() == uuids.sorted())
      #expect(listed.allSatisfy { $0.record.attributes == attributes })
    }
  }

  @Test("A page is bounded by count and by encoded bytes, and resumes after the last UUID")
  func pageBounds() throws {
    let uuids = (0..<2500).map { _ in ObjectUUID.random().value }
    let items = uuids.map { uuid in
      Nvmecsi_Target_V1_Volume.with {
        $0.uuid = uuid
        $0.name = "n"
      }
    }
    var seen: [String] = []
    var after = ""
    var pages = 0
    repeat {
      let page = try ListPaging.page(items, uuid: \.uuid, maxEntries: 0, startingAfter: after)
      #expect(page.items.count <= ListPaging.maximumEntries)
      seen += page.items.map(\.uuid)
      after = page.next
      pages += 1
    } while !after.isEmpty
    #expect(pages == 3)
    #expect(seen == uuids.sorted())

    let big = (0..<12).map { n in
      Nvmecsi_Target_V1_Volume.with {
        $0.uuid = uuids[n]
        $0.name = String(repeating: "x", count: 512 << 10)
      }
    }
    let page = try ListPaging.page(big, uuid: \.uuid, maxEntries: 0, startingAfter: "")
    #expect(page.items.count == 3)
    #expect(page.next == page.items.last?.uuid)
    #expect(try ListPaging.page(items, uuid: \.uuid, maxEntries: 7, startingAfter: "").items.count == 7)
    #expect(throws: NVMeCSIError.self) {
      try ListPaging.page(items, uuid: \.uuid, maxEntries: 0, startingAfter: "../etc")
    }
  }
}
