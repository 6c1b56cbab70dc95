import Logging
import NVMeCSICore
import Synchronization
import TargetContract

// Repair of a replicated volume's lost leg (docs/architecture.md, "Repairing a lost
// leg"). The volume ID names the targets its legs were made on and never changes; after
// a repair, where the legs are is the leg map (`LegMap`) in every current leg's map
// block. The controller reads it through the legs' targets; a node with the mirror
// running reads it from its members and brings the new leg in.
//
// A repair writes the new map to every surviving leg first (compare-and-set on the
// version, lowest leg first, so of two racing repairs one wins and the other stops
// before writing anything), then makes the blank leg, writes the map to it too and
// allows the volume's nodes on it. A repeat finds the written map and finishes what is
// missing. Nothing is deleted: the replaced leg stays in the map until the volume is.

extension VolumeAttribute {
  /// How often a leg's slot was replaced (absent: 0).
  static let replicaGeneration = ReplicaLayout.generationAttribute

  static func replicaGeneration(of record: VolumeRecord) -> Int {
    record.attributes[replicaGeneration].flatMap { Int($0) } ?? 0
  }
}

/// The newest leg map the controller has seen per replicated volume: where the next
/// resolution starts, so a repaired volume's calls do not first ask the lost target.
/// Only a starting point: the legs it names are always read again.
final class LegMapCache: Sendable {
  private let maps = Mutex<[ObjectUUID: LegMap]>([:])

  func known(_ set: ObjectUUID) -> LegMap? { maps.withLock { $0[set] } }

  func remember(_ map: LegMap) {
    maps.withLock { maps in
      if (maps[map.set]?.version ?? 0) < map.version { maps[map.set] = map }
    }
  }
}

extension ControllerService {
  /// Where a volume's legs are now: the newest map its legs hold for it, following a
  /// newer map to the legs it names. A single-copy or never-repaired volume has the map
  /// its ID implies. `unavailable` when no leg's target answers.
  func currentLegMap(of id: VolumeID) async throws -> LegMap {
    guard id.isReplicated else { return LegMap(implied: id) }
    var newest = legMaps.known(id.uuid) ?? LegMap(implied: id)
    var asked: Set<ObjectID> = []
    var answered = false
    var failures: [String] = []
    while case let pending = newest.legIDs.filter({ !asked.contains($0) }), !pending.isEmpty {
      asked.formUnion(pending)
      for (leg, result) in await readLegMaps(pending) {
        switch result {
        case .success(let map):
          answered = true
          if let map, map.set == id.uuid, map.version > newest.version { newest = map }
        case .failure(let error) where error.kind == .notFound:
          answered = true
        case .failure(let error):
          failures.append("\(leg.target): \(error.message)")
        }
      }
    }
    guard answered else {
      throw NVMeCSIError.unavailable(
        "cannot tell where the legs of \(id) are: no leg's target answers (\(failures.joined(separator: "; ")))")
    }
    if !failures.isEmpty {
      logger.debug("leg map read without some legs", metadata: ["volume": "\(id)", "failures": "\(failures)"])
    }
    if newest.version > 0 { legMaps.remember(newest) }
    return newest
  }

  private func readLegMaps(_ legs: [ObjectID]) async -> [(ObjectID, Result<LegMap?, NVMeCSIError>)] {
    await withTaskGroup(of: (ObjectID, Result<LegMap?, NVMeCSIError>).self) { group in
      for leg in legs {
        group.addTask { [targets] in
          guard let target = targets[leg.target] else {
            return (leg, .failure(.notFound("target \(leg.target) is not in the targets file")))
          }
          do { return (leg, .success(try await target.api.legMap(of: leg.uuid))) } catch let error as NVMeCSIError {
            return (leg, .failure(error))
          } catch {
            return (leg, .failure(.unavailable("\(error)")))
          }
        }
      }
      return await group.reduce(into: []) { $0.append($1) }
    }
  }

