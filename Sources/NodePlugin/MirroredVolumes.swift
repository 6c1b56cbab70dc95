import CSIProto
import Foundation
import Logging
import Mounting
import NVMeCSICore
import NVMeFabrics
import ServiceLifecycle

// Replicated volumes on the node (docs/architecture.md, "Replicated volumes"): every
// leg is connected over NVMe/TCP like a single-copy volume, and the kernel's md RAID1
// mirrors them; the file system (or the raw block device) is the md array.
//
// Never destroy on doubt: an array is created only over legs that a probe proved
// blank, all of them present; otherwise it is assembled from the legs that carry its
// superblock, and md alone decides whether they are enough (a stale leg never starts
// alone: no --run). A leg holding anything else is refused, never overwritten. The one
// exception is a restored volume's leg 0 (a snapshot or clone of another replicated
// volume, named by volume_context's seed): it carries the source's superblock over the
// data, and the new array is created from it alone, keeping that data.

extension NodeService {
  /// NodeStageVolume of a replicated volume, under the volume's lock; `record` was
  /// saved (state `staging`) before any side effect.
  func stageMirrored(
    _ volume: VolumeID, context: PublishContext, seed: ObjectUUID?, parameters: ConnectionParameters,
    record: StagingRecord, undo: inout UndoStack
  ) async throws -> BlockDevice {
    let legs = context.legs
    // Every leg that connects; md decides whether those are enough.
    var devices: [Int: BlockDevice] = [:]
    var missing: [String] = []
    for (index, leg) in legs.enumerated() {
      do throws(NVMeCSIError) {
        try await attacher.connect(context.context(of: leg), as: configuration.host, with: parameters)
        devices[index] = try await attacher.waitForDevice(
          subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID, timeout: configuration.deviceTimeout)
      } catch {
        missing.append("leg \(index) (\(leg.paths.map(\.description).joined(separator: ","))): \(error.message)")
      }
    }
    undo.push("disconnect the legs of \(volume)") { try await disconnectMirror(record) }
    configuration.failpoints.reach("node.stage.after-connect")
    guard !devices.isEmpty else {
      throw NVMeCSIError.unavailable(
        "no leg of replicated volume \(volume) could be attached: \(missing.joined(separator: "; "))")
    }
    // Slots whose leg replaced a lost one (generation above 0, `LegMap`).
    let replacements = Set(
      legs.indices.filter { index in
        let uuid = try? ObjectUUID(legs[index].namespaceUUID)
        return (uuid.flatMap { ReplicaLayout.generation(ofLeg: $0, index: index, set: volume.uuid) } ?? 0) > 0
      })
    let array = try await assembleMirror(
      volume, legs: devices, of: legs.count, seed: seed, missing: missing, replacements: replacements)
    undo.push("stop md array \(array)") { try await mirrors.stop(array) }
    let status = try mirrors.status(of: array)
    if !missing.isEmpty {
      logger.warning(
        "replicated volume started degraded; the missing legs are re-added when they return",
        metadata: ["volume": "\(volume)", "array": "\(array)", "missing": "\(missing)"])
    }
    return BlockDevice(name: status.device, sizeBytes: status.sizeBytes)
  }

