import ArgumentParser
import CSIServer
import Foundation
import Logging
import NVMeCSICore
import NVMetExporter
import ServiceLifecycle
import TargetAgent
import VolumeStore

struct TargetCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "target",
    abstract: "Serve the target API on a storage node: volumes in a store, exported by the kernel NVMe target.")

  @Option(help: "Address the target API listens on (host:port), with mutual TLS.")
  var listen: String = "127.0.0.1:7600"

  @Option(
    help: ArgumentHelp(
      "Volume store: file:<dir> (sparse files; reflink snapshots on XFS/btrfs) "
        + "or lvm:<vg>/<thinpool> (thin volumes and snapshots).")
  )
  var store: String

  @Option(
    help: ArgumentHelp(
      "configfs mount point holding nvmet. "
        + "A directory that is not configfs is used as a simulated nvmet (nothing is served).")
  )
  var configfs: String = "/sys/kernel/config"

  @Option(help: "NVMe/TCP listen address written into an nvmet port (addr:port). Repeat for several paths.")
  var portal: [String] = []

  @Option(
    help: ArgumentHelp(
      "This target's name (the manifests use the node name). A file store records it at first use and is refused"
        + " by a target of another name."))
  var name: String?

  @Option(
    help: ArgumentHelp(
      "How far the volumes' sizes together may exceed the store's size, 1-100. 1 (the default): no thin"
        + " overcommit (snapshots and other files on the store are not counted)."))
  var overcommitRatio: Double = 1

  @Option(
    help: ArgumentHelp(
      "Directory for the placement journal of an LVM store (a file store keeps it in its directory)."
        + " Keep it on the host: it records where volume names live."))
  var stateDir: String = "/var/lib/nvme-csi/target"

  @Option(help: "Threads for blocking work (copies, fsync, lvm, configfs), apart from those serving RPCs.")
  var blockingThreads: Int = 16

  @OptionGroup var tls: TLSOptions

  @Option(
    help: ArgumentHelp(
      "A name (DNS or URI SAN, or CN) in the client certificate allowed every call: the controller's."
        + " Repeat for several."))
  var controllerIdentity: [String] = ["nvme-csi-controller"]

  @Option(
    help: "A name in the client certificate allowed to read only (GetInfo, GetVolume, ListVolumes, ListSnapshots).")
  var readerIdentity: [String] = ["nvme-csi-reader"]

  @OptionGroup var metrics: MetricsOptions
  @OptionGroup var logging: LoggingOptions

  func validate() throws {
    guard !portal.isEmpty else {
      throw ValidationError("at least one --portal is required (e.g. --portal 10.0.0.5:4420)")
    }
    guard BlockingPool.threadCounts.contains(blockingThreads) else {
      throw ValidationError("--blocking-threads \(blockingThreads) is not within \(BlockingPool.threadCounts)")
    }
    guard TargetAgent.overcommitRatios.contains(overcommitRatio) else {
      throw ValidationError("--overcommit-ratio \(overcommitRatio) is not between 1 and 100")
    }
    if let name, name.isEmpty || name.utf8.count > 253 || name.contains(where: { $0.isWhitespace || $0 == "/" }) {
      throw ValidationError("--name \(name) must be 1-253 bytes without spaces or slashes")
    }
  }

  func run() async throws {
    let logger = try logging.makeLogger(label: "nvme-csi.target")
    let endpoint = try Endpoint(parsing: listen)
    // TLS and the plaintext rule are checked before the store or configfs is touched.
    let security = try tls.makeSecurity(logger: logger)
    try security.check(serving: endpoint)
    let portals = try portal.map { (text) throws(NVMeCSIError) in try HostPort(portal: text) }
    let failpoints = Failpoints(environment: ProcessInfo.processInfo.environment)
    let pool = BlockingPool(threads: blockingThreads)
    let volumeStore: any VolumeStore
    let placementsPath: String
    if store.hasPrefix("file:") {
      volumeStore = try FileStore(root: String(store.dropFirst(5)), target: name, failpoints: failpoints)
      placementsPath = String(store.dropFirst(5)) + "/placements.journal"
    } else if store.hasPrefix("lvm:") {
      if name != nil { logger.warning("--name is recorded only by file stores; the LVM store ignores it") }
      volumeStore = try LVMThinStore(
        spec: String(store.dropFirst(4)), lvm: LVMCommand(pool: pool), failpoints: failpoints)
      placementsPath = stateDir + "/placements.journal"
      do { try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true) } catch {
        throw ValidationError("--state-dir \(stateDir) cannot be created: \(error)")
      }
    } else {
      throw ValidationError("--store \(store) is not supported: use file:<directory> or lvm:<volume-group>/<thin-pool>")
    }
    let exporter = try NVMetExporter(configfs: configfs, portals: portals)
    if exporter.kind == .simulated {
      logger.warning(
        "\(configfs) is not configfs: exports are simulated in that directory and nothing is served over NVMe/TCP")
    }
    let agent = TargetAgent(
      store: volumeStore, exporter: exporter, pool: pool, placementsPath: placementsPath,
      overcommitRatio: overcommitRatio, logger: logger)
    let authorization = PeerAuthorization(
      writers: Set(controllerIdentity), readers: Set(readerIdentity), readMethods: TargetService.readMethods)
    let (driverMetrics, metricsServices) = try metrics.make(logger: logger)
    driverMetrics?.observe(agent)
    let server = try GRPCService(
      endpoint: endpoint, security: security, authorization: authorization, services: [TargetService(target: agent)],
      metrics: driverMetrics, eventLoop: RPCEventLoop(), logger: logger)
    try agent.start()
    let group = ServiceGroup(
      services: security.services + metricsServices + [server], gracefulShutdownSignals: [.sigterm, .sigint],
      logger: logger)
    try await group.run()
  }
}
