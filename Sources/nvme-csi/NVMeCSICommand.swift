import ArgumentParser
import CSIServer
import Logging
import NVMeCSICore

@main
struct NVMeCSICommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "nvme-csi",
    abstract: "A Kubernetes CSI driver for NVMe/TCP block storage.",
    discussion: "One binary for every role: the CSI controller, the storage target agent, and a CSI client (ctl).",
    version: BuildInfo.version,
    subcommands: [ControllerCommand.self, NodeCommand.self, AllInOneCommand.self, TargetCommand.self, CtlCommand.self])
}

/// Logging flags shared by the long-running roles.
struct LoggingOptions: ParsableArguments {
  @Option(help: "Least severe level logged: trace, debug, info, notice, warning, error, critical.")
  var logLevel: String = "info"

  @Option(help: "Log line format: text or json.")
  var logFormat: String = "text"

  func makeLogger(label: String) throws -> Logger {
    guard let level = Logger.Level(rawValue: logLevel) else {
      throw ValidationError(
        "--log-level \(logLevel) is not one of trace, debug, info, notice, warning, error, critical")
    }
    guard let format = LogFormat(rawValue: logFormat) else {
      throw ValidationError("--log-format \(logFormat) is not text or json")
    }
    return CSIServer.makeLogger(label: label, level: level, format: format)
  }
}