  /// The volume's md array: the one already holding a leg, or one assembled from the
  /// legs with its superblock, or a new one over legs that are all there and blank, or
  /// (a restored volume) one created from leg 0, the seed, with the others blank.
  private func assembleMirror(
    _ volume: VolumeID, legs devices: [Int: BlockDevice], of count: Int, seed: ObjectUUID?, missing: [String],
    replacements: Set<Int>
  ) async throws -> String {
    // Already running (a repeated stage, a restarted plugin), and this volume's. An
    // inactive one (a refused or host-made partial assembly) is stopped by `assemble`.
    for (index, device) in devices {
      guard let array = try mirrors.array(holding: device.name) else { continue }
      let status = try mirrors.status(of: array)
      guard status.arrayUUID == volume.uuid else {
        throw NVMeCSIError.failedPrecondition(
          "leg \(index) of volume \(volume) (\(device.path)) is held by md array \(array) (\(status.arrayUUID)),"
            + " which is not this volume's: refusing to touch it")
      }
      if status.isRunning { return try await completeMirror(volume, array, devices) }
    }
    var members: [Int: MirrorSuperblock] = [:]
    var blank: [Int] = []
    var seeded = false
    for (index, device) in devices.sorted(by: { $0.key < $1.key }) {
      if let superblock = try await mirrors.superblock(on: device.path) {
        if index == 0, let seed, superblock.arrayUUID == seed {
          seeded = true
          continue
        }
        guard superblock.arrayUUID == volume.uuid else {
          throw NVMeCSIError.failedPrecondition(
            "leg \(index) of volume \(volume) (\(device.path)) belongs to another md array (\(superblock.arrayUUID)):"
              + " refusing to touch it")
        }
        members[index] = superblock
      } else if let holds = try await mounter.fileSystem(on: device.path) {
        throw NVMeCSIError.failedPrecondition(
          "leg \(index) of volume \(volume) (\(device.path)) holds \(holds), not this volume's mirror:"
            + " refusing to touch it")
      } else {
        blank.append(index)
      }
    }
    if seeded {
      // Until the new array exists no other leg can hold its superblock.
      guard members.isEmpty else {
        throw NVMeCSIError.failedPrecondition(
          "leg 0 of volume \(volume) still holds the superblock of \(seed!), the volume it was restored from, while"
            + " legs \(members.keys.sorted()) hold this volume's: refusing to choose between them")
      }
      let array = try await mirrors.create(
        uuid: volume.uuid, seed: devices[0]!.path, legCount: count, dataOffsetBytes: ReplicaLayout.dataOffsetBytes,
        bitmapChunkBytes: ReplicaLayout.bitmapChunkBytes)
      logger.info(
        "md mirror created from the restored leg 0; md copies it onto the other legs",
        metadata: ["volume": "\(volume)", "array": "\(array)", "restored from": "\(seed!)"])
      return try await completeMirror(volume, array, devices)
    }
    guard !members.isEmpty else {
      guard blank.count == count else {
        throw NVMeCSIError.unavailable(
          "replicated volume \(volume) is new (its legs are blank) but not every leg is attached, so its mirror"
            + " cannot be created yet: \(missing.joined(separator: "; "))")
      }
      // A restored volume whose source was never written (its leg 0 is blank too) is new.
      let legs = blank.map { devices[$0]!.path }
      logger.info("creating md mirror over blank legs", metadata: ["volume": "\(volume)", "legs": "\(legs)"])
      return try await mirrors.create(
        uuid: volume.uuid, legs: legs, dataOffsetBytes: ReplicaLayout.dataOffsetBytes,
        bitmapChunkBytes: ReplicaLayout.bitmapChunkBytes)
    }
    let array: String
    do throws(NVMeCSIError) {
      array = try await mirrors.assemble(uuid: volume.uuid, legs: members.keys.sorted().map { devices[$0]!.path })
    } catch {
      // md will not start from the members: their superblocks count a member that is not
      // here. When every current leg (the leg map's, from publish_context) is either among
      // the members or a blank replacement, the members md misses are legs the map
      // replaced: gone for good by the controller's repair, so waiting never helps. Then
      // the array starts without them (mdadm --run, never --force: the members present
      // still decide among themselves by their event counts) and md copies the data onto
      // the replacements. Whether the lost leg held writes the members missed no one can
      // tell any more: the repair gave that leg up. Otherwise a current leg, which may
      // hold fresher data, is missing: wait for it (md's refusal).
      let blankReplacements = blank.filter { replacements.contains($0) }
      let missesOnlyReplaced = (0..<count).allSatisfy { members[$0] != nil || blankReplacements.contains($0) }
      guard error.kind == .unavailable, !blankReplacements.isEmpty, missesOnlyReplaced else { throw error }
      let present = members.keys.sorted().map { devices[$0]!.path }
      logger.notice(
        "starting the mirror without the members its legs' replacements took over; md copies onto the replacements",
        metadata: [
          "volume": "\(volume)", "members": "\(present)", "replacements": "\(blankReplacements)",
          "md": "\(error.message)",
        ])
      array = try await mirrors.assembleWithoutMissing(uuid: volume.uuid, legs: present)
    }
    return try await completeMirror(volume, array, devices)
  }

  /// Adds the attached legs md does not use yet. One md refuses is logged: the array
  /// serves from the others and the reconciler tries again.
  private func completeMirror(_ volume: VolumeID, _ array: String, _ devices: [Int: BlockDevice]) async throws
    -> String
  {
    let status = try mirrors.status(of: array)
    for (_, device) in devices.sorted(by: { $0.key < $1.key }) where !status.isUsing(device.name) {
      do { try await addLeg(device, of: volume, to: array) } catch {
        logger.warning(
          "leg not re-added to its mirror; retried by the reconciler",
          metadata: ["array": "\(array)", "leg": "\(device.path)", "error": "\(error)"])
      }
    }
    return array
  }