  /// Replaces leg `index` of a replicated volume, lost for good, by a blank leg on
  /// another target (`requested`, or one chosen as at create: its own failure domain,
  /// a topology the other legs share, room for the leg); md on the node copies the
  /// data onto it. Idempotent: a repeat finishes an interrupted repair. Answers the
  /// volume's leg map after it.
  public func repairVolume(_ id: VolumeID, leg index: Int, to requested: TargetName?) async throws -> LegMap {
    guard id.isReplicated else {
      throw NVMeCSIError.invalidArgument(
        "\(id) is a single-copy volume: only a replicated volume's leg can be replaced")
    }
    return try await withLegsLocked(id) {
      let map = try await currentLegMap(of: id)
      guard map.legs.indices.contains(index) else {
        throw NVMeCSIError.invalidArgument("\(id) has legs 0 to \(map.legs.count - 1), not \(index)")
      }
      let states = await legStates(map)
      // A map written by an earlier attempt whose new leg was not made yet.
      if case .missing = states[index], map.legs[index].generation > 0 {
        try await finishRepair(map, leg: index, from: states)
        return map
      }
      switch states[index] {
      case .present(let volume) where volume.problem == nil:
        throw NVMeCSIError.failedPrecondition(
          "leg \(index) of \(id) on \(map.legs[index].target) is present and its target answers: a repair replaces a"
            + " lost leg only (a target that is merely down comes back by itself)")
      default: break
      }
      // Its target, lost, must not be chosen for new volumes from what it said before.
      targetInfo.forget(map.legs[index].target)
      var survivors: [TargetVolume] = []
      for (other, state) in states.enumerated() where other != index {
        guard case .present(let volume) = state else {
          throw NVMeCSIError.unavailable(
            "leg \(other) of \(id) on \(map.legs[other].target) \(state.description): the repair writes the new leg"
              + " map to every other leg first, so they must all answer; retried")
        }
        survivors.append(volume)
      }
      try await checkSurvivorsInSync(map, except: index, of: id)
      let target = try await replacementTarget(
        for: map, leg: index, requested: requested, bytes: survivors[0].record.sizeBytes)
      let portals = try await target.api.info().portals
      let next = try map.replacing(leg: index, with: target.name, portals: portals)
      for (other, leg) in map.legIDs.enumerated() where other != index {
        do { try await targets.holding(leg).api.writeLegMap(next, to: leg.uuid) } catch let error as NVMeCSIError
          where error.kind == .failedPrecondition && other == (index == 0 ? 1 : 0)
        {
          throw NVMeCSIError.aborted("the leg map of \(id) changed meanwhile (\(error.message)): retry the repair")
        }
      }
      logger.notice(
        "replacing a lost leg of a replicated volume",
        metadata: [
          "volume": "\(id)", "leg": "\(index)", "lost": "\(map.legs[index].target)", "new": "\(target.name)",
          "map version": "\(next.version)",
        ])
      try await finishRepair(
        next, leg: index, from: states.enumerated().map { $0.offset == index ? .missing : $0.element })
      legMaps.remember(next)
      return next
    }
  }

  /// Runs `body` alone among the calls that read or change a replicated volume's legs:
  /// a repair, publish, unpublish, expand, modify, snapshot and delete. A repair makes
  /// its new leg from what the legs said when it began (their nodes, size, settings)
  /// and names it in the map before it exists, so none of the others may run beside
  /// it. A busy volume is Aborted (the CO retries). Single-copy volumes have no legs to
  /// change and run at once.
  func withLegsLocked<T: Sendable>(_ id: VolumeID, _ body: @Sendable () async throws -> T) async throws -> T {
    guard id.isReplicated else { return try await body() }
    return try await locks.withLock("volume-legs:" + id.uuid.value, body)
  }

  /// What each current leg's target says of it.
  enum LegState: CustomStringConvertible {
    case present(TargetVolume)
    /// Its target answers that it does not hold it.
    case missing
    case unreachable(String)

    var description: String {
      switch self {
      case .present(let volume): return volume.problem.map { "has a problem (\($0))" } ?? "is present"
      case .missing: return "is missing from its target"
      case .unreachable(let why): return "does not answer (\(why))"
      }
    }
  }

  func legStates(_ map: LegMap) async -> [LegState] {
    await withTaskGroup(of: (Int, LegState).self) { group in
      for (index, leg) in map.legIDs.enumerated() {
        group.addTask { [targets] in
          guard let target = targets[leg.target] else {
            return (index, .unreachable("target \(leg.target) is not in the targets file"))
          }
          do { return (index, .present(try await target.api.volume(leg.uuid))) } catch let error as NVMeCSIError {
            return (index, error.kind == .notFound ? .missing : .unreachable(error.message))
          } catch {
            return (index, .unreachable("\(error)"))
          }
        }
      }
      var states: [(Int, LegState)] = []
      for await state in group { states.append(state) }
      return states.sorted { $0.0 < $1.0 }.map(\.1)
    }
  }

