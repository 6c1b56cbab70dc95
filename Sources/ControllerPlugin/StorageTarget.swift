import NVMeCSICore
import TargetContract

/// One storage target as the controller sees it: its name, where its volumes are
/// reachable from, and its API.
public struct StorageTarget: Sendable {
  public let name: TargetName
  /// Topology segments of the nodes that can reach this target (empty: every node).
  public let topology: [String: String]
  /// What fails together with this target (a machine, a rack, a zone): a replicated
  /// volume's legs go to different domains. Defaults to the target's own name.
  public let failureDomain: String
  let api: any TargetAPI

  public init(name: TargetName, topology: [String: String], failureDomain: String? = nil, api: any TargetAPI) {
    self.name = name
    self.topology = topology
    self.failureDomain = failureDomain ?? name.value
    self.api = api
  }

  /// Whether a node in `segments` can reach this target: every segment this target
  /// is constrained to must match.
  func isAccessible(from segments: [String: String]) -> Bool {
    topology.allSatisfy { key, value in segments[key] == nil || segments[key] == value }
      && segments.allSatisfy { key, value in topology[key] == nil || topology[key] == value }
  }
}
