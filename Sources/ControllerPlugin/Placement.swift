import Logging
import NVMeCSICore
import ServiceLifecycle
import Synchronization
import TargetContract

/// Finding a volume by name without asking every target (docs/architecture.md,
/// "Placement"). Each name has a home target (`TargetSet.home(of:)`); a volume placed
/// elsewhere is recorded at its home before it is created. So a name is found by
/// asking its home, and while one target is down only the names whose home or volume
/// is on it cannot be created.
///
/// Volumes created before placements were recorded are not recorded at their homes:
/// until each target has been indexed (its volumes recorded at their homes, by
/// `indexPlacements()`), a name that its home does not know is also looked up on the
/// targets not indexed yet, which must answer.
final class PlacementIndex: Sendable {
  private let indexed = Mutex<Set<TargetName>>([])

  func isIndexed(_ target: TargetName) -> Bool { indexed.withLock { $0.contains(target) } }
  func markIndexed(_ target: TargetName) { _ = indexed.withLock { $0.insert(target) } }
}

/// Where a name stands.
enum Located {
  /// The volume of that name, on its target.
  case found(StorageTarget, TargetVolume)
  /// Recorded at its home as placed on this target, not created there yet.
  case reserved(StorageTarget, home: StorageTarget)
  /// No volume has this name.
  case absent(home: StorageTarget)
}

extension ControllerService {
  /// Asks the name's home, then the target it names; answers `unavailable` when either
  /// does not answer (nothing else can tell whether the volume exists).
  func locate(_ name: String) async throws -> Located {
    guard let home = targets.home(of: name) else {
      throw NVMeCSIError.failedPrecondition("no storage target is configured: the targets file is empty")
    }
    let placement: NamePlacement
    do { placement = try await home.api.placement(of: name) } catch let error as NVMeCSIError
      where error.kind == .unavailable
    {
      throw homeDoesNotAnswer(name, home: home, error)
    }
    if placement.volumeHere, let volume = try await home.api.volumes(named: name).first {
      return .found(home, volume)
    }
    if let placed = placement.target {
      guard let target = targets[placed] else { throw placedOnUnlistedTarget(name, home: home, placed: placed) }
      if target.name != home.name, let volume = try await target.api.volumes(named: name).first {
        return .found(target, volume)
      }
      return .reserved(target, home: home)
    }
    // Not recorded: a volume from before placements may sit on a target not indexed yet.
    let unindexed = targets.all.filter { $0.name != home.name && !placements.isIndexed($0.name) }
    if !unindexed.isEmpty {
      let found = try await targets.askEvery(unindexed) { try await $0.api.volumes(named: name) }
      if let (target, volume) = found.lazy.flatMap({ t in t.value.map { (t.target, $0) } }).first {
        return .found(target, volume)
      }
    }
    return .absent(home: home)
  }

  /// The common case in one call: when the target chosen for a new volume is the
  /// name's home, the home records the placement and creates the volume in one
  /// CreateVolume, instead of a lookup, a reservation and a create. Nil when that does
  /// not apply: another target was chosen (or none fits), the home is older than
  /// `createVolume(_:asHome:)`, a target is not indexed yet (a volume from before
  /// placements may sit there), or the name is placed elsewhere already; the caller
  /// then locates the name in full. Charges what it creates to the home.
  func createOnHome(_ volume: NewVolume, choice: (target: StorageTarget, info: TargetInfo)?) async throws
    -> (target: StorageTarget, volume: TargetVolume, existed: Bool)?
  {
    guard let choice, choice.info.placesAsHome, let home = targets.home(of: volume.name),
      choice.target.name == home.name,
      targets.all.allSatisfy({ $0.name == home.name || placements.isIndexed($0.name) })
    else { return nil }
    let created = try await targetInfo.creating(
      on: home.name, { try await home.api.createVolume(volume, asHome: home.name) },
      charging: { created in
        guard case .volume(let volume, existed: false) = created else { return nil }
        return volume.record.sizeBytes
      })
    guard case .volume(let volume, let existed) = created else { return nil }  // placed elsewhere
    return (home, volume, existed)
  }

  /// A new name on a target other than its home in two calls, instead of a lookup, a
  /// reservation and a create: the reservation at the home answers where the name
  /// lives, because once every target is indexed each volume's name is recorded at its
  /// home. Nil when that does not apply (no choice, the home was chosen, a target not
  /// indexed yet) or the name is placed on another target already; the caller then
  /// locates the name in full. Charges what it creates to its target.
  func createElsewhere(_ volume: NewVolume, choice: (target: StorageTarget, info: TargetInfo)?) async throws
    -> (target: StorageTarget, volume: TargetVolume, existed: Bool)?
  {
    guard let choice, let home = targets.home(of: volume.name), choice.target.name != home.name,
      targets.all.allSatisfy({ placements.isIndexed($0.name) })
    else { return nil }
    let placed: StorageTarget
    do { placed = try await reserve(volume.name, on: choice.target, home: home) } catch let error as NVMeCSIError
      where error.kind == .unavailable
    {
      throw homeDoesNotAnswer(volume.name, home: home, error)
    }
    guard placed.name == choice.target.name else { return nil }
    let created = try await targetInfo.creating(
      on: placed.name, { try await placed.api.createVolume(volume) },
      charging: { $0.existed ? nil : $0.volume.record.sizeBytes })
    return (placed, created.volume, created.existed)
  }

