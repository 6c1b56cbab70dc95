import CSIProto
import GRPCCore

/// CSI Identity, served by every plugin role.
public struct IdentityService: Csi_V1_Identity.SimpleServiceProtocol {
  public typealias Readiness = @Sendable () async -> Bool

  let driverName: String
  let version: String
  let capabilities: [Csi_V1_PluginCapability]
  let isReady: Readiness

  /// - Parameter isReady: whether the plugin's dependencies answer (Probe's `ready`).
  public init(
    driverName: String, version: String, capabilities: [Csi_V1_PluginCapability], isReady: @escaping Readiness
  ) {
    self.driverName = driverName
    self.version = version
    self.capabilities = capabilities
    self.isReady = isReady
  }

  /// What the controller plugin offers: the Controller service, topology-aware
  /// placement, and online expansion.
  public static let controllerCapabilities: [Csi_V1_PluginCapability] = [
    .with { $0.service = .with { $0.type = .controllerService } },
    .with { $0.service = .with { $0.type = .volumeAccessibilityConstraints } },
    .with { $0.volumeExpansion = .with { $0.type = .online } },
  ]

  /// What the node plugin offers: topology when the node has segments, online expansion.
  public static func nodeCapabilities(hasTopology: Bool) -> [Csi_V1_PluginCapability] {
    (hasTopology ? [.with { $0.service = .with { $0.type = .volumeAccessibilityConstraints } }] : [])
      + [.with { $0.volumeExpansion = .with { $0.type = .online } }]
  }

  /// Controller and node on one endpoint (`all-in-one`): the Controller service plus
  /// what the node offers.
  public static func controllerAndNodeCapabilities(hasTopology: Bool) -> [Csi_V1_PluginCapability] {
    [.with { $0.service = .with { $0.type = .controllerService } }] + nodeCapabilities(hasTopology: hasTopology)
  }

  public func getPluginInfo(request: Csi_V1_GetPluginInfoRequest, context: ServerContext) async throws
    -> Csi_V1_GetPluginInfoResponse
  {
    .with {
      $0.name = driverName
      $0.vendorVersion = version
    }
  }

  public func getPluginCapabilities(request: Csi_V1_GetPluginCapabilitiesRequest, context: ServerContext) async throws
    -> Csi_V1_GetPluginCapabilitiesResponse
  {
    .with { $0.capabilities = capabilities }
  }

  public func probe(request: Csi_V1_ProbeRequest, context: ServerContext) async throws -> Csi_V1_ProbeResponse {
    let ready = await isReady()
    return .with { $0.ready = .init(ready) }
  }
}
