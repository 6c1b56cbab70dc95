import ArgumentParser
import CSIServer
import ControllerPlugin
import Logging
import NVMeCSICore
import ServiceLifecycle
import TargetContract

struct ControllerCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "controller",
    abstract: "Serve CSI Identity and Controller, provisioning on the storage targets.")

  @Option(help: "CSI endpoint the sidecars connect to.")
  var endpoint: String = "unix:///csi/csi.sock"

  @Option(help: "Targets file (JSON): each target's name, API address and topology segments.")
  var targets: String

  @Option(help: "CSI driver name (the StorageClass provisioner).")
  var driverName: String = "nvme.csi.dev"

  @OptionGroup var logging: LoggingOptions

  func run() async throws {
    let logger = try logging.makeLogger(label: "nvme-csi.controller")
    let endpoint = try Endpoint(parsing: endpoint)
    let config = try TargetsConfig(contentsOf: targets)

    var clients: [GRPCClientService] = []
    var storageTargets: [StorageTarget] = []
    for entry in config.targets {
      let client = try makeClient(to: try Endpoint(parsing: entry.address))
      clients.append(GRPCClientService(client))
      storageTargets.append(
        StorageTarget(
          name: entry.name, topology: entry.topology, api: RemoteTargetAPI(name: entry.name, client: client)))
    }
    let targetSet = TargetSet(storageTargets)
    let controller = ControllerService(targets: targetSet, logger: logger)
    // Ready while any target answers: one target down must not stop provisioning on the others.
    let identity = IdentityService(
      driverName: driverName, version: BuildInfo.version, capabilities: IdentityService.controllerCapabilities,
      isReady: { await controller.reachableTargetCount() > 0 })
    let server = try GRPCService(endpoint: endpoint, services: [identity, controller], logger: logger)
    logger.info(
      "controller starting", metadata: ["driver": "\(driverName)", "targets": "\(config.targets.map(\.name.value))"])
    let group = ServiceGroup(
      services: clients.map { $0 as any Service } + [server], gracefulShutdownSignals: [.sigterm, .sigint],
      logger: logger)
    try await group.run()
  }
}
