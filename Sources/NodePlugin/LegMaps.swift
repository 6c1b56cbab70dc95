import Logging
import Mounting
import NVMeCSICore

// A repaired replicated volume on the node (docs/architecture.md, "Repairing a lost
// leg"). The controller replaces a lost leg with a blank one of the next generation on
// another target and writes the new leg map into every current leg. The node learns of
// it from the legs md is using: the reconciler reads their map blocks, and when one
// carries a newer map for this volume it records the new legs (durably, before acting),
// connects the replacement and lets md copy the data onto it in full. A leg the map
// dropped is disconnected only once md no longer uses it: the map is the controller's
// view, md's members are the data.

/// Reads a leg's map block (`LegMap.blockBytes` at `LegMap.blockOffset`).
///
/// Contract: reads only, never writes; each call is one bounded read of the device,
/// safe to run concurrently for different devices.
public protocol LegMapBlockReader: Sendable {
  /// The block on `device` (a /dev path).
  func mapBlock(on device: String) throws(NVMeCSIError) -> [UInt8]
}

/// The real reader: one uncached read of the leg's device, so the node sees what the
/// controller wrote through the leg's target, not an older copy in its page cache.
public struct UncachedLegMapBlockReader: LegMapBlockReader {
  public init() {}

  public func mapBlock(on device: String) throws(NVMeCSIError) -> [UInt8] {
    try UncachedRead.bytes(at: LegMap.blockOffset, count: LegMap.blockBytes, from: device)
  }
}

extension NodeService {
  /// Follows a newer leg map carried by the legs md uses: answers the record with the
  /// map's legs (saved before anything acts on them), or `record` unchanged when no leg
  /// carries a newer map for this volume, or the newest one does not fit the volume
  /// (logged).
  func followLegMap(_ volume: VolumeID, record: StagingRecord, status: MirrorStatus) throws(NVMeCSIError)
    -> StagingRecord
  {
    guard let mirror = record.mirror else { return record }
    let known = mirror.mapVersion ?? 0
    guard let map = try newestLegMap(volume, mirror: mirror, status: status), map.version > known else {
      return record
    }
    let legs: [MirrorRecord.Leg]
    do { legs = try Self.legs(following: map, of: volume, recorded: mirror.legs) } catch {
      logger.warning(
        "a leg of the volume carries a newer leg map that does not fit the volume: not followed",
        metadata: [
          "volume": "\(volume)", "map version": "\(map.version)", "recorded version": "\(known)",
          "reason": "\(error.message)",
        ])
      return record
    }
    func isCurrent(_ leg: MirrorRecord.Leg) -> Bool { legs.contains { $0.subsystemNQN == leg.subsystemNQN } }
    let replaced = mirror.legs.filter { !isCurrent($0) }
    let dropped = (mirror.droppedLegs ?? []).filter { !isCurrent($0) } + replaced
    var updated = record
    updated.mirror!.legs = legs
    updated.mirror!.mapVersion = map.version
    updated.mirror!.droppedLegs = dropped.isEmpty ? nil : dropped
    // The top-level fields are leg 0's.
    updated.subsystemNQN = legs[0].subsystemNQN
    updated.namespaceUUID = legs[0].namespaceUUID
    try records.save(updated)
    let changes = zip(mirror.legs, legs).enumerated().filter { $0.element.0 != $0.element.1 }.map { index, pair in
      "leg \(index): \(pair.0.subsystemNQN) → \(pair.1.subsystemNQN) at \(pair.1.paths.joined(separator: ","))"
    }
    logger.notice(
      "following the volume's new leg map: the replaced legs are connected and md copies the data onto them",
      metadata: [
        "volume": "\(volume)", "map version": "\(known) → \(map.version)", "changes": "\(changes)",
      ])
    for leg in replaced {
      guard let device = try attacher.device(subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID),
        status.isUsing(device.name)
      else { continue }
      logger.warning(
        "the controller replaced a leg this node still uses: it stays in the mirror until md stops using it",
        metadata: ["volume": "\(volume)", "leg": "\(device.path)", "subsystem": "\(leg.subsystemNQN)"])
    }
    return updated
  }

  /// The highest-versioned map of this volume on the legs md uses whose controller is
  /// live (a read from a dead path would wait for the kernel to give it up); nil when
  /// none carries one. A block that is blank, damaged, another volume's or unreadable
  /// is skipped; two different maps with the same highest version are not chosen from.
  private func newestLegMap(_ volume: VolumeID, mirror: MirrorRecord, status: MirrorStatus) throws(NVMeCSIError)
    -> LegMap?
  {
    var maps: [LegMap] = []
    for leg in mirror.connectedLegs {
      guard let device = try attacher.device(subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID),
        status.isUsing(device.name), attacher.paths(subsystemNQN: leg.subsystemNQN).contains(where: \.isLive)
      else { continue }
      let block: [UInt8]
      do { block = try configuration.legMapBlocks.mapBlock(on: device.path) } catch {
        logger.debug(
          "cannot read a leg's map block",
          metadata: ["volume": "\(volume)", "leg": "\(device.path)", "error": "\(error)"])
        continue
      }
      switch LegMap.content(of: block) {
      case .map(let map) where map.set == volume.uuid:
        maps.append(map)
      case .map(let map):
        logger.debug(
          "a leg's map block names another set: ignored",
          metadata: ["volume": "\(volume)", "leg": "\(device.path)", "set": "\(map.set)"])
      case .damaged(let reason):
        logger.debug(
          "a leg's map block is damaged: ignored",
          metadata: ["volume": "\(volume)", "leg": "\(device.path)", "reason": "\(reason)"])
      case .empty, .foreign:
        continue
      }
    }
    guard let newest = maps.map(\.version).max() else { return nil }
    let candidates = Set(maps.filter { $0.version == newest })
    guard candidates.count == 1 else {
      logger.warning(
        "the volume's legs carry different leg maps of the same version: none followed",
        metadata: ["volume": "\(volume)", "map version": "\(newest)"])
      return nil
    }
    return candidates.first
  }

