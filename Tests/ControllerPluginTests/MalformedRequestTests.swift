import CSIProto
import GRPCCore
import TestSupport
import Testing

/// Hostile or broken input gets a clear status and changes nothing: no file, no
/// configfs entry, no record.
@Suite("Malformed requests")
struct MalformedRequestTests {
  @Test("Volume IDs that are not ours are NotFound for lookups and success for deletes", arguments: hostileVolumeIDs)
  func badVolumeID(id: String) async throws {
    try await Harness.with { h in
      await expectStatus(.notFound) { try await h.controller.controllerGetVolume(.with { $0.volumeID = id }) }
      await expectStatus(.notFound) { try await h.controller.controllerPublishVolume(publishRequest(id, node: 1)) }
      await expectStatus(.notFound) {
        try await h.controller.controllerExpandVolume(
          .with {
            $0.volumeID = id
            $0.capacityRange.requiredBytes = mebibyte
          })
      }
      await expectStatus(.notFound) {
        try await h.controller.validateVolumeCapabilities(
          .with {
            $0.volumeID = id
            $0.volumeCapabilities = [mountCapability()]
          })
      }
      await expectStatus(.notFound) {
        try await h.controller.createSnapshot(
          .with {
            $0.name = "snap"
            $0.sourceVolumeID = id
          })
      }
      _ = try await h.controller.deleteVolume(.with { $0.volumeID = id })
      _ = try await h.controller.controllerUnpublishVolume(
        .with {
          $0.volumeID = id
          $0.nodeID = nodeID(1)
        })
      for target in h.targets {
        #expect(target.files(in: "volumes").isEmpty)
        #expect(target.subsystems().isEmpty)
      }
    }
  }

  @Test("Empty required fields are InvalidArgument naming the field", arguments: ["volume_id"])
  func emptyIDs(field: String) async throws {
    try await Harness.with { h in
      await expectStatus(.invalidArgument, mentioning: field) { try await h.controller.deleteVolume(.init()) }
      await expectStatus(.invalidArgument, mentioning: field) { try await h.controller.controllerGetVolume(.init()) }
      await expectStatus(.invalidArgument, mentioning: field) {
        try await h.controller.controllerUnpublishVolume(.init())
      }
      await expectStatus(.invalidArgument, mentioning: field) {
        try await h.controller.controllerPublishVolume(.init())
      }
      await expectStatus(.invalidArgument, mentioning: field) {
        try await h.controller.validateVolumeCapabilities(.init())
      }
      await expectStatus(.invalidArgument, mentioning: "snapshot_id") { try await h.controller.deleteSnapshot(.init()) }
      await expectStatus(.invalidArgument, mentioning: "snapshot_id") { try await h.controller.getSnapshot(.init()) }
    }
  }

  @Test(
    "Bad CreateVolume requests are InvalidArgument and create nothing",
    arguments: [
      ("empty name", createRequest("")),
      ("NUL in name", createRequest("pvc\0evil")),
      ("newline in name", createRequest("pvc\nlevel=error msg=forged")),
      ("name too long", createRequest(String(repeating: "n", count: 300))),
      (
        "no capabilities",
        Csi_V1_CreateVolumeRequest.with {
          $0.name = "pvc"
          $0.capacityRange.requiredBytes = mebibyte
        }
      ),
      (
        "capability without access type",
        createRequest("pvc", capability: .with { $0.accessMode.mode = .singleNodeWriter })
      ),
      ("capability without access mode", createRequest("pvc", capability: .with { $0.mount = .init() })),
      (
        "unknown access mode",
        createRequest(
          "pvc",
          capability: .with {
            $0.mount = .init()
            $0.accessMode.mode = .UNRECOGNIZED(42)
          })
      ),
      ("unsupported file system", createRequest("pvc", capability: mountCapability(fsType: "ntfs"))),
      ("path-like file system", createRequest("pvc", capability: mountCapability(fsType: "../../bin/sh"))),
      ("MULTI_NODE_SINGLE_WRITER", createRequest("pvc", capability: mountCapability(.multiNodeSingleWriter))),
      ("negative size", createRequest("pvc", bytes: -5)),
      ("unknown parameter", createRequest("pvc", parameters: ["../../etc": "x"])),
      ("NUL in parameter", createRequest("pvc", parameters: ["ctrlLossTmo": "6\00"])),
      (
        "empty content source",
        {
          var r = createRequest("pvc")
          r.volumeContentSource = .init()
          return r
        }()
      ),
    ])
  func badCreate(what: String, request: Csi_V1_CreateVolumeRequest) async throws {
    try await Harness.with { h in
      await expectStatus(.invalidArgument) { try await h.controller.createVolume(request) }
      for target in h.targets {
        #expect(target.files(in: "volumes").isEmpty, "\(what) created a file")
        #expect(target.subsystems().isEmpty, "\(what) created an export")
      }
    }
  }
}
