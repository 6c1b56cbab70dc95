/// Who this node is to an NVMe target: the host NQN it connects with and its host ID.
/// Every node must have its own (a shared NQN lets one node see another's volumes).
public struct HostIdentity: Hashable, Sendable {
  public var nqn: HostNQN
  public var id: ObjectUUID

  public init(nqn: HostNQN, id: ObjectUUID) {
    self.nqn = nqn
    self.id = id
  }

  /// The CSI node ID the controller needs to grant this host.
  public var nodeID: NodeID { NodeID(hostID: id, hostNQN: nqn) }
}
