import Logging
import NVMeCSICore
import ServiceLifecycle
import TargetContract

// The controller repairs replicated volumes by itself once a target has been gone
// longer than a grace period (docs/operations.md, "Replicated volumes"). A target that
// is merely rebooting (a Talos upgrade takes minutes) comes back, and its legs resync
// through md's bitmap in seconds; a repair costs a full copy, so it waits. Finding the
// volumes to repair means reading every leg record of the targets that answer, so that
// scan runs only when a target is newly past its grace or the last scan left a leg on
// one unrepaired (and once at start, for legs on targets no longer in the targets file).

/// What the repair loop carries from one pass to the next.
public struct LegRepairState: Sendable, Equatable {
  /// Since when each target has not answered; for a target no longer in the targets
  /// file, since a scan first met a leg on it.
  public var down: [TargetName: ContinuousClock.Instant] = [:]
  /// Targets past their grace on which the last scan left no leg unrepaired: no need to
  /// scan for them again (no new leg goes to a target that does not answer).
  public var settled: Set<TargetName> = []
  /// Whether a scan ran since the start.
  public var scanned = false

  public init() {}
}

extension ControllerService {
  /// One pass: notes which targets do not answer and since when, and repairs every
  /// replicated volume with a current leg on a target gone past `grace`, one leg per
  /// volume per pass. Answers the state for the next pass.
  public func repairLostLegs(_ state: LegRepairState, grace: Duration, now: ContinuousClock.Instant = .now) async
    -> LegRepairState
  {
    let answering = Set(await targets.reachableInfo(targets.all, logger: logger).map(\.target.name))
    var next = LegRepairState()
    next.scanned = true
    next.down = state.down.filter { targets[$0.key] == nil }
    for target in targets.all where !answering.contains(target.name) {
      next.down[target.name] = state.down[target.name] ?? now
    }
    let lost = Set(next.down.filter { now - $0.value >= grace }.keys)
    next.settled = state.settled.intersection(lost)
    guard state.scanned == false || !lost.isSubset(of: next.settled) else { return next }
    var unrepaired = Set<TargetName>()
    for id in await replicatedVolumes(on: targets.all.filter { answering.contains($0.name) }) {
      let map: LegMap
      do { map = try await currentLegMap(of: id) } catch {
        // Where its legs are is unknown: scan again next pass.
        unrepaired.formUnion(lost)
        logger.warning("volume not checked for lost legs", metadata: ["volume": "\(id)", "error": "\(error)"])
        continue
      }
      for leg in map.legs where targets[leg.target] == nil && next.down[leg.target] == nil {
        next.down[leg.target] = now
      }
      let onLost = map.legs.indices.filter { lost.contains(map.legs[$0].target) }
      guard let index = onLost.first else { continue }
      let target = map.legs[index].target
      unrepaired.formUnion(onLost.dropFirst().map { map.legs[$0].target })
      logger.notice(
        "a leg's target is gone past the grace period: repairing the volume",
        metadata: [
          "volume": "\(id)", "leg": "\(index)", "target": "\(target)",
          "gone for": "\(now - (next.down[target] ?? now))",
        ])
      do {
        let repaired = try await repairVolume(id, leg: index, to: nil)
        logger.notice(
          "leg replaced; the nodes' md copies the data onto it",
          metadata: ["volume": "\(id)", "leg": "\(index)", "new target": "\(repaired.legs[index].target)"])
      } catch {
        unrepaired.insert(target)
        logger.warning("volume not repaired; next pass retries", metadata: ["volume": "\(id)", "error": "\(error)"])
      }
    }
    next.settled = lost.subtracting(unrepaired)
    return next
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
    var state = LegRepairState()
    while !Task.isCancelled && !Task.isShuttingDownGracefully {
      state = await controller.repairLostLegs(state, grace: grace)
      // Ends at shutdown, not at the end of the interval (a pod's grace period is 30 s).
      try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
    }
  }
}
