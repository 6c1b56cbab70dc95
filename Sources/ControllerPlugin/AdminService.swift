import AdminProto
import GRPCCore
import NVMeCSICore

/// The operator's calls that CSI has no RPC for (proto/nvmecsi/admin/v1/admin.proto),
/// served on the controller's CSI socket next to `ControllerService` and through the
/// same server, so the same interceptors log each call and map its `NVMeCSIError` to a
/// status (CSIServer). `nvme-csi ctl` is its client.
///
/// Each handler validates its request here, where it enters; the controller does the rest.
public struct AdminService: Nvmecsi_Admin_V1_Admin.SimpleServiceProtocol {
  let controller: ControllerService

  public init(controller: ControllerService) {
    self.controller = controller
  }

  public func repairVolume(request: Nvmecsi_Admin_V1_RepairVolumeRequest, context: ServerContext) async throws
    -> Nvmecsi_Admin_V1_RepairVolumeResponse
  {
    let repair = try LegRepairRequest(request)
    let map = try await controller.repairVolume(repair.volume, leg: repair.leg, to: repair.target)
    return Nvmecsi_Admin_V1_RepairVolumeResponse(map)
  }
}

/// A RepairVolume request, checked: a replicated volume's ID, one of its legs, and the
/// target for the new leg if one is named. `invalidArgument` otherwise, before anything
/// is touched.
struct LegRepairRequest: Equatable {
  var volume: VolumeID
  var leg: Int
  var target: TargetName?

  init(_ request: Nvmecsi_Admin_V1_RepairVolumeRequest) throws(NVMeCSIError) {
    guard !request.volumeID.isEmpty else { throw .invalidArgument("volume_id is required") }
    // An ID that does not parse names no volume of ours; for an operator's call that
    // is a mistake in the request, not a volume to report missing.
    guard let volume = try? VolumeID(parsing: request.volumeID) else {
      throw .invalidArgument(
        "volume_id \(quoted(request.volumeID)) is not a volume ID of this driver"
          + " (a replicated volume's is r1.<uuid>.<target>.<target>[.<target>])")
    }
    guard volume.isReplicated else {
      throw .invalidArgument(
        "volume \(volume) has a single copy: only a replicated volume's leg can be repaired")
    }
    // The ID fixes how many legs the volume has (at most ReplicaLayout.maximumReplicas);
    // a repair replaces a leg, it never adds one.
    guard request.leg < volume.targets.count else {
      throw .invalidArgument(
        "leg \(request.leg) does not exist: volume \(volume) has legs 0 to \(volume.targets.count - 1)")
    }
    self.volume = volume
    self.leg = Int(request.leg)
    self.target = request.target.isEmpty ? nil : try TargetName(request.target)
  }
}

extension Nvmecsi_Admin_V1_RepairVolumeResponse {
  init(_ map: LegMap) {
    self.init()
    mapVersion = map.version
    legs = map.legs.enumerated().map { index, leg in
      .with {
        $0.index = UInt32(index)
        $0.target = leg.target.value
        $0.generation = UInt32(leg.generation)
      }
    }
    replaced = map.replaced.map { leg in
      .with {
        $0.index = UInt32(leg.index)
        $0.target = leg.target.value
        $0.generation = UInt32(leg.generation)
      }
    }
  }
}
