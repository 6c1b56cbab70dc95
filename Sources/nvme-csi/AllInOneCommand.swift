import ArgumentParser
import CSIServer
import NVMeCSICore
import ServiceLifecycle

/// Controller and node on one endpoint, as a single machine that is both the
/// controller and a worker: for development and for the CSI conformance suite,
/// whose Node specs look for the Controller service on the endpoint they are given.
struct AllInOneCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "all-in-one",
    abstract: "Serve CSI Identity, Controller and Node on one endpoint (one machine; development and conformance).")

  @Option(help: "CSI endpoint.")
  var endpoint: String = "unix:///csi/csi.sock"

  @Option(help: "CSI driver name.")
  var driverName: String = "nvme.csi.dev"

  @OptionGroup var controller: ControllerOptions
  @OptionGroup var node: NodeOptions
  @OptionGroup var logging: LoggingOptions

  func run() async throws {
    let logger = try logging.makeLogger(label: "nvme-csi.all-in-one")
    let endpoint = try Endpoint(parsing: endpoint)
    let controllerRole = try controller.makeRole(logger: logger)
    let nodeRole = try node.makeRole(logger: logger)
    let identity = IdentityService(
      driverName: driverName, version: BuildInfo.version,
      capabilities: IdentityService.controllerAndNodeCapabilities(hasTopology: nodeRole.hasTopology),
      isReady: { [controllerRole, nodeRole] in
        let targetsReady = await controllerRole.isReady()
        let nodeReady = await nodeRole.isReady()
        return targetsReady && nodeReady
      })
    let server = try GRPCService(
      endpoint: endpoint, services: [identity] + controllerRole.services + [nodeRole.service], logger: logger)
    logger.info(
      "all-in-one starting",
      metadata: ["node_id": "\(nodeRole.nodeID)", "targets": "\(controllerRole.targetNames)"])
    let group = ServiceGroup(
      services: controllerRole.clients + nodeRole.background + [server], gracefulShutdownSignals: [.sigterm, .sigint],
      logger: logger)
    try await group.run()
  }
}
