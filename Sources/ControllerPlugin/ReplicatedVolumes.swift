import CSIProto
import NVMeCSICore
import TargetContract

// Replicated volumes (docs/architecture.md, "Replicated volumes"): a set of legs, each
// an ordinary volume on its own target, in its own failure domain; the node mirrors
// them with md RAID1. Leg 0 carries the name (its placement is the volume's, so
// "exactly one volume per name" holds as for any volume) and records, like every leg,
// which targets hold the legs; the other legs are created after it, by UUID, so a
// retried CreateVolume finds and completes the same set.

extension VolumeAttribute {
  /// The targets of a replicated volume's legs, in leg order ("store-a,store-c").
  static let replicaTargets = "replica/targets"
  /// Which leg this record is (0 carries the volume's name).
  static let replicaIndex = ReplicaLayout.indexAttribute
  /// On a snapshot of a leg: the replicated volume it is a snapshot of.
  static let replicaSet = "replica/set"
  /// On a replicated copy's legs: its content source as CSI named it.
  static let replicaSource = "replica/source"

  /// The leg's index when the record is a leg of a replicated volume.
  static func replicaIndex(of record: VolumeRecord) -> Int? {
    record.attributes[replicaIndex].flatMap { Int($0) }
  }

  /// What the volume offers: a leg holds md's superblock and bitmap before the data.
  static func volumeBytes(of record: VolumeRecord) -> UInt64 {
    record.attributes[replicaTargets] == nil
      ? record.sizeBytes : ReplicaLayout.volumeBytes(ofLeg: record.sizeBytes)
  }

  /// The replicated volume a leg's record belongs to; nil for a single-copy volume.
  static func replicatedID(of record: VolumeRecord) -> VolumeID? {
    guard let names = record.attributes[replicaTargets], let index = replicaIndex(of: record) else { return nil }
    var targets: [TargetName] = []
    for name in names.split(separator: ",") {
      guard let target = try? TargetName(String(name)) else { return nil }
      targets.append(target)
    }
    // Deriving a leg's UUID twice with the same index and generation gives the set's back.
    let set = ReplicaLayout.legUUID(of: record.uuid, index: index, generation: replicaGeneration(of: record))
    return try? VolumeID(replicated: set, on: targets)
  }
}

extension ControllerService {
  /// CreateVolume with `replicas` > 1, under the name's lock like any create.
  func createReplicated(
    name: String, size: UInt64, replicas: Int, requested: RequestedVolume, source: ContentSource?,
    sharing: VolumeSharing, topology: Csi_V1_TopologyRequirement
  ) async throws -> Csi_V1_CreateVolumeResponse {
    try ReplicaLayout.checkName(name, replicas: replicas)
    // A copy's leg 0 is the source's copy, made where the source is (reflinks stay on
    // one store); its other legs are blank, and md copies leg 0 onto them on the node.
    let seedTarget = try source.map { source throws(NVMeCSIError) in try targets.holding(source.id) }
    if let seedTarget, !topology.requisite.isEmpty,
      !topology.requisite.contains(where: { seedTarget.isAccessible(from: $0.segments) })
    {
      throw NVMeCSIError.resourceExhausted(
        "the copy's leg 0 must be on \(seedTarget.name), where its source is, which the requested topology excludes")
    }
    guard size <= ReplicaLayout.maximumVolumeBytes else {
      throw NVMeCSIError.outOfRange(
        "a replicated volume is at most \(ReplicaLayout.maximumVolumeBytes) bytes (md's bitmap must fit), not \(size)")
    }
    let legSize = ReplicaLayout.legBytes(forVolume: size)
    return try await locks.withLock("volume-name:" + name) {
      var legs: [StorageTarget]
      let primary: TargetVolume
      switch try await locate(name) {
      case .found(let holder, let existing):
        try requested.check(existing.record, name: name)
        legs = try recordedLegTargets(existing.record, on: holder)
        primary = existing
      case .reserved(let placed, let home):
        // Leg 0's target was recorded by an earlier attempt that created nothing (legs
        // come after leg 0): keep it if it fits, and choose the others around it.
        let keep =
          seedTarget.map { $0.name == placed.name }
          ?? (topology.requisite.isEmpty || topology.requisite.contains { placed.isAccessible(from: $0.segments) })
        legs = try await chooseLegTargets(
          replicas, legBytes: legSize, topology: topology, first: keep ? placed : seedTarget)
        if legs[0].name != placed.name {
          try await home.api.releasePlacement(of: name, on: placed.name)
          legs[0] = try await reserve(name, on: legs[0], home: home)
        }
        primary = try await createLeg(0, of: name, on: legs, bytes: legSize, requested: requested, sharing: sharing)
      case .absent(let home):
        legs = try await chooseLegTargets(replicas, legBytes: legSize, topology: topology, first: seedTarget)
        let recorded = try await reserve(name, on: legs[0], home: home)
        guard recorded.name == legs[0].name else {
          throw NVMeCSIError.aborted("volume name \(quoted(name)) was placed by another request meanwhile: retry")
        }
        primary = try await createLeg(0, of: name, on: legs, bytes: legSize, requested: requested, sharing: sharing)
      }
      let id = try VolumeID(replicated: primary.uuid, on: legs.map(\.name))
      for index in legs.indices.dropFirst() {
        _ = try await createLeg(
          index, of: name, on: legs, bytes: legSize, requested: requested, sharing: sharing, set: primary.uuid)
      }
      logger.info(
        "replicated volume ready", metadata: ["volume": "\(id)", "name": "\(name)", "legs": "\(legs.map(\.name))"])
      return .with { $0.volume = csiVolume(primary, id: id, legs: legs) }
    }
  }

