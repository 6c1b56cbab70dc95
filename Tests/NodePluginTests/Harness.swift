import CSIProto
import CSIServer
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Mounting
import NVMeCSICore
import NVMeFabrics
import NodePlugin
import ServiceLifecycle
import TestSupport
import Testing

/// One worker node: a fake kernel, a state directory and kubelet's directories in a
/// temp dir. It outlives a plugin process, so a test can restart the plugin on it.
final class Machine: Sendable {
  let directory: String
  let kernel = FakeKernel()
  let mirrors: FakeMirrors
  let host: HostIdentity

  private init(directory: String) {
    self.directory = directory
    self.mirrors = FakeMirrors(kernel: kernel)
    let id = ObjectUUID.random()
    host = HostIdentity(nqn: try! HostNQN("nqn.2014-08.org.nvmexpress:uuid:\(id)"), id: id)
  }

  /// Runs `body` on a fresh machine and removes its directory afterwards.
  static func with(_ body: (Machine) async throws -> Void) async throws {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    try await body(Machine(directory: directory))
  }

  var stateDirectory: String { directory + "/state" }
  var kubelet: String { directory + "/kubelet" }

  /// A volume the target exports for this node.
  func export(
    sizeBytes: UInt64 = 1 << 30, fileSystem: String? = nil,
    paths: [HostPort] = [.init(host: "127.0.0.1", port: 4420)]
  ) -> TestVolume {
    let volume = TestVolume(uuid: .random(), paths: paths)
    kernel.export(volume.nqn, namespaceUUID: volume.namespaceUUID, sizeBytes: sizeBytes, fileSystem: fileSystem)
    return volume
  }

  /// A replicated volume: one export per leg (a leg's target has it), each with
  /// `fileSystem` on it as it comes (nil: blank).
  func exportReplicated(legs: Int = 2, sizeBytes: UInt64 = 1 << 30, fileSystem: String? = nil) -> TestVolume {
    let targets = (0..<legs).map { try! TargetName("store-\($0)") }
    let volume = TestVolume(uuid: .random(), paths: [.init(host: "127.0.0.1", port: 4420)], targets: targets)
    for leg in volume.volumeID.legs {
      kernel.export(
        SubsystemNaming.nqn(for: leg.uuid), namespaceUUID: SubsystemNaming.namespaceUUID(for: leg.uuid).value,
        sizeBytes: ReplicaLayout.legBytes(forVolume: sizeBytes), fileSystem: fileSystem)
    }
    return volume
  }

  /// kubelet's staging directory for a volume (kubelet creates it before NodeStageVolume).
  func stagingPath(_ volume: TestVolume) -> String {
    let path = kubelet + "/plugins/kubernetes.io/csi/nvme.csi.dev/\(volume.uuid.hexDigits.prefix(12))/globalmount"
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
  }

  /// kubelet's publish target for a volume in a pod (kubelet creates only the parent).
  func targetPath(_ volume: TestVolume, pod: String = "pod-a") -> String {
    let parent = kubelet + "/pods/\(pod)/volumes/kubernetes.io~csi/pvc-\(volume.uuid.hexDigits.prefix(8))"
    try! FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
    return parent + "/mount"
  }

  func record(of volume: TestVolume) -> StagingRecord? {
    guard let records = try? StagingRecords(stateDirectory: stateDirectory) else { return nil }
    return try? records.load(volume.volumeID)
  }

  var recordFiles: [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: stateDirectory + "/volumes")) ?? []).filter {
      !$0.hasPrefix(".")
    }
  }

  /// Nothing of `volume` is left on the node: no controller, no device, no mount, no record.
  func expectNothingLeft(of volume: TestVolume, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(kernel.controllers(of: volume.nqn).isEmpty, "still connected", sourceLocation: sourceLocation)
    #expect(kernel.disk(of: volume.nqn) == nil, "device still there", sourceLocation: sourceLocation)
    #expect(kernel.allMounts.isEmpty, "still mounted: \(kernel.allMounts)", sourceLocation: sourceLocation)
    #expect(record(of: volume) == nil, "staging record left", sourceLocation: sourceLocation)
  }
}

/// A volume as the controller describes it to the node.
struct TestVolume: Sendable {
  let uuid: ObjectUUID
  var paths: [HostPort]
  /// Where its legs are: one target, unless replicated.
  var targets: [TargetName] = [try! TargetName("store-a")]

  var volumeID: VolumeID {
    targets.count == 1
      ? VolumeID(single: ObjectID(kind: .volume, target: targets[0], uuid: uuid))
      : try! VolumeID(replicated: uuid, on: targets)
  }
  var id: String { volumeID.description }
  /// Leg 0's (the only one's) subsystem.
  var nqn: String { SubsystemNaming.nqn(for: uuid) }
  var namespaceUUID: String { SubsystemNaming.namespaceUUID(for: uuid).value }
  /// Each leg's subsystem NQN.
  var legNQNs: [String] { volumeID.legs.map { SubsystemNaming.nqn(for: $0.uuid) } }
  var publishContext: [String: String] {
    let legs = volumeID.legs.map {
      PublishContext.Leg(
        paths: paths, subsystemNQN: SubsystemNaming.nqn(for: $0.uuid),
        namespaceUUID: SubsystemNaming.namespaceUUID(for: $0.uuid).value)
    }
    return PublishContext(
      paths: paths, subsystemNQN: nqn, namespaceUUID: namespaceUUID, replicaLegs: Array(legs.dropFirst())
    ).encoded
  }
}

/// The node plugin (Identity + Node) served on a real unix socket, and a CSI client
/// talking to it as kubelet does.
final class Harness: Sendable {
  let machine: Machine
  let socket: String
  let node: Csi_V1_Node.Client<HTTP2ClientTransport.Posix>
  let identity: Csi_V1_Identity.Client<HTTP2ClientTransport.Posix>