  /// The legs `map` names for `volume`: a slot whose generation is unchanged keeps its
  /// recorded leg (and paths); a replaced slot gets the leg the map's generation
  /// derives (its NQN and namespace from the leg's UUID, its paths the map's portals).
  /// `invalidArgument` when the map cannot be this volume's.
  static func legs(following map: LegMap, of volume: VolumeID, recorded: [MirrorRecord.Leg])
    throws(NVMeCSIError) -> [MirrorRecord.Leg]
  {
    guard map.set == volume.uuid else { throw .invalidArgument("the map is of set \(map.set), not \(volume.uuid)") }
    guard map.legs.count == volume.targets.count, recorded.count == volume.targets.count else {
      throw .invalidArgument(
        "the map names \(map.legs.count) legs, the volume has \(volume.targets.count) (\(recorded.count) recorded)")
    }
    var legs: [MirrorRecord.Leg] = []
    for (index, (leg, old)) in zip(map.legs, recorded).enumerated() {
      guard let oldUUID = try? ObjectUUID(old.namespaceUUID),
        let oldGeneration = ReplicaLayout.generation(ofLeg: oldUUID, index: index, set: volume.uuid)
      else {
        throw .invalidArgument("the recorded leg \(index) (\(old.namespaceUUID)) is no leg of slot \(index)")
      }
      if leg.generation == oldGeneration {
        legs.append(old)
        continue
      }
      guard leg.generation > oldGeneration else {
        throw .invalidArgument("leg \(index)'s generation goes back from \(oldGeneration) to \(leg.generation)")
      }
      guard leg.generation > 0 || leg.target == volume.targets[index] else {
        throw .invalidArgument("leg \(index) of generation 0 is on \(leg.target), not on \(volume.targets[index])")
      }
      guard !leg.portals.isEmpty else {
        throw .invalidArgument(
          "leg \(index) (generation \(leg.generation) on \(leg.target)) is new but the map names no portal for it")
      }
      let uuid = ReplicaLayout.legUUID(of: volume.uuid, index: index, generation: leg.generation)
      legs.append(
        MirrorRecord.Leg(
          subsystemNQN: SubsystemNaming.nqn(for: uuid), namespaceUUID: SubsystemNaming.namespaceUUID(for: uuid).value,
          paths: leg.portals.map(\.description)))
    }
    return legs
  }

  /// Disconnects the legs a leg map dropped once md no longer uses them (a faulty
  /// member is taken out of the array first). One md still uses stays: the controller
  /// replaced a leg this node still reads and writes, and md decides when it stops.
  /// Answers the record as it is now.
  func disconnectDroppedLegs(_ volume: VolumeID, record: StagingRecord, array: String) async throws
    -> StagingRecord
  {
    guard let dropped = record.mirror?.droppedLegs, !dropped.isEmpty else { return record }
    var status = try mirrors.status(of: array)
    var kept: [MirrorRecord.Leg] = []
    for leg in dropped {
      let device = try attacher.device(subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID)
      if let device, status.isUsing(device.name) {
        kept.append(leg)
        continue
      }
      if let device, status.members.contains(where: { $0.device == device.name }) {
        try await mirrors.removeFailed(from: array)
        status = try mirrors.status(of: array)
      }
      try await attacher.disconnect(subsystemNQN: leg.subsystemNQN)
      logger.notice(
        "disconnected a leg the leg map replaced",
        metadata: ["volume": "\(volume)", "subsystem": "\(leg.subsystemNQN)", "array": "\(array)"])
    }
    guard kept != dropped else { return record }
    var updated = record
    updated.mirror!.droppedLegs = kept.isEmpty ? nil : kept
    try records.save(updated)
    return updated
  }
}

extension MirrorRecord {
  /// The recorded legs as a publish_context names them, with `context`'s transport and
  /// connection settings.
  func publishContext(like context: PublishContext) throws(NVMeCSIError) -> PublishContext {
    var legs: [PublishContext.Leg] = []
    for leg in self.legs {
      var paths: [HostPort] = []
      for path in leg.paths { paths.append(try HostPort(parsing: path)) }
      legs.append(PublishContext.Leg(paths: paths, subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID))
    }
    return PublishContext(
      transport: context.transport, paths: legs[0].paths, subsystemNQN: legs[0].subsystemNQN,
      namespaceUUID: legs[0].namespaceUUID, connection: context.connection, replicaLegs: Array(legs.dropFirst()),
      legMapVersion: mapVersion ?? 0)
  }
}
