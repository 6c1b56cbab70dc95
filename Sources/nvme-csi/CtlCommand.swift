import AdminProto
import ArgumentParser
import CSIProto
import CSIServer
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NVMeCSICore
import SwiftProtobuf

/// `nvme-csi ctl`: the CSI RPCs as commands, for operators, demos and tests.
struct CtlCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "ctl",
    abstract: "Call a CSI plugin's RPCs (and the controller's admin ones) over its socket, or read one target's API.",
    subcommands: [
      PluginInfo.self, CreateVolume.self, DeleteVolume.self, GetVolume.self, ListVolumes.self, Expand.self,
      ModifyVolume.self, Publish.self, Unpublish.self, CreateSnapshot.self, DeleteSnapshot.self, ListSnapshots.self,
      GetCapacity.self, RepairVolume.self,
      TargetInfoCommand.self, TargetVolumesCommand.self,
    ])
}

struct CtlOptions: ParsableArguments {
  @Option(help: "CSI endpoint of the plugin.")
  var endpoint: String = "unix:///csi/csi.sock"

  @Flag(help: "Print the raw response as JSON.")
  var json = false

  /// Runs one call with a controller and identity client, printing errors readably.
  func call<R: Sendable>(
    _ body:
      @Sendable (
        Csi_V1_Controller.Client<HTTP2ClientTransport.Posix>, Csi_V1_Identity.Client<HTTP2ClientTransport.Posix>
      )
      async throws -> R
  ) async throws -> R {
    try await connected { client in try await body(.init(wrapping: client), .init(wrapping: client)) }
  }

  /// Runs one call with a client of the controller's Admin service (same socket).
  func callAdmin<R: Sendable>(
    _ body: @Sendable (Nvmecsi_Admin_V1_Admin.Client<HTTP2ClientTransport.Posix>) async throws -> R
  ) async throws -> R {
    try await connected { client in try await body(.init(wrapping: client)) }
  }

  private func connected<R: Sendable>(
    _ body: (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> R
  ) async throws -> R {
    let endpoint = try Endpoint(parsing: self.endpoint)
    do {
      return try await withClient(to: endpoint, body)
    } catch let error as RPCError {
      throw CallFailed(code: error.code, message: error.message)
    }
  }

  func show(_ message: some SwiftProtobuf.Message, _ text: () -> String) throws {
    if json {
      var options = JSONEncodingOptions()
      options.preserveProtoFieldNames = true
      print(try message.jsonString(options: options))
    } else {
      print(text())
    }
  }
}

/// A failed RPC: ArgumentParser prints "Error: <code>: <message>" and exits non-zero.
struct CallFailed: Error, CustomStringConvertible {
  var code: RPCError.Code
  var message: String
  var description: String { "\(code): \(message)" }
}

struct CapabilityOptions: ParsableArguments {
  @Flag(help: "Raw block volume (default: a mounted file system).")
  var block = false

  @Option(help: "File system for mount volumes: ext4 or xfs.")
  var fsType: String = "ext4"

  @Option(
    help: ArgumentHelp(
      "Access mode: single-node-writer, single-node-reader-only, single-node-single-writer, "
        + "single-node-multi-writer, multi-node-reader-only, multi-node-multi-writer.")
  )
  var accessMode: String = "single-node-writer"

  func capability() throws -> Csi_V1_VolumeCapability {
    let modes: [String: Csi_V1_VolumeCapability.AccessMode.Mode] = [
      "single-node-writer": .singleNodeWriter, "single-node-reader-only": .singleNodeReaderOnly,
      "single-node-single-writer": .singleNodeSingleWriter, "single-node-multi-writer": .singleNodeMultiWriter,
      "multi-node-reader-only": .multiNodeReaderOnly, "multi-node-single-writer": .multiNodeSingleWriter,
      "multi-node-multi-writer": .multiNodeMultiWriter,
    ]
    guard let mode = modes[accessMode] else { throw ValidationError("unknown --access-mode \(accessMode)") }
    return .with {
      if block { $0.block = .init() } else { $0.mount = .with { $0.fsType = fsType } }
      $0.accessMode = .with { $0.mode = mode }
    }
  }
}

extension CtlCommand {
  struct PluginInfo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "plugin-info", abstract: "Name, version, capabilities and readiness.")
    @OptionGroup var options: CtlOptions