  /// Creates leg `index` (or finds it: idempotent by name, and by UUID for legs ≥ 1).
  private func createLeg(
    _ index: Int, of name: String, on legs: [StorageTarget], bytes: UInt64, requested: RequestedVolume,
    sharing: VolumeSharing, set: ObjectUUID? = nil
  ) async throws -> TargetVolume {
    let target = legs[index]
    var attributes = requested.attributes
    attributes[VolumeAttribute.replicaTargets] = legs.map(\.name.value).joined(separator: ",")
    attributes[VolumeAttribute.replicaIndex] = String(index)
    let leg = NewVolume(
      name: ReplicaLayout.legName(name, index: index), sizeBytes: bytes,
      source: index == 0 ? requested.source : nil, attributes: attributes,
      sharing: sharing, uuid: set.map { ReplicaLayout.legUUID(of: $0, index: index) })
    let created = try await targetInfo.creating(
      on: target.name, { try await target.api.createVolume(leg) }, charging: { $0.existed ? nil : bytes })
    if created.existed { try requested.check(created.volume.record, name: name) }
    return created.volume
  }

  /// The leg targets a leg-0 record names, which must all be configured.
  private func recordedLegTargets(_ record: VolumeRecord, on holder: StorageTarget) throws -> [StorageTarget] {
    guard let id = VolumeAttribute.replicatedID(of: record), id.targets.first == holder.name else {
      throw NVMeCSIError.alreadyExists(
        "volume \(quoted(record.name)) already exists on target \(holder.name) without replicas: use another name")
    }
    return try id.legs.map { try targets.holding($0) }
  }

  /// `count` targets with room for a leg, each in its own failure domain, reachable from
  /// one topology together (their segments agree), preferred topologies and free space
  /// first; `first` (a recorded placement) stays leg 0.
  private func chooseLegTargets(
    _ count: Int, legBytes: UInt64, topology: Csi_V1_TopologyRequirement, first: StorageTarget?
  ) async throws -> [StorageTarget] {
    let candidates = targets.all.filter { target in
      topology.requisite.isEmpty || topology.requisite.contains { target.isAccessible(from: $0.segments) }
    }
    let ranked = await rank(candidates, topology: topology)
    var chosen = first.map { [$0] } ?? []
    var segments = first?.topology ?? [:]
    for (target, info) in ranked where chosen.count < count && info.allocatableBytes >= legBytes {
      guard !chosen.contains(where: { $0.name == target.name || $0.failureDomain == target.failureDomain }),
        target.topology.allSatisfy({ segments[$0.key] == nil || segments[$0.key] == $0.value })
      else { continue }
      chosen.append(target)
      segments.merge(target.topology) { $1 }
    }
    guard chosen.count == count else {
      throw NVMeCSIError.resourceExhausted(
        "replicas=\(count) needs \(count) targets in different failure domains, reachable from one topology, each with"
          + " room for \(legBytes) bytes; found \(chosen.count) (\(Self.report(ranked)))")
    }
    return chosen
  }