  private func homeDoesNotAnswer(_ name: String, home: StorageTarget, _ error: NVMeCSIError) -> NVMeCSIError {
    .unavailable(
      "volume name \(quoted(name)) is recorded on its home target \(home.name), which does not answer;"
        + " names whose home is another target are unaffected: \(error.message)")
  }

  /// A name placed on a target since taken out of the targets file. A claim whose volume
  /// was never made there is stuck on it; a new claim has a new name (the provisioner
  /// names volumes after the claim's UID), placed afresh.
  private func placedOnUnlistedTarget(_ name: String, home: StorageTarget, placed: TargetName) -> NVMeCSIError {
    .failedPrecondition(
      "volume name \(quoted(name)) is recorded on its home target \(home.name) as placed on target \(placed),"
        + " which is not in the targets file: add that target back to the targets file; if it is gone for good,"
        + " delete the claim and create it again (a new claim's volume has a new name)")
  }

  /// Whether the target takes `createVolume(_:asHome:)` and `deleteVolume(_:asHome:)`
  /// (from its cached GetInfo; false when it does not answer).
  func placesAsHome(_ target: StorageTarget) async -> Bool {
    await targetInfo.info(of: [target], in: targets, logger: logger).first?.info.placesAsHome ?? false
  }

  /// Records `name` at its home as placed on `target` before it is created there,
  /// the home itself included (a create cut off by its deadline, or a second
  /// controller, must find the choice); answers the target recorded (an earlier record
  /// wins).
  func reserve(_ name: String, on target: StorageTarget, home: StorageTarget) async throws -> StorageTarget {
    let recorded = try await home.api.reservePlacements([Placement(name: name, target: target.name)])
    guard let placed = recorded.first?.target else {
      throw NVMeCSIError.internalError("home target \(home.name) answered no placement for \(quoted(name))")
    }
    guard let chosen = targets[placed] else { throw placedOnUnlistedTarget(name, home: home, placed: placed) }
    return chosen
  }

  /// After a delete: forgets the name's placement at its home. A failure only leaves a
  /// record pointing at a target without the volume, which a later create of the same
  /// name uses as its placement; it is logged, not returned.
  func releasePlacement(of name: String, on target: StorageTarget) async {
    guard let home = targets.home(of: name) else { return }
    do { try await home.api.releasePlacement(of: name, on: target.name) } catch {
      logger.warning(
        "placement not released: the home target keeps pointing the name at its old target",
        metadata: ["name": "\(name)", "home": "\(home.name)", "target": "\(target.name)", "error": "\(error)"])
    }
  }

  /// Records every volume of each target not indexed yet at its name's home; a target
  /// whose volumes are all recorded is indexed. Answers whether every target is. Reads
  /// each target a page (`pageSize` volumes) at a time, so memory stays flat however
  /// many volumes it holds.
  @discardableResult
  public func indexPlacements(pageSize: Int = Placements.maximumBatch) async -> Bool {
    var complete = true
    for target in targets.all where !placements.isIndexed(target.name) {
      do {
        var after: ObjectUUID?
        var count = 0
        while true {
          let page = try await target.api.volumes(after: after, limit: min(max(pageSize, 1), Placements.maximumBatch))
          try await recordAtHomes(page.volumes, of: target)
          count += page.volumes.count
          guard page.more, let last = page.volumes.last else { break }
          after = last.uuid
        }
        placements.markIndexed(target.name)
        logger.info("placements indexed", metadata: ["target": "\(target.name)", "volumes": "\(count)"])
      } catch {
        complete = false
        logger.notice(
          "placements of a target not indexed yet; retried later",
          metadata: ["target": "\(target.name)", "error": "\(error)"])
      }
    }
    return complete
  }

  /// Records at their homes the names of these volumes of `target` (one batch per home).
  private func recordAtHomes(_ volumes: [TargetVolume], of target: StorageTarget) async throws {
    var byHome: [TargetName: [Placement]] = [:]
    // A quarantined volume has no name to place (and is reported on its own).
    // Nor has a replicated volume's leg other than leg 0 (found through leg 0).
    for volume in volumes
    where volume.problem == nil && !volume.record.name.isEmpty
      && (VolumeAttribute.replicaIndex(of: volume.record) ?? 0) == 0
    {
      // On its home too: a reservation there for another target must find it.
      guard let home = targets.home(of: volume.record.name) else { continue }
      byHome[home.name, default: []].append(Placement(name: volume.record.name, target: target.name))
    }
    for (homeName, batch) in byHome {
      guard let home = targets[homeName] else { continue }
      let recorded = try await home.api.reservePlacements(batch)
      for (asked, got) in zip(batch, recorded) where asked.target != got.target {
        logger.error(
          """
          a volume name is on two targets (created before placements were recorded): the home records the \
          other one; inspect both and delete the one no PersistentVolume uses
          """,
          metadata: ["name": "\(asked.name)", "here": "\(asked.target)", "recorded": "\(got.target)"])
      }
    }
  }
}

/// Indexes placements at start and retries until every target is indexed.
public struct PlacementIndexingService: Service {
  let controller: ControllerService
  let retryInterval: Duration

  public init(controller: ControllerService, retryInterval: Duration = .seconds(10)) {
    self.controller = controller
    self.retryInterval = retryInterval
  }

  public func run() async throws {
    while !Task.isCancelled, !(await controller.indexPlacements()) {
      try? await cancelWhenGracefulShutdown { try await Task.sleep(for: retryInterval) }
      if Task.isShuttingDownGracefully { return }
    }
    try? await gracefulShutdown()
  }
}