    func run() async throws {
      let (info, capabilities, probe) = try await options.call { _, identity in
        (
          try await identity.getPluginInfo(.init()), try await identity.getPluginCapabilities(.init()),
          try await identity.probe(.init())
        )
      }
      try options.show(info) {
        let names = capabilities.capabilities.map { c -> String in
          switch c.type {
          case .service(let s)?: "\(s.type)"
          case .volumeExpansion(let e)?: "expansion:\(e.type)"
          case nil: "?"
          }
        }
        return "\(info.name) \(info.vendorVersion)  ready=\(probe.ready.value)  "
          + "capabilities: \(names.joined(separator: ", "))"
      }
    }
  }

  struct CreateVolume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "create-volume", abstract: "Create (or find) a volume by name.")
    @OptionGroup var options: CtlOptions
    @OptionGroup var capability: CapabilityOptions
    @Argument(help: "Volume name (idempotency key).") var name: String
    @Option(help: "Size, e.g. 1Gi or 512Mi.") var size: String = "1Gi"
    @Option(help: "StorageClass-style parameter key=value (repeatable).") var parameter: [String] = []
    @Option(help: "VolumeAttributesClass-style mutable parameter key=value (repeatable).")
    var mutableParameter: [String] = []
    @Option(help: "Create from this snapshot ID.") var fromSnapshot: String?
    @Option(help: "Clone this volume ID.") var fromVolume: String?

    func run() async throws {
      var request = Csi_V1_CreateVolumeRequest()
      request.name = name
      request.capacityRange.requiredBytes = Int64(try ByteSize.parse(size))
      request.volumeCapabilities = [try capability.capability()]
      request.parameters = try keyValues(parameter, option: "--parameter")
      request.mutableParameters = try keyValues(mutableParameter, option: "--mutable-parameter")
      if let fromSnapshot { request.volumeContentSource.snapshot.snapshotID = fromSnapshot }
      if let fromVolume { request.volumeContentSource.volume.volumeID = fromVolume }
      let response = try await options.call { [request] controller, _ in try await controller.createVolume(request) }
      try options.show(response) {
        "volume \(response.volume.volumeID)  \(ByteSize.format(UInt64(response.volume.capacityBytes)))"
      }
    }
  }

  struct DeleteVolume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete-volume", abstract: "Delete a volume.")
    @OptionGroup var options: CtlOptions
    @Argument var volumeID: String

    func run() async throws {
      let response = try await options.call { controller, _ in
        try await controller.deleteVolume(.with { $0.volumeID = volumeID })
      }
      try options.show(response) { "deleted \(volumeID)" }
    }
  }

  struct GetVolume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "get-volume", abstract: "Show one volume, its nodes and health.")
    @OptionGroup var options: CtlOptions
    @Argument var volumeID: String

    func run() async throws {
      let r = try await options.call { controller, _ in
        try await controller.controllerGetVolume(.with { $0.volumeID = volumeID })
      }
      try options.show(r) { volumeLine(r.volume, r.status.publishedNodeIds, r.status.volumeCondition) }
    }
  }

  struct ListVolumes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "list-volumes", abstract: "List volumes on every target.")
    @OptionGroup var options: CtlOptions
    @Option(help: "Page size (0: all).") var maxEntries: Int32 = 0
    @Option(help: "Continue after this token.") var startingToken: String = ""

    func run() async throws {
      let r = try await options.call { [maxEntries, startingToken] controller, _ in
        try await controller.listVolumes(
          .with {
            $0.maxEntries = maxEntries
            $0.startingToken = startingToken
          })
      }
      try options.show(r) {
        var lines = r.entries.map { volumeLine($0.volume, $0.status.publishedNodeIds, $0.status.volumeCondition) }
        if lines.isEmpty { lines = ["no volumes"] }
        if !r.nextToken.isEmpty { lines.append("next token: \(r.nextToken)") }
        return lines.joined(separator: "\n")
      }
    }
  }

  struct Expand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "expand", abstract: "Grow a volume (ControllerExpandVolume).")
    @OptionGroup var options: CtlOptions
    @Argument var volumeID: String
    @Option(help: "New size, e.g. 2Gi.") var size: String

    func run() async throws {
      let bytes = Int64(try ByteSize.parse(size))
      let r = try await options.call { controller, _ in
        try await controller.controllerExpandVolume(
          .with {
            $0.volumeID = volumeID
            $0.capacityRange.requiredBytes = bytes
          })
      }
      try options.show(r) {
        "expanded \(volumeID) to \(ByteSize.format(UInt64(r.capacityBytes)))"
          + "\(r.nodeExpansionRequired ? " (the node grows the file system)" : "")"
      }
    }
  }

  struct ModifyVolume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "modify-volume",
      abstract:
        "Change a volume's connection settings (ControllerModifyVolume); the node applies them at the next attach.")
    @OptionGroup var options: CtlOptions
    @Argument var volumeID: String
    @Option(help: "Mutable parameter key=value, e.g. ctrlLossTmo=-1 (repeatable).") var parameter: [String] = []

    func run() async throws {
      let parameters = try keyValues(parameter, option: "--parameter")
      let r = try await options.call { controller, _ in
        try await controller.controllerModifyVolume(
          .with {
            $0.volumeID = volumeID
            $0.mutableParameters = parameters
          })
      }
      try options.show(r) { "modified \(volumeID): applied when the volume is next attached to a node" }
    }
  }

  struct Publish: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "publish", abstract: "Allow a node to attach a volume (ControllerPublishVolume).")
    @OptionGroup var options: CtlOptions
    @OptionGroup var capability: CapabilityOptions
    @Argument var volumeID: String
    @Option(help: "Node ID (n1.<host-id>.<host-nqn>).") var node: String
    @Flag(help: "Read-only publication.") var readonly = false

    func run() async throws {
      let cap = try capability.capability()
      let r = try await options.call { [readonly] controller, _ in
        try await controller.controllerPublishVolume(
          .with {
            $0.volumeID = volumeID
            $0.nodeID = node
            $0.volumeCapability = cap
            $0.readonly = readonly
          })
      }
      try options.show(r) {
        "published \(volumeID) to \(node)\n"
          + r.publishContext.sorted { $0.key < $1.key }.map { "  \($0.key)=\($0.value)" }.joined(separator: "\n")
      }
    }
  }

  struct Unpublish: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "unpublish", abstract: "Revoke a node's access (ControllerUnpublishVolume).")
    @OptionGroup var options: CtlOptions
    @Argument var volumeID: String
    @Option(help: "Node ID (empty: every node).") var node: String = ""

    func run() async throws {
      let r = try await options.call { controller, _ in
        try await controller.controllerUnpublishVolume(
          .with {
            $0.volumeID = volumeID
            $0.nodeID = node
          })
      }
      try options.show(r) { "unpublished \(volumeID)\(node.isEmpty ? " from every node" : " from \(node)")" }
    }
  }

  struct CreateSnapshot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "create-snapshot", abstract: "Snapshot a volume (idempotent by name).")
    @OptionGroup var options: CtlOptions
    @Argument var name: String
    @Option(help: "Source volume ID.") var volume: String

    func run() async throws {
      let r = try await options.call { controller, _ in
        try await controller.createSnapshot(
          .with {
            $0.name = name
            $0.sourceVolumeID = volume
          })
      }
      try options.show(r) { snapshotLine(r.snapshot) }
    }
  }

  struct DeleteSnapshot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete-snapshot", abstract: "Delete a snapshot.")
    @OptionGroup var options: CtlOptions
    @Argument var snapshotID: String

    func run() async throws {
      let r = try await options.call { controller, _ in
        try await controller.deleteSnapshot(.with { $0.snapshotID = snapshotID })
      }
      try options.show(r) { "deleted \(snapshotID)" }
    }
  }

  struct ListSnapshots: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list-snapshots", abstract: "List snapshots.")
    @OptionGroup var options: CtlOptions
    @Option(help: "Only snapshots of this volume.") var volume: String = ""

    func run() async throws {
      let r = try await options.call { controller, _ in
        try await controller.listSnapshots(.with { $0.sourceVolumeID = volume })
      }
      try options.show(r) {
        r.entries.isEmpty ? "no snapshots" : r.entries.map { snapshotLine($0.snapshot) }.joined(separator: "\n")
      }
    }
  }

  struct GetCapacity: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "get-capacity", abstract: "Free space for new volumes.")
    @OptionGroup var options: CtlOptions
    @Option(help: "Topology segment key=value (repeatable).") var topology: [String] = []

    func run() async throws {
      var request = Csi_V1_GetCapacityRequest()
      for item in topology {
        let pair = item.split(separator: "=", maxSplits: 1).map(String.init)
        guard pair.count == 2 else { throw ValidationError("--topology \(item) is not key=value") }
        request.accessibleTopology.segments[pair[0]] = pair[1]
      }
      let r = try await options.call { [request] controller, _ in try await controller.getCapacity(request) }
      try options.show(r) {
        "available \(ByteSize.format(UInt64(r.availableCapacity)))  "
          + "largest volume \(ByteSize.format(UInt64(r.maximumVolumeSize.value)))"
      }
    }
  }
}