  /// The CSI volume of a replicated set, from its leg 0.
  func csiVolume(_ primary: TargetVolume, id: VolumeID, legs: [StorageTarget]) -> Csi_V1_Volume {
    var segments: [String: String] = [:]
    for leg in legs { segments.merge(leg.topology) { $1 } }
    return .with {
      $0.volumeID = id.description
      $0.capacityBytes = Int64(clamping: VolumeAttribute.volumeBytes(of: primary.record))
      $0.volumeContext = VolumeAttribute.context(of: primary.record)
      if let source = primary.record.attributes[VolumeAttribute.replicaSource] {
        $0.contentSource = .with {
          if (try? ObjectID(parsing: source, as: .snapshot)) != nil {
            $0.snapshot = .with { $0.snapshotID = source }
          } else {
            $0.volume = .with { $0.volumeID = source }
          }
        }
      }
      if !segments.isEmpty { $0.accessibleTopology = [Csi_V1_Topology(segments)] }
    }
  }

  /// Each current leg's target (`notFound` when one is not configured).
  func legTargets(of map: LegMap) throws(NVMeCSIError) -> [(leg: ObjectID, target: StorageTarget)] {
    var legs: [(ObjectID, StorageTarget)] = []
    for leg in map.legIDs { legs.append((leg, try targets.holding(leg))) }
    return legs
  }

  /// The leg that carries a volume's settings: leg 0 where it is now.
  func primaryLeg(of id: VolumeID) async throws -> ObjectID {
    id.isReplicated ? try await currentLegMap(of: id).legIDs[0] : id.primary
  }

  /// Runs `body` on every leg at once; the first failure fails the call (after every
  /// leg's attempt, so a retry has less left to do).
  func onEveryLeg<T: Sendable>(
    _ map: LegMap, _ body: @escaping @Sendable (ObjectID, StorageTarget) async throws -> T
  ) async throws -> [T] {
    let legs = try legTargets(of: map)
    return try await withThrowingTaskGroup(of: (Int, Result<T, any Error>).self) { group in
      for (index, (leg, target)) in legs.enumerated() {
        group.addTask {
          do { return (index, .success(try await body(leg, target))) } catch { return (index, .failure(error)) }
        }
      }
      var results: [(Int, Result<T, any Error>)] = []
      for try await result in group { results.append(result) }
      return try results.sorted { $0.0 < $1.0 }.map { try $0.1.get() }
    }
  }

  /// Deletes the legs, the ID's leg 0 last: it carries the name, so while it is there a
  /// retry finds whatever is left. The current legs (the leg map's) and the replaced
  /// ones go (a replaced one with the nodes it still allows revoked first). A current
  /// leg on a target that does not answer fails the call (the provisioner retries); a
  /// replaced leg there is left and logged (its target was declared lost: waiting for it
  /// would leave the volume stuck), and a DeleteVolume of the same ID once its target is
  /// back deletes it; a leg on a target no longer configured is gone. Not while a
  /// repair of the volume runs (Aborted): it would make its new leg after the delete.
  func deleteReplicated(_ id: VolumeID) async throws -> Csi_V1_DeleteVolumeResponse {
    try await withLegsLocked(id) { try await deleteLegs(of: id) }
  }

