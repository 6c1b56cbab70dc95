import Logging
import NVMeCSICore
import ServiceLifecycle
import TargetContract

// The controller repairs replicated volumes by itself once a target has been gone
// longer than a grace period (docs/operations.md, "Repairing a replicated volume").
// A target that is merely rebooting (a Talos upgrade takes minutes) comes back, and
// its legs resync through md's bitmap in seconds; a repair costs a full copy, so it
// waits. Finding the volumes to repair means reading every leg record of the targets
// that answer, so that scan runs only when some target is past its grace (and once at
// start, for legs on targets no longer in the targets file).

extension ControllerService {
  /// One pass: notes which targets do not answer, and since when (carried in `down`;
  /// a target no longer in the targets file counts from when a scan first met a leg on
  /// it), and repairs every replicated volume with a current leg on a target gone past
  /// `grace`, one leg per volume per pass. Answers the updated `down`.
  public func repairLostLegs(
    down: [TargetName: ContinuousClock.Instant], grace: Duration, scanAnyway: Bool = false,
    now: ContinuousClock.Instant = .now
  ) async -> [TargetName: ContinuousClock.Instant] {
    let answering = Set(await targets.reachableInfo(targets.all, logger: logger).map(\.target.name))
    var stillDown = down.filter { targets[$0.key] == nil }
    for target in targets.all where !answering.contains(target.name) {
      stillDown[target.name] = down[target.name] ?? now
    }
    let lost = Set(stillDown.filter { now - $0.value >= grace }.keys)
    guard !lost.isEmpty || scanAnyway else { return stillDown }
    for id in await replicatedVolumes(on: targets.all.filter { answering.contains($0.name) }) {
      do {
        let map = try await currentLegMap(of: id)
        for leg in map.legs where targets[leg.target] == nil && stillDown[leg.target] == nil {
          stillDown[leg.target] = now
        }
        guard let index = map.legs.firstIndex(where: { lost.contains($0.target) }) else { continue }
        let target = map.legs[index].target
        logger.notice(
          "a leg's target is gone past the grace period: repairing the volume",
          metadata: [
            "volume": "\(id)", "leg": "\(index)", "target": "\(target)",
            "gone for": "\(now - (stillDown[target] ?? now))",
          ])
        let repaired = try await repairVolume(id, leg: index, to: nil)
        logger.notice(
          "leg replaced; the nodes' md copies the data onto it",
          metadata: ["volume": "\(id)", "leg": "\(index)", "new target": "\(repaired.legs[index].target)"])
      } catch {
        logger.warning("volume not repaired; next pass retries", metadata: ["volume": "\(id)", "error": "\(error)"])
      }
    }
    return stillDown
  }

  /// Every replicated volume with a leg on `scope`, once each, from the legs' records.
  private func replicatedVolumes(on scope: [StorageTarget]) async -> [VolumeID] {
    var found: [ObjectUUID: VolumeID] = [:]
    for target in scope {
      var after: ObjectUUID?
      repeat {
        do {
          let page = try await target.api.volumes(after: after, limit: 500)
          for volume in page.volumes {
            if let id = VolumeAttribute.replicatedID(of: volume.record) { found[id.uuid] = id }
          }
          after = page.more ? page.volumes.last?.uuid : nil
        } catch {
          logger.warning(
            "cannot list a target's volumes to find legs to repair",
            metadata: ["target": "\(target.name)", "error": "\(error)"])
          after = nil
        }
      } while after != nil
    }
    return found.values.sorted()
  }
}

/// Runs `repairLostLegs` every `interval` until shutdown; a grace of zero turns it off.
public struct LegRepairService: Service {
  let controller: ControllerService
  let grace: Duration
  let interval: Duration

  public init(controller: ControllerService, grace: Duration, interval: Duration = .seconds(30)) {
    self.controller = controller
    self.grace = grace
    self.interval = interval
  }

  public func run() async throws {
    // Off: stay until shutdown (a service that returns would stop the group).
    guard grace > .zero else { return try await gracefulShutdown() }
    var down: [TargetName: ContinuousClock.Instant] = [:]
    var first = true
    while !Task.isCancelled && !Task.isShuttingDownGracefully {
      down = await controller.repairLostLegs(down: down, grace: grace, scanAnyway: first)
      first = false
      try? await Task.sleep(for: interval)
    }
  }
}