extension CtlCommand {
  struct RepairVolume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "repair-volume",
      abstract:
        "Replace a replicated volume's leg, lost for good, by a blank leg on another target (the controller's Admin"
        + " service); md on the node copies the data onto it. A repeat finishes an interrupted repair.")
    @OptionGroup var options: CtlOptions
    @Argument(help: "A replicated volume's ID (r1.<uuid>.<target>.<target>[.<target>]).") var volumeID: String
    @Option(help: ArgumentHelp("The leg to replace (0, 1 or 2: its place in the volume ID).", valueName: "n"))
    var leg: UInt32
    @Option(help: ArgumentHelp("The target for the new leg (default: chosen as at create).", valueName: "target"))
    var to: String?

    func run() async throws {
      let request = Nvmecsi_Admin_V1_RepairVolumeRequest.with {
        $0.volumeID = volumeID
        $0.leg = leg
        $0.target = to ?? ""
      }
      let r = try await options.callAdmin { admin in try await admin.repairVolume(request) }
      try options.show(r) { legMapLines(volumeID, r) }
    }
  }
}

/// A volume's leg map as `ctl repair-volume` prints it.
func legMapLines(_ volumeID: String, _ r: Nvmecsi_Admin_V1_RepairVolumeResponse) -> String {
  var lines = ["volume \(volumeID)  leg map version \(r.mapVersion)"]
  lines += r.legs.map { "  leg \($0.index): \($0.target) (generation \($0.generation))" }
  lines += r.replaced.map { "  replaced leg \($0.index): \($0.target) (generation \($0.generation)), not yet deleted" }
  return lines.joined(separator: "\n")
}

