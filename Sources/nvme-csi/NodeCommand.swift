import ArgumentParser
import CSIServer
import Foundation
import Logging
import Mounting
import NVMeCSICore
import NVMeFabrics
import NodePlugin
import ServiceLifecycle

struct NodeCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "node",
    abstract: "Serve CSI Identity and Node on a worker: attach volumes over NVMe/TCP, format and mount them.")

  @Option(help: "CSI endpoint kubelet connects to.")
  var endpoint: String = "unix:///csi/csi.sock"

  @Option(help: "CSI driver name (must match the controller's).")
  var driverName: String = "nvme.csi.dev"

  @OptionGroup var node: NodeOptions
  @OptionGroup var metrics: MetricsOptions
  @OptionGroup var logging: LoggingOptions

  func run() async throws {
    let logger = try logging.makeLogger(label: "nvme-csi.node")
    let endpoint = try Endpoint(parsing: endpoint)
    let role = try node.makeRole(logger: logger)
    let identity = IdentityService(
      driverName: driverName, version: BuildInfo.version,
      capabilities: IdentityService.nodeCapabilities(hasTopology: role.hasTopology),
      isReady: role.isReady)
    let (driverMetrics, metricsServices) = try metrics.make(logger: logger)
    driverMetrics?.observe(role.service)
    let server = try GRPCService(
      endpoint: endpoint, services: [identity, role.service], metrics: driverMetrics, logger: logger)
    logger.info("node starting", metadata: ["node_id": "\(role.nodeID)", "state_dir": "\(node.stateDir)"])
    let group = ServiceGroup(
      services: metricsServices + role.background + [server], gracefulShutdownSignals: [.sigterm, .sigint],
      logger: logger)
    try await group.run()
  }
}

/// What the node role needs: where its state lives, its identity and its limits.
struct NodeOptions: ParsableArguments {
  @Option(help: "Directory for staging records and a derived host identity (survives restarts; keep it on the host).")
  var stateDir: String = "/var/lib/nvme-csi"

  @Option(help: "Directory with hostnqn and hostid (Talos writes /etc/nvme).")
  var nvmeConfigDir: String = "/etc/nvme"

  @Option(help: "Topology segment of this node, key=value (repeatable), e.g. topology.nvme.csi.dev/zone=a.")
  var topology: [String] = []

  @Option(help: "Most volumes this node may attach (0: no limit).")
  var maxVolumesPerNode: Int64 = 0

  @Option(help: "Seconds to wait for a namespace's block device after connecting.")
  var deviceTimeout: Int = 30

  @Option(help: "Threads for blocking work (mkfs, blkid, mount), apart from those serving RPCs.")
  var blockingThreads: Int = 16

  @Option(help: "Seconds between checks of replicated volumes' mirrors (returning legs are re-added).")
  var mirrorCheckInterval: Int = 5

  /// The Node service, checked against the kernel and its own records.
  struct Role: Sendable {
    let service: NodeService
    let nodeID: String
    let hasTopology: Bool
    /// Ready when the kernel can attach NVMe/TCP volumes (why not is logged at start).
    let isReady: IdentityService.Readiness
    /// What runs beside the endpoint: the mirror reconciler.
    let background: [any Service]
  }

  func makeRole(logger: Logger) throws -> Role {
    guard BlockingPool.threadCounts.contains(blockingThreads) else {
      throw ValidationError("--blocking-threads \(blockingThreads) is not within \(BlockingPool.threadCounts)")
    }
    guard (1...3600).contains(mirrorCheckInterval) else {
      throw ValidationError("--mirror-check-interval \(mirrorCheckInterval) is not within 1...3600 seconds")
    }
    var segments: [String: String] = [:]
    for item in topology {
      // One segment per flag; a label value cannot hold a comma, so "a=b,c=d" is refused.
      let pairs = KeyValueList.items(item)
      guard pairs.count == 1, let pair = pairs.first, let value = pair.value, !pair.key.isEmpty else {
        throw ValidationError("--topology \(item) is not key=value")
      }
      segments[pair.key] = value
    }
    let records = try StagingRecords(stateDirectory: stateDir)
    let hostIdentity = try HostIdentityLoader(nvmeConfigDirectory: nvmeConfigDir, stateDirectory: stateDir).load(
      logger: logger)
    let attacher = NVMeTCPAttacher()
    let runner = CommandRunner(pool: BlockingPool(threads: blockingThreads))
    let node = NodeService(
      configuration: .init(
        host: hostIdentity, topology: segments, maxVolumesPerNode: maxVolumesPerNode,
        deviceTimeout: .seconds(deviceTimeout), failpoints: Failpoints(environment: ProcessInfo.processInfo.environment)
      ),
      attacher: attacher, mounter: SystemMounter(runner: runner), mirrors: MDAdmArrays(runner: runner),
      records: records, logger: logger)
    do { try attacher.checkKernelSupport() } catch {
      logger.error("\(error.message); volumes cannot be attached until this is fixed")
    }
    node.checkStagedVolumes()
    return Role(
      service: node, nodeID: "\(hostIdentity.nodeID)",
      hasTopology: !segments.isEmpty,
      isReady: { (try? attacher.checkKernelSupport()) != nil },
      background: [MirrorReconcilerService(node: node, interval: .seconds(mirrorCheckInterval))])
  }
}