  /// Puts a leg into the volume's array: one with this array's superblock catches up
  /// through the bitmap, a blank one (proven so) is copied in full. A leg holding
  /// anything else is left alone (logged): only ours or nothing is ever written to.
  /// Answers whether it was added.
  @discardableResult
  func addLeg(_ device: BlockDevice, of volume: VolumeID, to array: String) async throws -> Bool {
    if let superblock = try await mirrors.superblock(on: device.path) {
      guard superblock.arrayUUID == volume.uuid else {
        logger.error(
          "a leg holds another md array: left alone",
          metadata: ["volume": "\(volume)", "leg": "\(device.path)", "array": "\(superblock.arrayUUID)"])
        return false
      }
    } else if let holds = try await mounter.fileSystem(on: device.path) {
      logger.error(
        "a leg holds data that is not this mirror's: left alone",
        metadata: ["volume": "\(volume)", "leg": "\(device.path)", "holds": "\(holds)"])
      return false
    }
    try await mirrors.add(device.path, to: array)
    return true
  }

  /// The md array of a staged replicated volume, found through its legs and checked to
  /// be the volume's; nil when no leg is attached or none is in its array.
  func mirrorArray(of record: StagingRecord) throws(NVMeCSIError) -> String? {
    let volume = try VolumeID(parsing: record.volumeID)
    for leg in record.mirror?.legs ?? [] {
      if let device = try attacher.device(subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID),
        let array = try mirrors.array(holding: device.name), try mirrors.status(of: array).arrayUUID == volume.uuid
      {
        return array
      }
    }
    return nil
  }

  /// Unstage's last steps for a replicated volume: stops its array (unless still
  /// mounted) and disconnects every leg.
  func disconnectMirror(_ record: StagingRecord) async throws {
    if let array = try mirrorArray(of: record) {
      let mounts = try mounter.mounts(ofDevice: "/dev/" + array).map(\.mountPoint)
      guard mounts.isEmpty else {
        throw NVMeCSIError.failedPrecondition(
          "/dev/\(array) of volume \(record.volumeID) is still mounted at \(mounts.joined(separator: ", ")):"
            + " unpublish it first")
      }
      try await mirrors.stop(array)
    }
    for leg in record.mirror?.connectedLegs ?? [] { try await attacher.disconnect(subsystemNQN: leg.subsystemNQN) }
  }

  /// NodeExpandVolume's first step for a replicated volume: waits (bounded) until every
  /// attached leg shows its grown size, then grows the array over them.
  func growMirror(of record: StagingRecord, toVolumeBytes required: UInt64) async throws {
    guard let mirror = record.mirror, let array = try mirrorArray(of: record) else {
      throw NVMeCSIError.failedPrecondition(
        "no md array holds any leg of volume \(record.volumeID): unstage and stage it again")
    }
    let legBytes = ReplicaLayout.legBytes(forVolume: required)
    let deadline = ContinuousClock.now + configuration.deviceTimeout
    for leg in mirror.legs {
      // A leg that is not attached (its target down) cannot be grown now; md grows to
      // the legs it has, and a returning leg that is too small is refused by md.
      guard !attacher.paths(subsystemNQN: leg.subsystemNQN).isEmpty else { continue }
      try attacher.rescan(subsystemNQN: leg.subsystemNQN)
      while let device = try attacher.device(subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID),
        device.sizeBytes < legBytes
      {
        guard ContinuousClock.now < deadline else {
          throw NVMeCSIError.unavailable(
            "leg \(device.path) of volume \(record.volumeID) still shows \(device.sizeBytes) bytes, not \(legBytes):"
              + " did ControllerExpandVolume succeed?")
        }
        try await Task.sleep(for: .milliseconds(20))
      }
    }
    try await mirrors.grow(array)
  }

  /// The volume condition of a replicated volume: md's view of its legs.
  func mirrorCondition(of record: StagingRecord) -> Csi_V1_VolumeCondition {
    do {
      guard let array = try mirrorArray(of: record) else {
        return .with {
          $0.abnormal = true
          $0.message = "no md array holds any leg of the volume: unstage and stage it again"
        }
      }
      let status = try mirrors.status(of: array)
      return .with {
        $0.abnormal = status.degraded > 0
        $0.message = status.summary
      }
    } catch {
      return .with {
        $0.abnormal = true
        $0.message = "cannot read the state of the volume's mirror: \(error.message)"
      }
    }
  }