func volumeLine(_ v: Csi_V1_Volume, _ nodes: [String], _ condition: Csi_V1_VolumeCondition) -> String {
  var line = "\(v.volumeID)  \(ByteSize.format(UInt64(v.capacityBytes)))"
  switch v.contentSource.type {
  case .snapshot(let s)?: line += "  from \(s.snapshotID)"
  case .volume(let c)?: line += "  clone of \(c.volumeID)"
  case nil: break
  }
  if !nodes.isEmpty { line += "  published to \(nodes.joined(separator: ", "))" }
  line += condition.abnormal ? "  ABNORMAL: \(condition.message)" : "  healthy"
  return line
}

func snapshotLine(_ s: Csi_V1_Snapshot) -> String {
  "snapshot \(s.snapshotID)  of \(s.sourceVolumeID)  \(ByteSize.format(UInt64(s.sizeBytes)))  ready=\(s.readyToUse)"
}

/// `key=value` options as a map; a malformed one is a usage error.
private func keyValues(_ items: [String], option: String) throws -> [String: String] {
  var values: [String: String] = [:]
  for item in items {
    let pair = item.split(separator: "=", maxSplits: 1).map(String.init)
    guard pair.count == 2 else { throw ValidationError("\(option) \(item) is not key=value") }
    values[pair[0]] = pair[1]
  }
  return values
}
