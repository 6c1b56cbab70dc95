import ArgumentParser
import CSIServer
import GRPCCore
import Logging
import NVMeCSICore
import TargetContract

/// Read-only calls straight to one target's API, for operators: with the reader
/// certificate (`--reader-identity` on the target), what a target holds even while the
/// controller is down.
struct CtlTargetOptions: ParsableArguments {
  @Option(help: "The target API's address (host:port), as in the targets file.")
  var address: String

  @Option(help: "The name the target's certificate must carry.")
  var targetServerName: String = "nvme-csi-target"

  @OptionGroup var tls: TLSOptions

  func withTarget<R: Sendable>(_ body: (any TargetAPI) async throws -> R) async throws -> R {
    let endpoint = try Endpoint(parsing: address)
    let security = try tls.makeSecurity(logger: Logger(label: "nvme-csi.ctl") { _ in SwiftLogNoOpLogHandler() })
    do {
      return try await withClient(to: endpoint, security: ClientSecurity(security, serverName: targetServerName)) {
        try await body(RemoteTargetAPI(name: try TargetName("target"), client: $0, timeout: .seconds(30)))
      }
    } catch let error as NVMeCSIError {
      throw CallFailed(code: error.rpcErrorCode, message: error.message)
    }
  }
}

extension CtlCommand {
  struct TargetInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "target-info", abstract: "One target's store, capacity and portals (its API, read-only).")
    @OptionGroup var options: CtlTargetOptions

    func run() async throws {
      let info = try await options.withTarget { try await $0.info() }
      print(
        "\(info.storeKind) store, \(info.exporterKind) exporter, version \(info.version)\n"
          + "total \(ByteSize.format(info.totalBytes))  available \(ByteSize.format(info.availableBytes))  "
          + "provisioned \(ByteSize.format(info.provisionedBytes))  overcommit ×\(info.overcommitRatio)  "
          + "allocatable \(ByteSize.format(info.allocatableBytes))\n"
          + "portals: \(info.portals.map(\.description).joined(separator: ", "))")
    }
  }

  struct TargetVolumesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "target-volumes", abstract: "The volumes one target holds and who may attach them (read-only).")
    @OptionGroup var options: CtlTargetOptions

    func run() async throws {
      let volumes = try await options.withTarget { try await $0.volumes(named: nil) }
      if volumes.isEmpty { print("no volumes") }
      for volume in volumes {
        let record = volume.record
        var line = "\(record.uuid)  \(record.name)  \(ByteSize.format(record.sizeBytes))"
        line += "  \(record.sharing?.rawValue ?? "sharing unrecorded")"
        for publication in record.publications {
          line += "\n    published to \(publication.hostNQN)\(publication.readonly ? " (read-only)" : "")"
        }
        if let problem = volume.problem { line += "\n    ABNORMAL: \(problem)" }
        print(line)
      }
    }
  }
}
