import CSIProto
import GRPCCore
import NVMeCSICore
import Testing

typealias Mode = Csi_V1_VolumeCapability.AccessMode.Mode

func mountCapability(_ mode: Mode = .singleNodeWriter, fsType: String = "ext4") -> Csi_V1_VolumeCapability {
  .with {
    $0.mount = .with { $0.fsType = fsType }
    $0.accessMode = .with { $0.mode = mode }
  }
}

func blockCapability(_ mode: Mode = .singleNodeWriter) -> Csi_V1_VolumeCapability {
  .with {
    $0.block = .init()
    $0.accessMode = .with { $0.mode = mode }
  }
}

let mebibyte: Int64 = 1 << 20

func createRequest(
  _ name: String, bytes: Int64 = 64 * mebibyte, capability: Csi_V1_VolumeCapability = mountCapability(),
  parameters: [String: String] = [:]
) -> Csi_V1_CreateVolumeRequest {
  .with {
    $0.name = name
    if bytes != 0 { $0.capacityRange = .with { $0.requiredBytes = bytes } }
    $0.volumeCapabilities = [capability]
    $0.parameters = parameters
  }
}

/// A node ID as `nvme-csi node` reports it, for host number `n`.
func nodeID(_ n: Int) -> String {
  let uuid = String(format: "0f8e1c2a-1111-4222-8333-%012d", n)
  return "n1.\(uuid).nqn.2014-08.org.nvmexpress:uuid:\(uuid)"
}

func hostNQN(_ n: Int) -> String { String(nodeID(n).dropFirst(40)) }

func publishRequest(
  _ volumeID: String, node: Int, capability: Csi_V1_VolumeCapability = mountCapability(), readonly: Bool = false
) -> Csi_V1_ControllerPublishVolumeRequest {
  .with {
    $0.volumeID = volumeID
    $0.nodeID = nodeID(node)
    $0.volumeCapability = capability
    $0.readonly = readonly
  }
}

func unpublishRequest(_ volumeID: String, node: Int) -> Csi_V1_ControllerUnpublishVolumeRequest {
  .with {
    $0.volumeID = volumeID
    $0.nodeID = nodeID(node)
  }
}