  private func deleteLegs(of id: VolumeID) async throws -> Csi_V1_DeleteVolumeResponse {
    let map = try await currentLegMap(of: id)
    let records = await legStates(map).compactMap { state -> VolumeRecord? in
      if case .present(let volume) = state { return volume.record }
      return nil
    }
    // An ID whose legs are not the ones its legs record names no volume of ours: nothing
    // of it is deleted (a made-up ID must not take a real leg with it).
    if let record = records.first, VolumeAttribute.replicatedID(of: record) != id {
      logger.warning(
        "DeleteVolume for a replicated volume ID whose legs are not those its legs record: nothing deleted",
        metadata: [
          "volume": "\(id)", "recorded": "\(record.attributes[VolumeAttribute.replicaTargets] ?? "none")",
        ])
      return .init()
    }
    let replaced = Set(map.replacedIDs)
    @Sendable func deleteLegs() async throws {
      let legs = (map.replacedIDs + map.legIDs).filter { $0 != id.primary } + [id.primary]
      for leg in legs {
        guard let target = targets[leg.target] else {
          logger.warning(
            "a leg's target is not in the targets file: its leg cannot be deleted",
            metadata: ["volume": "\(id)", "target": "\(leg.target)", "leg": "\(leg.uuid)"])
          continue
        }
        do {
          // A replaced leg may still allow the nodes it had when its target was lost (an
          // unpublish meanwhile could not reach it); the volume they used is going.
          if replaced.contains(leg) { try await target.api.unpublishVolume(leg.uuid, from: nil) }
          try await target.api.deleteVolume(leg.uuid)
        } catch let error as NVMeCSIError where replaced.contains(leg) && error.kind == .unavailable {
          logger.warning(
            """
            a replaced leg's target does not answer: that leg is left behind; when its target is back, delete the \
            volume's ID again (nvme-csi ctl delete-volume <volume>)
            """,
            metadata: ["volume": "\(id)", "target": "\(leg.target)", "leg": "\(leg.uuid)", "error": "\(error.message)"])
        }
      }
    }
    guard let record = records.first, let primaryTarget = targets[id.primary.target] else {
      try await deleteLegs()
      return .init()
    }
    let name = ReplicaLayout.volumeName(ofLegName: record.name)
    try await locks.withLock("volume-name:" + name) {
      try await deleteLegs()
      await releasePlacement(of: name, on: primaryTarget)
    }
    logger.info("replicated volume deleted", metadata: ["volume": "\(id)", "name": "\(name)"])
    return .init()
  }

  /// ControllerGetVolume of a replicated volume: abnormal while any leg is missing, has
  /// a problem or does not answer (the node's own view, md's, is in NodeGetVolumeStats).
  func getReplicated(_ id: VolumeID) async throws -> Csi_V1_ControllerGetVolumeResponse {
    let legs = try legTargets(of: try await currentLegMap(of: id))
    let primary = try await legs[0].target.api.volume(legs[0].leg.uuid)
    var problems: [String] = []
    var superblocks: [Int: MDSuperblock] = [:]
    for (index, (leg, target)) in legs.enumerated() {
      do {
        let volume = index == 0 ? primary : try await target.api.volume(leg.uuid)
        if let problem = volume.problem { problems.append("leg \(index) on \(target.name): \(problem)") }
        if let superblock = try await target.api.mdSuperblock(of: leg.uuid), superblock.arrayUUID == id.uuid {
          superblocks[index] = superblock
        }
      } catch let error as NVMeCSIError {
        problems.append("leg \(index) on \(target.name): \(error.message)")
      }
    }
    problems += Self.mirrorProblems(superblocks, legs: legs.map(\.target))
    return .with {
      $0.volume = csiVolume(primary, id: id, legs: legs.map(\.target))
      $0.status = .with {
        $0.publishedNodeIds = primary.record.publications.map(\.nodeID.description)
        $0.volumeCondition = .with {
          $0.abnormal = !problems.isEmpty
          $0.message =
            problems.isEmpty
            ? "all \(legs.count) legs present and exported"
              + (superblocks.count == legs.count ? ", in sync by md's superblocks" : "")
            : "degraded: " + problems.joined(separator: "; ")
        }
      }
    }
  }

  /// What md's superblocks on the legs say is wrong: a leg behind the freshest (md
  /// failed it while it was away) or being rebuilt. Legs without this array's
  /// superblock (never staged, or blank replacements) say nothing.
  static func mirrorProblems(_ superblocks: [Int: MDSuperblock], legs: [StorageTarget]) -> [String] {
    let newest = superblocks.values.map(\.events).max() ?? 0
    return superblocks.sorted { $0.key < $1.key }.compactMap { index, superblock in
      let leg = "leg \(index) on \(legs[index].name)"
      if superblock.events < newest || superblock.role == .faulty {
        return "\(leg): md failed it (its superblock is at event \(superblock.events), the freshest at \(newest));"
          + " the node re-adds it when it answers"
      }
      return superblock.isRecovering ? "\(leg): md is resyncing it" : nil
    }
  }