  /// The plugin itself, for what runs outside RPCs (the mirror reconciler).
  let service: NodeService

  private init(machine: Machine, socket: String, client: GRPCClient<HTTP2ClientTransport.Posix>, service: NodeService) {
    self.machine = machine
    self.service = service
    self.socket = socket
    self.node = .init(wrapping: client)
    self.identity = .init(wrapping: client)
  }

  var kernel: FakeKernel { machine.kernel }
  var mirrors: FakeMirrors { machine.mirrors }

  /// Serves a fresh plugin process on `machine` (a new one when nil) for `body`.
  /// With `logs`, the plugin's log lines (every level) are kept there.
  static func with(
    machine: Machine? = nil, deviceTimeout: Duration = .seconds(10), topology: [String: String] = [:],
    maxVolumesPerNode: Int64 = 0, logs: CapturedLogs? = nil, _ body: (Harness) async throws -> Void
  ) async throws {
    guard let machine else {
      try await Machine.with { m in
        try await with(
          machine: m, deviceTimeout: deviceTimeout, topology: topology, maxVolumesPerNode: maxVolumesPerNode,
          logs: logs,
          body)
      }
      return
    }
    let logger =
      logs?.logger
      ?? {
        var logger = Logger(label: "test.node") { _ in SwiftLogNoOpLogHandler() }
        logger.logLevel = .critical
        return logger
      }()
    let node = NodeService(
      configuration: .init(
        host: machine.host, topology: topology, maxVolumesPerNode: maxVolumesPerNode, deviceTimeout: deviceTimeout,
        legMapBlocks: FakeLegMapBlocks(kernel: machine.kernel)),
      attacher: FakeAttacher(kernel: machine.kernel), mounter: FakeMounter(kernel: machine.kernel),
      mirrors: machine.mirrors, records: try StagingRecords(stateDirectory: machine.stateDirectory), logger: logger)
    let identity = IdentityService(
      driverName: "nvme.csi.dev", version: "test",
      capabilities: IdentityService.nodeCapabilities(hasTopology: !topology.isEmpty),
      isReady: { true })
    let socket = machine.directory + "/csi-\(UUID().uuidString.prefix(8)).sock"
    try await withServedPlugin(socket: socket, services: [identity, node], logger: logger) {
      try await body(Harness(machine: machine, socket: socket, client: $0, service: node))
    }
  }

  // MARK: the kubelet steps, with the requests kubelet sends

  func stage(_ v: TestVolume, _ capability: Csi_V1_VolumeCapability = mountCapability(), at path: String? = nil)
    async throws
  {
    _ = try await node.nodeStageVolume(stageRequest(v, capability, at: path ?? machine.stagingPath(v)))
  }

  func publish(
    _ v: TestVolume, _ capability: Csi_V1_VolumeCapability = mountCapability(), pod: String = "pod-a",
    readonly: Bool = false
  ) async throws {
    _ = try await node.nodePublishVolume(
      publishRequest(
        v, capability, staging: machine.stagingPath(v), target: machine.targetPath(v, pod: pod), readonly: readonly))
  }

  func unpublish(_ v: TestVolume, pod: String = "pod-a") async throws {
    _ = try await node.nodeUnpublishVolume(
      .with {
        $0.volumeID = v.id
        $0.targetPath = machine.targetPath(v, pod: pod)
      })
  }

  func unstage(_ v: TestVolume) async throws {
    _ = try await node.nodeUnstageVolume(
      .with {
        $0.volumeID = v.id
        $0.stagingTargetPath = machine.stagingPath(v)
      })
  }

  func stats(_ v: TestVolume, path: String) async throws -> Csi_V1_NodeGetVolumeStatsResponse {
    try await node.nodeGetVolumeStats(
      .with {
        $0.volumeID = v.id
        $0.volumePath = path
      })
  }
}

// MARK: requests

typealias Mode = Csi_V1_VolumeCapability.AccessMode.Mode

func mountCapability(_ mode: Mode = .singleNodeWriter, fsType: String = "ext4", flags: [String] = [])
  -> Csi_V1_VolumeCapability
{
  .with {
    $0.mount = .with {
      $0.fsType = fsType
      $0.mountFlags = flags
    }
    $0.accessMode = .with { $0.mode = mode }
  }
}

func blockCapability(_ mode: Mode = .singleNodeWriter) -> Csi_V1_VolumeCapability {
  .with {
    $0.block = .init()
    $0.accessMode = .with { $0.mode = mode }
  }
}

func stageRequest(
  _ v: TestVolume, _ capability: Csi_V1_VolumeCapability = mountCapability(), at path: String,
  volumeContext: [String: String] = [:]
) -> Csi_V1_NodeStageVolumeRequest {
  .with {
    $0.volumeID = v.id
    $0.stagingTargetPath = path
    $0.volumeCapability = capability
    $0.publishContext = v.publishContext
    $0.volumeContext = volumeContext
  }
}

func publishRequest(
  _ v: TestVolume, _ capability: Csi_V1_VolumeCapability = mountCapability(), staging: String, target: String,
  readonly: Bool = false
) -> Csi_V1_NodePublishVolumeRequest {
  .with {
    $0.volumeID = v.id
    $0.stagingTargetPath = staging
    $0.targetPath = target
    $0.volumeCapability = capability
    $0.publishContext = v.publishContext
    $0.readonly = readonly
  }
}

let gibibyte: UInt64 = 1 << 30

func makeTemporaryDirectory() throws -> String {
  let path = FileManager.default.temporaryDirectory.appendingPathComponent(
    "nvme-csi-node-\(UUID().uuidString.prefix(8))"
  ).path
  try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}