  /// One pass of the mirror reconciler over every staged replicated volume: reconnects
  /// legs whose controller the kernel removed, re-adds legs that came back, takes out
  /// members whose device is gone, follows a newer leg map the legs carry (connects and
  /// adds a replacement leg, disconnects the replaced one once md no longer uses it).
  /// Run at start and periodically; never stops an array and never writes to a leg that
  /// holds anything but this array's superblock or nothing.
  public func reconcileMirrors() async {
    for record in records.loadAll(logger: logger) where record.state == .staged && record.mirror != nil {
      guard let volume = try? VolumeID(parsing: record.volumeID) else { continue }
      do {
        // A stage or unstage of this volume running: next pass.
        _ = try await locks.withBackgroundLock(volume.description) { try await reconcileMirror(volume) }
      } catch {
        logger.warning(
          "mirror not reconciled; next pass retries", metadata: ["volume": "\(volume)", "error": "\(error)"])
      }
    }
  }

  private func reconcileMirror(_ volume: VolumeID) async throws {
    // Read again under the lock: an unstage may have finished since the listing.
    guard var record = try records.load(volume), record.state == .staged, record.mirror != nil,
      let array = try mirrorArray(of: record)
    else { return }
    var status = try mirrors.status(of: array)
    if status.members.contains(where: { $0.state == .faulty }) || status.members.count > status.legCount {
      try await mirrors.removeFailed(from: array)
      status = try mirrors.status(of: array)
    }
    record = try followLegMap(volume, record: record, status: status)
    record = try await disconnectDroppedLegs(volume, record: record, array: array)
    status = try mirrors.status(of: array)
    guard let mirror = record.mirror else { return }
    let parameters = try ConnectionParameters(from: mirror.connection)
    for (index, leg) in mirror.legs.enumerated() {
      let device = try attacher.device(subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID)
      guard let device else {
        // The kernel gave the controller up (ctrlLossTmo) or never had it: connect again.
        if attacher.paths(subsystemNQN: leg.subsystemNQN).isEmpty {
          var paths: [HostPort] = []
          for path in leg.paths { paths.append(try HostPort(parsing: path)) }
          let context = PublishContext(
            paths: paths, subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID)
          do { try await attacher.connect(context, as: configuration.host, with: parameters) } catch {
            logger.debug("leg still unreachable", metadata: ["volume": "\(volume)", "leg": "\(index)"])
          }
        }
        continue
      }
      guard !status.isUsing(device.name) else { continue }
      // Not before its controller is live again: md would fail it at once, and probing
      // a dead leg holds the volume's lock for nothing.
      guard attacher.paths(subsystemNQN: leg.subsystemNQN).contains(where: \.isLive) else { continue }
      guard try await addLeg(device, of: volume, to: array) else { continue }
      logger.notice(
        "leg returned and re-added to its mirror; md resyncs it",
        metadata: ["volume": "\(volume)", "leg": "\(index)", "device": "\(device.path)", "array": "\(array)"])
    }
  }
}

extension MirrorStatus {
  /// Whether md uses this device (in sync or catching up).
  func isUsing(_ device: String) -> Bool {
    members.contains { $0.device == device && $0.state != .faulty }
  }

  /// "2 of 2 legs in sync", "degraded: 1 of 2 legs in sync (nvme2n1 faulty)", "… resyncing 45%".
  var summary: String {
    let inSync = members.filter { $0.state == .inSync }.count
    var text = "\(inSync) of \(legCount) legs in sync"
    let others = members.filter { $0.state != .inSync }.map { member -> String in
      switch member.state {
      case .faulty: return "\(member.device) faulty"
      case .rebuilding: return "\(member.device) resyncing"
      case .inSync: return member.device
      case .other(let state): return "\(member.device) \(state)"
      }
    }
    if !others.isEmpty { text += " (\(others.joined(separator: ", ")))" }
    if let progress = syncProgress, progress.total > 0 {
      text += ", \(syncAction) \(progress.done * 100 / progress.total)%"
    }
    return degraded > 0 ? "degraded: " + text : text
  }
}

/// Runs the mirror reconciler at start and then every `interval`, until shutdown.
public struct MirrorReconcilerService: Service {
  let node: NodeService
  let interval: Duration

  public init(node: NodeService, interval: Duration = .seconds(5)) {
    self.node = node
    self.interval = interval
  }

  public func run() async throws {
    while !Task.isCancelled && !Task.isShuttingDownGracefully {
      await node.reconcileMirrors()
      try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
    }
  }
}
