import Foundation
import Logging
import NVMeCSICore
import NVMetExporter
import TargetAgent
import TargetContract
import VolumeStore

/// A real storage target inside the test process: a `TargetAgent` over a `FileStore`
/// and nvmet simulated in a plain directory, both under `directory`. The same code a
/// `nvme-csi target` process runs, without the process and the gRPC hop; a restart is
/// opening a new one on the same directories (`reopen()`).
public struct LocalTarget: Sendable {
  public let name: TargetName
  public let store: String
  public let configfs: String
  public let agent: TargetAgent
  let files: FileStore

  public init(
    name: String, directory: String, portal: HostPort = HostPort(host: "127.0.0.1", port: 4420),
    overcommitRatio: Double = 1
  ) throws {
    try self.init(
      name: name, store: directory + "/store", configfs: directory + "/configfs", portal: portal,
      overcommitRatio: overcommitRatio)
  }

  /// A target on these directories; `start()` has run (and may have refused).
  public init(
    name: String, store: String, configfs: String, portal: HostPort = HostPort(host: "127.0.0.1", port: 4420),
    overcommitRatio: Double = 1
  ) throws {
    self.name = try TargetName(name)
    self.store = store
    self.configfs = configfs
    try FileManager.default.createDirectory(atPath: configfs, withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: store, withIntermediateDirectories: true)
    var logger = Logger(label: "test.target") { _ in SwiftLogNoOpLogHandler() }
    logger.logLevel = .critical
    let files = try FileStore(root: store)
    let agent = TargetAgent(
      store: files, exporter: try NVMetExporter(configfs: configfs, portals: [portal]),
      pool: .forTests, placementsPath: store + "/placements.journal", overcommitRatio: overcommitRatio,
      version: "test", logger: logger)
    try agent.start()
    self.agent = agent
    self.files = files
  }

  /// The file holding a volume's data (what nvmet serves, so what a node writes).
  public func dataPath(of volume: ObjectUUID) -> String { files.devicePath(of: volume) }

  /// The target as the controller sees it: errors name the target, as over gRPC.
  public var api: any TargetAPI { NamedTarget(name: name, api: agent) }
}