  /// The leg to copy a replicated volume from (snapshot or clone): md's freshest member
  /// in sync, by the superblock each leg's target reads from its data. Every leg must
  /// answer: the one that does not may be the only current one. A volume never staged
  /// (no superblock on any leg) is blank, and so is leg 0. A replacement leg its target
  /// does not hold yet (a repair names it in the map before making it) is blank too.
  func currentLeg(of id: VolumeID) async throws -> (leg: ObjectID, target: StorageTarget) {
    let map = try await currentLegMap(of: id)
    let legs = try legTargets(of: map)
    let replacements = Set(zip(map.legIDs, map.legs).filter { $0.1.generation > 0 }.map(\.0.uuid))
    let superblocks: [MDSuperblock?]
    do {
      superblocks = try await onEveryLeg(map) { leg, target in
        do { return try await target.api.mdSuperblock(of: leg.uuid) } catch let error as NVMeCSIError
          where error.kind == .notFound && replacements.contains(leg.uuid)
        {
          return nil
        }
      }
    } catch let error as NVMeCSIError where error.kind == .unavailable {
      throw NVMeCSIError.unavailable(
        "cannot tell which leg of \(id) is in sync while a leg's target does not answer (\(error.message)): retried")
    }
    var best: (index: Int, events: UInt64)?
    var newest: UInt64 = 0
    if superblocks.dropFirst().allSatisfy({ $0 == nil }) {
      // A copy never staged: leg 0 still carries its source's superblock (its seed).
      let primary: TargetVolume
      do { primary = try await legs[0].target.api.volume(legs[0].leg.uuid) } catch let error as NVMeCSIError
        where error.kind == .notFound && replacements.contains(legs[0].leg.uuid)
      {
        throw NVMeCSIError.unavailable(
          "leg 0 of \(id) is being replaced and no other leg carries md's superblock: retried after the repair")
      }
      let seed = primary.record.attributes[VolumeAttribute.contextPrefix + ReplicaLayout.seedKey]
      if let seed, superblocks[0]?.arrayUUID.value == seed { return legs[0] }
    }
    for (index, superblock) in superblocks.enumerated() {
      guard let superblock else { continue }
      guard superblock.arrayUUID == id.uuid, superblock.dataOffsetBytes == ReplicaLayout.dataOffsetBytes else {
        throw NVMeCSIError.failedPrecondition(
          "leg \(index) of \(id) on \(legs[index].target.name) carries md array \(superblock.arrayUUID) with data at"
            + " \(superblock.dataOffsetBytes) bytes, not this volume's mirror: refusing to copy it")
      }
      newest = max(newest, superblock.events)
      guard case .active = superblock.role, !superblock.isRecovering else { continue }
      if best.map({ superblock.events > $0.events }) ?? true { best = (index, superblock.events) }
    }
    if superblocks.allSatisfy({ $0 == nil }) { return legs[0] }
    // A member that was current when it last wrote its superblock, but behind another's
    // count, was failed meanwhile: not a copy of what the volume holds.
    guard let best, best.events == newest else {
      throw NVMeCSIError.unavailable(
        "no leg of \(id) is known to be in sync (md's superblocks: \(Self.describe(superblocks))): the node's md"
          + " is still catching a leg up, retried")
    }
    return legs[best.index]
  }

  /// Each leg's superblock, for a message: "leg 0 active events 12, leg 1 recovering events 12".
  static func describe(_ superblocks: [MDSuperblock?]) -> String {
    superblocks.enumerated().map { index, superblock in
      guard let superblock else { return "leg \(index) none" }
      let role: String
      switch superblock.role {
      case .active: role = superblock.isRecovering ? "recovering" : "active"
      case .spare: role = "spare"
      case .faulty: role = "faulty"
      case .journal: role = "journal"
      }
      return "leg \(index) \(role) events \(superblock.events)"
    }.joined(separator: ", ")
  }
}
