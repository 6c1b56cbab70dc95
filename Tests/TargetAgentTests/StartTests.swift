import Foundation
import NVMeCSICore
import TargetContract
import TestSupport
import Testing

/// What a target does at start with what it finds: it never destroys on doubt.
@Suite("Target start")
struct StartTests {
  @Test("A target on an empty store refuses to start while nvmet exports volumes of ours, and touches nothing")
  func emptyStoreWithExports() async throws {
    try await withTemporaryDirectory { directory in
      let configfs = directory + "/configfs"
      let first = try LocalTarget(name: "store-t", store: directory + "/store", configfs: configfs)
      let volume = try await first.api.createVolume(newVolume("pvc-live")).volume
      let subsystem = configfs + "/nvmet/subsystems/" + SubsystemNaming.nqn(for: volume.uuid)

      // The store's file system is not mounted yet: the target sees an empty directory.
      let error = try #require(
        throws: NVMeCSIError.self,
        performing: { try LocalTarget(name: "store-t", store: directory + "/unmounted", configfs: configfs) })
      #expect(error.kind == .failedPrecondition)
      #expect(error.message.contains("not mounted") && error.message.contains(volume.uuid.value))
      #expect(FileManager.default.fileExists(atPath: subsystem), "the live export was left in place")
    }
  }

  @Test("An export the store has no record of is left in place while the others are served")
  func unexplainedExportStays() async throws {
    try await withTemporaryDirectory { directory in
      let configfs = directory + "/configfs"
      let target = try LocalTarget(name: "store-t", store: directory + "/store", configfs: configfs)
      let kept = try await target.api.createVolume(newVolume("pvc-kept")).volume
      let lost = try await target.api.createVolume(newVolume("pvc-lost")).volume
      // Its record is lost (moved away by hand); the data stays.
      try FileManager.default.removeItem(atPath: directory + "/store/volumes/\(lost.uuid.value).json")

      let restarted = try LocalTarget(name: "store-t", store: directory + "/store", configfs: configfs)
      let subsystems = try FileManager.default.contentsOfDirectory(atPath: configfs + "/nvmet/subsystems")
      #expect(Set(subsystems) == [SubsystemNaming.nqn(for: kept.uuid), SubsystemNaming.nqn(for: lost.uuid)])
      // The data without a record was moved aside, not deleted, and the volume is reported.
      let quarantined = try #require(try await restarted.api.volume(lost.uuid).problem)
      #expect(quarantined.contains("quarantined"))
      #expect(FileManager.default.fileExists(atPath: directory + "/store/quarantine/volume-\(lost.uuid.value).img"))
      let listed = try await restarted.api.volumes(named: nil)
      #expect(Set(listed.map(\.uuid)) == [kept.uuid, lost.uuid])
      #expect(try await restarted.api.volume(kept.uuid).problem == nil)

      // Still reported after the next restart, until a person resolves it.
      let again = try LocalTarget(name: "store-t", store: directory + "/store", configfs: configfs)
      #expect(try await again.api.volume(lost.uuid).problem?.contains("quarantine") == true)
      try FileManager.default.removeItem(atPath: directory + "/store/quarantine/volume-\(lost.uuid.value).img")
      let resolved = try LocalTarget(name: "store-t", store: directory + "/store", configfs: configfs)
      await expectError(.notFound) { try await resolved.api.volume(lost.uuid) }
    }
  }

  @Test(
    "A start with hundreds of volumes (read and exported on every core) exports each, finds each by name, and quarantines a corrupt record"
  )
  func manyVolumes() async throws {
    try await withTemporaryDirectory { directory in
      let first = try LocalTarget(name: "store-t", store: directory + "/store", configfs: directory + "/configfs")
      var volumes: [TargetVolume] = []
      for n in 0..<600 { volumes.append(try await first.api.createVolume(newVolume("pvc-\(n)", size: MiB)).volume) }
      let corrupt = volumes[317]
      try Data("{not json".utf8).write(
        to: URL(fileURLWithPath: directory + "/store/volumes/\(corrupt.uuid.value).json"))

      // nvmet's state is gone (a reboot): every export is made again at start.
      let restarted = try LocalTarget(name: "store-t", store: directory + "/store", configfs: directory + "/rebooted")
      let subsystems = try FileManager.default.contentsOfDirectory(atPath: directory + "/rebooted/nvmet/subsystems")
      let healthy = volumes.filter { $0.uuid != corrupt.uuid }
      #expect(Set(subsystems) == Set(healthy.map { SubsystemNaming.nqn(for: $0.uuid) }))
      for volume in healthy {
        #expect(try await restarted.api.volumes(named: volume.record.name).map(\.uuid) == [volume.uuid])
      }
      #expect(try await restarted.api.volume(corrupt.uuid).problem?.contains("quarantined") == true)
    }
  }

  @Test("Sizes beyond a file offset are OutOfRange, and clones need room for what they add")
  func sizeBounds() async throws {
    try await withTemporaryDirectory { directory in
      let target = try LocalTarget(name: "store-t", directory: directory)
      for size in [UInt64(1) << 63, UInt64.max, Capacity.maximumSize + 1] {
        await expectError(.outOfRange, mentioning: ["largest supported"]) {
          try await target.api.createVolume(newVolume("pvc-huge", size: size))
        }
      }
      let source = try await target.api.createVolume(newVolume("pvc-src")).volume
      await expectError(.resourceExhausted, mentioning: ["free"]) {
        try await target.api.createVolume(newVolume("pvc-clone", size: 1 << 62, source: .volume(source.uuid)))
      }
      await expectError(.outOfRange) { try await target.api.expandVolume(source.uuid, to: 1 << 63) }
      #expect(try await target.api.volumes(named: nil).count == 1)
    }
  }
}
