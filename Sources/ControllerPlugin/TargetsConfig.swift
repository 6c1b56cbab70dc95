import Foundation
import NVMeCSICore

/// The storage targets a controller provisions on, from the targets file (JSON):
///
///     {"targets": [
///       {"name": "store-a", "address": "10.0.0.5:7600",
///        "topology": {"topology.nvme.csi.dev/zone": "a"}, "failureDomain": "rack-1"}
///     ]}
///
/// `name` becomes part of every volume ID on that target, so never rename a target
/// that holds volumes. `topology` lists the segments of the nodes that can reach it
/// (empty: every node). `failureDomain` names what fails together with it (a machine,
/// rack or zone; default: the target alone): a replicated volume's legs are placed in
/// different domains.
public struct TargetsConfig: Sendable, Equatable {
  public struct Entry: Sendable, Equatable {
    public var name: TargetName
    public var address: String
    public var topology: [String: String]
    public var failureDomain: String?

    public init(name: TargetName, address: String, topology: [String: String], failureDomain: String? = nil) {
      self.name = name
      self.address = address
      self.topology = topology
      self.failureDomain = failureDomain
    }
  }

  public var targets: [Entry]

  public init(targets: [Entry]) { self.targets = targets }

  public init(contentsOf path: String) throws(NVMeCSIError) {
    guard let data = FileManager.default.contents(atPath: path) else {
      throw .invalidArgument("cannot read targets file \(path)")
    }
    try self.init(json: data, source: path)
  }

  public init(json data: Data, source: String = "targets file") throws(NVMeCSIError) {
    struct File: Decodable {
      struct Target: Decodable {
        var name: String
        var address: String
        var topology: [String: String]?
        var failureDomain: String?
      }
      var targets: [Target]
    }
    let file: File
    do { file = try JSONDecoder().decode(File.self, from: data) } catch {
      throw .invalidArgument("\(source) is not valid: \(error)")
    }
    guard !file.targets.isEmpty else { throw .invalidArgument("\(source) lists no targets") }
    var entries: [Entry] = []
    for target in file.targets {
      let name = try TargetName(target.name)
      guard !entries.contains(where: { $0.name == name }) else {
        throw .invalidArgument("\(source) names target \(name) twice")
      }
      guard !target.address.isEmpty else { throw .invalidArgument("\(source): target \(name) has no address") }
      if let domain = target.failureDomain, domain.isEmpty || domain.utf8.count > 253 {
        throw .invalidArgument("\(source): target \(name) has a failureDomain that is empty or over 253 bytes")
      }
      entries.append(
        Entry(
          name: name, address: target.address, topology: target.topology ?? [:], failureDomain: target.failureDomain))
    }
    self.targets = entries
  }
}
