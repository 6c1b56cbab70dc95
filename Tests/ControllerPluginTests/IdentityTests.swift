import CSIProto
import Testing

@Suite("Identity service")
struct IdentityTests {
  @Test("GetPluginInfo names the driver and its version")
  func pluginInfo() async throws {
    try await Harness.with { h in
      let info = try await h.identity.getPluginInfo(.init())
      #expect(info.name == "nvme.csi.dev")
      #expect(!info.vendorVersion.isEmpty)
    }
  }

  @Test("GetPluginCapabilities offers the controller, topology and online expansion")
  func capabilities() async throws {
    try await Harness.with { h in
      let caps = try await h.identity.getPluginCapabilities(.init()).capabilities
      let services = caps.compactMap { c -> Csi_V1_PluginCapability.Service.TypeEnum? in
        if case .service(let s)? = c.type { return s.type }
        return nil
      }
      #expect(Set(services) == [.controllerService, .volumeAccessibilityConstraints])
      #expect(caps.contains { if case .volumeExpansion(let e)? = $0.type { e.type == .online } else { false } })
    }
  }

  @Test("Probe is ready while a target answers and not ready when none does")
  func probe() async throws {
    try await Harness.with(processes: true) { h in
      let observed1 = try await h.identity.probe(.init()).ready.value
      #expect(observed1 == true)
      h.storeA.kill()
      let observed2 = try await h.identity.probe(.init()).ready.value
      #expect(observed2 == true)
      h.storeB.kill()
      let observed3 = try await h.identity.probe(.init()).ready.value
      #expect(observed3 == false)
    }
  }

  @Test("ControllerGetCapabilities lists every supported RPC and not MODIFY_VOLUME")
  func controllerCapabilities() async throws {
    try await Harness.with { h in
      let types = try await h.controller.controllerGetCapabilities(.init()).capabilities.compactMap { c in
        if case .rpc(let r)? = c.type { r.type } else { nil }
      }
      let expected: Set<Csi_V1_ControllerServiceCapability.RPC.TypeEnum> = [
        .createDeleteVolume, .publishUnpublishVolume, .listVolumes, .listVolumesPublishedNodes, .getCapacity,
        .createDeleteSnapshot, .listSnapshots, .getSnapshot, .cloneVolume, .expandVolume, .publishReadonly, .getVolume,
        .volumeCondition, .singleNodeMultiWriter, .modifyVolume,
      ]
      #expect(Set(types) == expected)
    }
  }
}
