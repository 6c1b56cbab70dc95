import ArgumentParser
import CSIServer
import ControllerPlugin
import GRPCCore
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

  @Option(help: "CSI driver name (the StorageClass provisioner).")
  var driverName: String = "nvme.csi.dev"

  @OptionGroup var controller: ControllerOptions
  @OptionGroup var metrics: MetricsOptions
  @OptionGroup var logging: LoggingOptions

  func run() async throws {
    let logger = try logging.makeLogger(label: "nvme-csi.controller")
    let endpoint = try Endpoint(parsing: endpoint)
    let eventLoop = RPCEventLoop()
    let role = try controller.makeRole(eventLoop: eventLoop, logger: logger)
    let identity = IdentityService(
      driverName: driverName, version: BuildInfo.version, capabilities: IdentityService.controllerCapabilities,
      isReady: role.isReady)
    let (driverMetrics, metricsServices) = try metrics.make(logger: logger)
    driverMetrics?.observe(role.service)
    let server = try GRPCService(
      endpoint: endpoint, services: [identity] + role.services, metrics: driverMetrics, eventLoop: eventLoop,
      logger: logger)
    logger.info("controller starting", metadata: ["driver": "\(driverName)", "targets": "\(role.targetNames)"])
    let group = ServiceGroup(
      services: role.clients + metricsServices + [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    try await group.run()
  }
}

/// What the controller role needs: the targets file.
struct ControllerOptions: ParsableArguments {
  @Option(help: "Targets file (JSON): each target's name, API address and topology segments.")
  var targets: String

  @OptionGroup var tls: TLSOptions

  @Option(help: "The name every target's certificate must carry (a DNS SAN), whatever address it is reached at.")
  var targetServerName: String = "nvme-csi-target"

  @Option(
    help: ArgumentHelp(
      "Seconds a target may not answer before the legs of replicated volumes on it are replaced on other targets"
        + " (0: never by itself; `nvme-csi ctl repair-volume` still can).",
      discussion: "A rebooting storage node comes back within minutes and resyncs in seconds; a repair copies the"
        + " whole volume."))
  var replicaRepairGrace: Int = 600

  @Option(help: "Seconds between the checks for targets gone past the grace period.")
  var replicaRepairInterval: Int = 30

  mutating func validate() throws {
    guard (0...7 * 86400).contains(replicaRepairGrace) else {
      throw ValidationError("--replica-repair-grace \(replicaRepairGrace) is not within 0...604800 seconds")
    }
    guard (1...3600).contains(replicaRepairInterval) else {
      throw ValidationError("--replica-repair-interval \(replicaRepairInterval) is not within 1...3600 seconds")
    }
  }

  /// The Controller service over clients of every listed target.
  struct Role: Sendable {
    let service: ControllerService
    /// What the controller serves on its endpoint: CSI Controller, and the Admin
    /// service (`nvme-csi ctl repair-volume`) next to it on the same socket.
    var services: [any RegistrableRPCService] { [service, AdminService(controller: service)] }
    /// The target clients' connections, their certificate reloader, the placement
    /// indexing and the repair of lost legs, run for the life of the process.
    let clients: [any Service]
    let targetNames: [String]
    /// Ready while any target answers: one target down must not stop provisioning on the others.
    var isReady: IdentityService.Readiness { { [service] in await service.reachableTargetCount() > 0 } }
  }

  /// - Parameter eventLoop: where the target clients' connections run (nil: NIO's shared threads).
  func makeRole(eventLoop: RPCEventLoop? = nil, logger: Logger) throws -> Role {
    let config = try TargetsConfig(contentsOf: targets)
    let security = try tls.makeSecurity(logger: logger)
    var clients: [any Service] = security.services
    var storageTargets: [StorageTarget] = []
    for entry in config.targets {
      let client = try makeClient(
        to: try Endpoint(parsing: entry.address), security: ClientSecurity(security, serverName: targetServerName),
        eventLoop: eventLoop)
      clients.append(GRPCClientService(client, eventLoop: eventLoop))
      storageTargets.append(
        StorageTarget(
          name: entry.name, topology: entry.topology, failureDomain: entry.failureDomain,
          api: RemoteTargetAPI(name: entry.name, client: client, eventLoop: eventLoop)))
    }
    let service = ControllerService(targets: TargetSet(storageTargets), logger: logger)
    clients.append(PlacementIndexingService(controller: service))
    clients.append(
      LegRepairService(
        controller: service, grace: .seconds(replicaRepairGrace), interval: .seconds(replicaRepairInterval)))
    return Role(service: service, clients: clients, targetNames: config.targets.map(\.name.value))
  }
}
