import AdminProto
import CSIProto
import CSIServer
import ControllerPlugin
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NVMeCSICore
import TargetContract
import TestSupport
import Testing

/// The Admin service (proto/nvmecsi/admin/v1/admin.proto) on the controller's socket,
/// next to CSI, as `nvme-csi controller` serves it: real gRPC over a real unix socket.
@Suite("Admin service: RepairVolume on the controller's socket")
struct AdminServiceTests {
  /// A request that must be refused where it enters. `volumeID` may name the test's
  /// replicated volume as `$replicated` and its single-copy one as `$single`.
  struct BadRepair: Sendable, CustomTestStringConvertible {
    var what: String
    var volumeID: String
    var leg: UInt32 = 0
    var target = ""
    var fragment: String
    var testDescription: String { what }
  }

  static let badRepairs = [
    BadRepair(what: "no volume ID", volumeID: "", fragment: "volume_id is required"),
    BadRepair(what: "not a volume ID", volumeID: "../../../etc/passwd", fragment: "not a volume ID of this driver"),
    BadRepair(
      what: "a replicated ID with a bad UUID", volumeID: "r1.not-a-uuid.store-0.store-1",
      fragment: "not a volume ID of this driver"),
    BadRepair(what: "a single-copy volume", volumeID: "$single", fragment: "single copy"),
    BadRepair(what: "leg 2 of a volume of 2 legs", volumeID: "$replicated", leg: 2, fragment: "legs 0 to 1"),
    BadRepair(
      what: "a leg past the most replicas", volumeID: "$replicated", leg: UInt32(ReplicaLayout.maximumReplicas),
      fragment: "does not exist"),
    BadRepair(what: "a leg far out of range", volumeID: "$replicated", leg: .max, fragment: "does not exist"),
    BadRepair(what: "a target name with capitals", volumeID: "$replicated", target: "Store-2", fragment: "DNS label"),
    BadRepair(what: "a target name with a slash", volumeID: "$replicated", target: "../store-2", fragment: "DNS label"),
    BadRepair(what: "a target name ending in '-'", volumeID: "$replicated", target: "store-", fragment: "DNS label"),
  ]

  @Test("a malformed request is InvalidArgument and changes nothing on any target", arguments: badRepairs)
  func refused(_ bad: BadRepair) async throws {
    try await AdminFleet.with { fleet in
      let replicated = try await fleet.create("pvc-mirror", parameters: ["replicas": "2"])
      let single = try await fleet.create("pvc-single")
      let before = try await fleet.state()
      let volumeID = bad.volumeID.replacingOccurrences(of: "$replicated", with: replicated)
        .replacingOccurrences(of: "$single", with: single)
      await expectStatus(.invalidArgument, mentioning: bad.fragment) {
        try await fleet.admin.repairVolume(
          .with {
            $0.volumeID = volumeID
            $0.leg = bad.leg
            $0.target = bad.target
          })
      }
      #expect(try await fleet.state() == before)
    }
  }

  @Test("a valid request reaches the controller: the status is exactly what repairVolume answers")
  func passesThrough() async throws {
    try await AdminFleet.with { fleet in
      // A replicated ID of targets this controller does not have: nothing to repair
      // there, whatever repairVolume makes of it, and nothing it could change.
      let uuid = try ObjectUUID("0f8e6a1c-2b3d-4e5f-8a9b-0c1d2e3f4a5b")
      let elsewhere = try VolumeID(replicated: uuid, on: [TargetName("store-8"), TargetName("store-9")])
      let direct = await Self.directOutcome { try await fleet.service.repairVolume(elsewhere, leg: 1, to: nil) }
      let wire = await Self.outcome {
        try await fleet.admin.repairVolume(
          .with {
            $0.volumeID = elsewhere.description
            $0.leg = 1
          })
      }
      #expect(wire.code != .invalidArgument, "a well-formed request was refused at the door: \(wire)")
      #expect(wire == direct)
    }
  }

  @Test("a valid repair of a real volume answers as repairVolume does, never InvalidArgument")
  func realVolume() async throws {
    try await AdminFleet.with { fleet in
      let id = try VolumeID(parsing: try await fleet.create("pvc-mirror", parameters: ["replicas": "2"]))
      let spare = try #require(fleet.targets.map(\.name).first { !id.targets.contains($0) })
      let wire = await Self.outcome {
        try await fleet.admin.repairVolume(
          .with {
            $0.volumeID = id.description
            $0.leg = 0
            $0.target = spare.value
          })
      }
      #expect(wire.code != .invalidArgument, "a well-formed request was refused at the door: \(wire)")
      if case .answered(let response) = wire {
        // The map as repairVolume made it: leg 0 on the spare target, leg 1 kept.
        #expect(response.legs.map(\.index) == [0, 1])
        #expect(response.legs.map(\.target) == [spare.value, id.targets[1].value])
        #expect(response.mapVersion > 0)
      } else {
        // A refusal changes nothing, so asking the controller directly answers the same.
        let direct = await Self.directOutcome { try await fleet.service.repairVolume(id, leg: 0, to: spare) }
        #expect(wire == direct)
      }
    }
  }