  /// md copies a new leg from the others: refused while none of them is known to hold
  /// the volume in full (a leg md is still rebuilding is not a source).
  private func checkSurvivorsInSync(_ map: LegMap, except index: Int, of id: VolumeID) async throws {
    var rebuilding: [String] = []
    var complete = 0
    for (other, leg) in map.legIDs.enumerated() where other != index {
      let superblock = try await targets.holding(leg).api.mdSuperblock(of: leg.uuid)
      if let superblock, superblock.arrayUUID == id.uuid, superblock.isRecovering {
        rebuilding.append("leg \(other) on \(leg.target)")
      } else {
        complete += 1
      }
    }
    guard complete > 0 else {
      throw NVMeCSIError.failedPrecondition(
        "every other leg of \(id) is still being rebuilt by md (\(rebuilding.joined(separator: ", "))): no complete"
          + " copy is left to repair from")
    }
  }

  /// Makes the new leg `index` of `map` (blank, on its target, with the volume's
  /// settings), writes the map to it and allows the volume's nodes on it.
  private func finishRepair(_ map: LegMap, leg index: Int, from states: [LegState]) async throws {
    let survivors = states.compactMap { state -> TargetVolume? in
      if case .present(let volume) = state { return volume }
      return nil
    }
    guard let model = survivors.first?.record else {
      throw NVMeCSIError.unavailable("no other leg answers to copy the volume's settings from; retried")
    }
    let leg = map.legIDs[index]
    let target = try targets.holding(leg)
    var attributes = model.attributes
    attributes[VolumeAttribute.replicaIndex] = String(index)
    attributes[VolumeAttribute.replicaGeneration] = String(map.legs[index].generation)
    let name = ReplicaLayout.legName(
      ReplicaLayout.volumeName(ofLegName: model.name), index: index, generation: map.legs[index].generation)
    let created = try await target.api.createVolume(
      NewVolume(
        name: name, sizeBytes: model.sizeBytes, source: nil, attributes: attributes, sharing: model.sharing,
        uuid: leg.uuid))
    if !created.existed { targetInfo.charge(model.sizeBytes, to: target.name) }
    try await target.api.writeLegMap(map, to: leg.uuid)
    // The nodes the volume is published to: their md adds the leg once they can reach it.
    let publications = Set(survivors.flatMap(\.record.publications))
    for publication in publications.sorted(by: { $0.nodeID.description < $1.nodeID.description }) {
      _ = try await target.api.publishVolume(
        leg.uuid, to: publication.nodeID, readonly: publication.readonly, exclusive: false)
    }
  }

  /// The target for a new leg: `requested` if it fits, else the best that does.
  private func replacementTarget(for map: LegMap, leg index: Int, requested: TargetName?, bytes: UInt64)
    async throws -> StorageTarget
  {
    var others: [StorageTarget] = []
    for (other, leg) in map.legs.enumerated() where other != index {
      guard let target = targets[leg.target] else {
        throw NVMeCSIError.failedPrecondition(
          "leg \(other) is on target \(leg.target), which is not in the targets file: repair that leg first")
      }
      others.append(target)
    }
    var segments: [String: String] = [:]
    for other in others { segments.merge(other.topology) { $1 } }
    func misfit(_ target: StorageTarget) -> String? {
      // A replaced leg still there (a different UUID and name) is no obstacle.
      if map.legs.contains(where: { $0.target == target.name }) { return "it holds a leg of the volume" }
      if let same = others.first(where: { $0.failureDomain == target.failureDomain }) {
        return "it shares failure domain \(target.failureDomain) with \(same.name)"
      }
      if target.topology.contains(where: { key, value in segments[key].map { $0 != value } ?? false }) {
        return "its topology differs from the other legs'"
      }
      return nil
    }
    let candidates = requested.map { name in targets.all.filter { $0.name == name } } ?? targets.all
    if let requested, candidates.isEmpty {
      throw NVMeCSIError.invalidArgument("target \(requested) is not in the targets file")
    }
    let ranked = await rank(candidates.filter { misfit($0) == nil }, topology: .init())
    if let best = ranked.first(where: { $0.info.allocatableBytes >= bytes }) { return best.target }
    if let requested, let target = candidates.first, let why = misfit(target) {
      throw NVMeCSIError.failedPrecondition("target \(requested) cannot take leg \(index): \(why)")
    }
    throw NVMeCSIError.resourceExhausted(
      "no target can take leg \(index) (\(bytes) bytes, outside the other legs' failure domains, in their topology):"
        + " \(Self.report(ranked))")
  }
}