  /// What a call answered: its response (or map, direct) or the status a failure
  /// carries on the wire.
  enum Outcome: Equatable, CustomStringConvertible {
    case answered(Nvmecsi_Admin_V1_RepairVolumeResponse)
    case map(LegMap)
    case failed(RPCError.Code, String)

    var code: RPCError.Code? {
      if case .failed(let code, _) = self { return code }
      return nil
    }

    var description: String {
      switch self {
      case .answered(let r): "answered map version \(r.mapVersion)"
      case .map(let m): "map version \(m.version)"
      case .failed(let code, let message): "\(code): \(message)"
      }
    }

    static func == (a: Self, b: Self) -> Bool {
      switch (a, b) {
      case (.failed(let c1, let m1), .failed(let c2, let m2)): c1 == c2 && m1 == m2
      // A success on both sides: the same map on the wire as in the domain.
      case (.answered(let r), .map(let m)), (.map(let m), .answered(let r)):
        r.mapVersion == m.version && r.legs.map(\.target) == m.legs.map(\.target.value)
          && r.legs.map(\.generation) == m.legs.map { UInt32($0.generation) }
      case (.answered(let r1), .answered(let r2)): r1 == r2
      case (.map(let m1), .map(let m2)): m1 == m2
      default: false
      }
    }
  }

  static func outcome(_ call: () async throws -> Nvmecsi_Admin_V1_RepairVolumeResponse) async -> Outcome {
    do { return .answered(try await call()) } catch let error as RPCError {
      return .failed(error.code, error.message)
    } catch {
      Issue.record("the call failed with \(error), not an RPCError")
      return .failed(.unknown, "\(error)")
    }
  }

  /// The domain call, its error as CSIServer's request interceptor turns it into a status.
  static func directOutcome(_ call: () async throws -> LegMap) async -> Outcome {
    do { return .map(try await call()) } catch let error as RPCError {
      return .failed(error.code, error.message)
    } catch let error as any RPCErrorConvertible {
      return .failed(error.rpcErrorCode, error.rpcErrorMessage)
    } catch {
      return .failed(.internalError, "internal error: \(error)")
    }
  }
}

/// Three targets in this process and a controller served on a real unix socket with
/// the services `nvme-csi controller` registers there: Identity, Controller, Admin.
final class AdminFleet: Sendable {
  let targets: [LocalTarget]
  let service: ControllerService
  let controller: Csi_V1_Controller.Client<HTTP2ClientTransport.Posix>
  let admin: Nvmecsi_Admin_V1_Admin.Client<HTTP2ClientTransport.Posix>

  private init(targets: [LocalTarget], service: ControllerService, client: GRPCClient<HTTP2ClientTransport.Posix>) {
    self.targets = targets
    self.service = service
    self.controller = .init(wrapping: client)
    self.admin = .init(wrapping: client)
  }

  static func with(_ body: (AdminFleet) async throws -> Void) async throws {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let targets = try (0..<3).map { try LocalTarget(name: "store-\($0)", directory: directory + "/store-\($0)") }
    var logger = Logger(label: "test.admin") { _ in SwiftLogNoOpLogHandler() }
    logger.logLevel = .critical
    let service = ControllerService(
      targets: TargetSet(targets.map { StorageTarget(name: $0.name, topology: [:], api: $0.api) }), logger: logger)
    #expect(await service.indexPlacements())
    let identity = IdentityService(
      driverName: "nvme.csi.dev", version: "test", capabilities: IdentityService.controllerCapabilities,
      isReady: { true })
    try await withServedPlugin(
      socket: directory + "/csi.sock", services: [identity, service, AdminService(controller: service)],
      logger: logger
    ) { client in
      try await body(AdminFleet(targets: targets, service: service, client: client))
    }
  }

  /// Creates a volume over CSI and answers its ID.
  func create(_ name: String, parameters: [String: String] = [:]) async throws -> String {
    try await controller.createVolume(createRequest(name, bytes: 16 * mebibyte, parameters: parameters)).volume.volumeID
  }

  /// What a repair could change: every target's volume records, and each volume's
  /// leg-map block (where a replicated volume's leg map lives).
  struct State: Equatable {
    var records: [String: [VolumeRecord]]
    var mapBlocks: [String: Data]
  }

  func state() async throws -> State {
    var state = State(records: [:], mapBlocks: [:])
    for target in targets {
      let records = try await target.agent.volumes(named: nil).map(\.record).sorted { $0.uuid < $1.uuid }
      state.records[target.name.value] = records
      for record in records {
        let file = try FileHandle(forReadingFrom: URL(fileURLWithPath: target.dataPath(of: record.uuid)))
        defer { try? file.close() }
        try file.seek(toOffset: LegMap.blockOffset)
        state.mapBlocks[target.name.value + "/" + record.uuid.value] =
          try file.read(upToCount: LegMap.blockBytes) ?? Data()
      }
    }
    return state
  }
}
