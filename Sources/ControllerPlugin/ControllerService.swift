import CSIProto
import Foundation
import GRPCCore
import Logging
import NVMeCSICore
import SwiftProtobuf
import TargetContract

/// CSI Controller over the storage targets. Stateless: every answer comes from the
/// targets, so a restarted controller loses nothing.
///
/// Each handler reads top to bottom: validate → lock (names only; targets serialize
/// per volume) → idempotent lookup → act. Errors are `NVMeCSIError`s, turned into
/// statuses in one place (CSIServer).
public struct ControllerService: Csi_V1_Controller.SimpleServiceProtocol {
  let targets: TargetSet
  let logger: Logger
  let locks = KeyedLock<String>()
  /// Which targets' volumes are recorded at their names' homes (Placement.swift).
  let placements = PlacementIndex()
  /// The targets' free space, recent enough to choose where a volume goes.
  let targetInfo = TargetInfoCache()
  /// Where repaired replicated volumes' legs are now (LegRepair.swift).
  let legMaps = LegMapCache()

  public init(targets: TargetSet, logger: Logger) {
    self.targets = targets
    self.logger = logger
  }

  // MARK: CreateVolume / DeleteVolume

  public func createVolume(request: Csi_V1_CreateVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_CreateVolumeResponse
  {
    let name = request.name
    guard !name.isEmpty else { throw NVMeCSIError.invalidArgument("name is required") }
    guard !ReplicaLayout.isReservedName(name) else {
      throw NVMeCSIError.invalidArgument(
        "volume name \(quoted(name)) contains \"~replica-\", which is reserved for the names of replicas' legs:"
          + " use another name")
    }
    let capabilities = try VolumeCapabilities(request.volumeCapabilities)
    let parameters = try VolumeParameters(parsing: request.parameters)
    // A VolumeAttributesClass given at creation: recorded as later changes would be.
    let mutable = try MutableParameters(parsing: request.mutableParameters)
    _ = try mutable.applied(to: parameters.connection.asContext)
    let range = try CapacityBounds(request.capacityRange, given: request.hasCapacityRange)
    let source = try await contentSource(of: request)
    let size = try Capacity.resolve(required: range.required, limit: range.limit, minimum: source?.sizeBytes ?? 0)
    var wanted = RequestedVolume(
      range: range, source: source?.volumeSource, capabilities: capabilities, context: parameters.context,
      modified: mutable.values)
    if let source {
      // A replicated volume's data sits behind md's superblock on every leg: only a
      // replicated volume can hold a copy of it, and only such a copy can seed one.
      switch (source.seed, parameters.replicas > 1) {
      case (_?, false):
        throw NVMeCSIError.invalidArgument(
          "\(source.csiID) is a copy of a replicated volume: restore or clone it with replicas=2 or 3")
      case (nil, true):
        throw NVMeCSIError.invalidArgument(
          "a replicated volume can only be restored or cloned from a replicated volume, and \(source.csiID) is not"
            + " one: use replicas=1")
      case (let seed?, true):
        wanted.context[ReplicaLayout.seedKey] = seed.value
        wanted.replicaSource = source.csiID
      case (nil, false): break
      }
    }
    let requested = wanted
    if parameters.replicas > 1 {
      return try await createReplicated(
        name: name, size: size, replicas: parameters.replicas, requested: requested, source: source,
        sharing: capabilities.sharing, topology: request.accessibilityRequirements)
    }

    let newVolume = NewVolume(
      name: name, sizeBytes: size, source: source?.volumeSource, attributes: requested.attributes,
      sharing: capabilities.sharing)
    return try await locks.withLock("volume-name:" + name) {
      let target: StorageTarget
      func choose() async throws -> (target: StorageTarget, info: TargetInfo) {
        try await chooseTarget(
          size: size, pinned: parameters.target, source: source, topology: request.accessibilityRequirements)
      }
      // Chosen once; nil when nothing fits (the name may exist already: looked up below).
      let choice = try? await choose()
      // The common cases in one or two calls; nil: look the name up in full.
      var done = try await createOnHome(newVolume, choice: choice)
      if done == nil { done = try await createElsewhere(newVolume, choice: choice) }
      if let (holder, volume, existed) = done {
        if existed { try requested.check(volume.record, name: name) }
        return .with { $0.volume = csiVolume(volume, on: holder) }
      }
      // The choice again when there is one; else choosing again says why nothing fits.
      func chosen() async throws -> StorageTarget {
        if let choice { return choice.target }
        return try await choose().target
      }
      switch try await locate(name) {
      case .found(let holder, let existing):
        try requested.check(existing.record, name: name)
        return .with { $0.volume = csiVolume(existing, on: holder) }
      case .reserved(let placed, let home):
        // An earlier attempt recorded it there: only there may it be created (a full
        // target answers ResourceExhausted; one still creating it answers Aborted).
        // Only when this request can never live there (another pinned target, topology
        // or clone source) does the record go, as nothing of this name is on that
        // target (`locate` just asked), and the name is placed afresh.
        if fits(placed, pinned: parameters.target, source: source, topology: request.accessibilityRequirements) {
          target = placed
        } else {
          try await home.api.releasePlacement(of: name, on: placed.name)
          target = try await reserve(name, on: try await chosen(), home: home)
        }
      case .absent(let home):
        target = try await reserve(name, on: try await chosen(), home: home)
      }
      let created = try await targetInfo.creating(
        on: target.name, { try await target.api.createVolume(newVolume) },
        charging: { $0.existed ? nil : $0.volume.record.sizeBytes })
      if created.existed { try requested.check(created.volume.record, name: name) }
      return .with { $0.volume = csiVolume(created.volume, on: target) }
    }
  }

  public func deleteVolume(request: Csi_V1_DeleteVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_DeleteVolumeResponse
  {
    guard !request.volumeID.isEmpty else { throw NVMeCSIError.invalidArgument("volume_id is required") }
    // An ID we could not have issued names no volume: deleting it is done already.
    guard let volumeID = try? VolumeID(parsing: request.volumeID) else { return .init() }
    if volumeID.isReplicated { return try await deleteReplicated(volumeID) }
    let id = volumeID.primary
    guard let target = targets[id.target] else {
      logger.warning(
        "DeleteVolume for a target not in the targets file: nothing to delete", metadata: ["volume": "\(id)"])
      return .init()
    }
    // The name, to forget its placement afterwards; a volume already gone is done.
    let volume: TargetVolume
    do { volume = try await target.api.volume(id.uuid) } catch let error as NVMeCSIError where error.kind == .notFound {
      return .init()
    }
    // A leg of a replicated volume goes only with its volume (whose ID names every leg).
    if let set = VolumeAttribute.replicatedID(of: volume.record) {
      throw NVMeCSIError.failedPrecondition(
        "\(id) is a leg of replicated volume \(set): delete that volume, which deletes every leg")
    }
    let name = volume.record.name
    guard !name.isEmpty else {  // quarantined: its name is not known
      try await target.api.deleteVolume(id.uuid)
      return .init()
    }
    // Under the name's lock: a create of the same name must not see the placement
    // between the delete and the release.
    try await locks.withLock("volume-name:" + name) {
      // On the name's home, the target releases the placement itself, in the same call.
      if let home = targets.home(of: name), home.name == target.name, await placesAsHome(home) {
        try await target.api.deleteVolume(id.uuid, asHome: home.name)
      } else {
        try await target.api.deleteVolume(id.uuid)
        await releasePlacement(of: name, on: target)
      }
    }
    return .init()
  }

  // MARK: publish

  public func controllerPublishVolume(request: Csi_V1_ControllerPublishVolumeRequest, context: ServerContext)
    async throws
    -> Csi_V1_ControllerPublishVolumeResponse
  {
    guard !request.volumeID.isEmpty else { throw NVMeCSIError.invalidArgument("volume_id is required") }
    guard !request.nodeID.isEmpty else { throw NVMeCSIError.invalidArgument("node_id is required") }
    guard request.hasVolumeCapability else { throw NVMeCSIError.invalidArgument("volume_capability is required") }
    let access = try VolumeAccess(request.volumeCapability)
    let id = try VolumeID(parsing: request.volumeID)
    let node = try NodeID(parsing: request.nodeID)
    // Every leg of a replicated volume: the node mirrors them all.
    let (map, exports) = try await withLegsLocked(id) {
      let map = try await currentLegMap(of: id)
      let exports = try await onEveryLeg(map) { leg, target in
        try await target.api.publishVolume(
          leg.uuid, to: node, readonly: request.readonly, exclusive: access.mode.isSingleNode)
      }
      return (map, exports)
    }
    let legs = exports.map {
      PublishContext.Leg(paths: $0.portals, subsystemNQN: $0.subsystemNQN, namespaceUUID: $0.namespaceUUID.value)
    }
    // Settings changed since creation override the volume_context's at the node.
    let publishContext = PublishContext(
      paths: legs[0].paths, subsystemNQN: legs[0].subsystemNQN, namespaceUUID: legs[0].namespaceUUID,
      connection: VolumeAttribute.modified(of: exports[0].attributes), replicaLegs: Array(legs.dropFirst()),
      legMapVersion: map.version)
    return .with { $0.publishContext = publishContext.encoded }
  }

  public func controllerUnpublishVolume(request: Csi_V1_ControllerUnpublishVolumeRequest, context: ServerContext)
    async throws -> Csi_V1_ControllerUnpublishVolumeResponse
  {
    guard !request.volumeID.isEmpty else { throw NVMeCSIError.invalidArgument("volume_id is required") }
    // A volume or node that cannot exist is not published: done already.
    guard let id = try? VolumeID(parsing: request.volumeID) else { return .init() }
    var node: NodeID?
    if !request.nodeID.isEmpty {
      guard let parsed = try? NodeID(parsing: request.nodeID) else { return .init() }
      node = parsed
    }
    // Every leg the volume has or had (a replaced leg may still allow the node); one on
    // a target no longer configured cannot be published.
    // A current leg's target must answer (retried); a leg the volume no longer uses (its
    // target lost, or replaced) is revoked where it answers.
    try await withLegsLocked(id) { [node] in
      let map = (try? await currentLegMap(of: id)) ?? LegMap(implied: id)
      let current = Set(map.legIDs)
      for leg in Set(id.legs + map.legIDs + map.replacedIDs).sorted(by: { $0.description < $1.description }) {
        guard let target = targets[leg.target] else { continue }
        do { try await target.api.unpublishVolume(leg.uuid, from: node) } catch let error as NVMeCSIError
          where error.kind == .notFound || (error.kind == .unavailable && !current.contains(leg))
        {}
      }
    }
    return .init()
  }

  public func validateVolumeCapabilities(request: Csi_V1_ValidateVolumeCapabilitiesRequest, context: ServerContext)
    async throws -> Csi_V1_ValidateVolumeCapabilitiesResponse
  {
    guard !request.volumeID.isEmpty else { throw NVMeCSIError.invalidArgument("volume_id is required") }
    guard !request.volumeCapabilities.isEmpty else {
      throw NVMeCSIError.invalidArgument("volume_capabilities is empty: at least one is required")
    }
    let id = try await primaryLeg(of: try VolumeID(parsing: request.volumeID))
    _ = try await targets.holding(id).api.volume(id.uuid)
    do {
      _ = try VolumeCapabilities(request.volumeCapabilities)
      _ = try VolumeParameters(parsing: request.parameters)
    } catch {
      return .with { $0.message = error.message }
    }
    return .with {
      $0.confirmed = .with {
        $0.volumeContext = request.volumeContext
        $0.volumeCapabilities = request.volumeCapabilities
        $0.parameters = request.parameters
        $0.mutableParameters = request.mutableParameters
      }
    }
  }

  // MARK: listing and capacity

  public func listVolumes(request: Csi_V1_ListVolumesRequest, context: ServerContext) async throws
    -> Csi_V1_ListVolumesResponse
  {
    var cursor = try ListCursor<Csi_V1_ListVolumesResponse.Entry>(
      token: request.startingToken, maxEntries: request.maxEntries, kind: .volume)
    // Targets in the order of their volume IDs; each asked only for the page's share,
    // so a page costs what it returns however many volumes there are.
    try await cursor.fill(from: targets.all) { target, after, limit in
      let page = try await target.api.volumes(after: after, limit: limit)
      return (page.volumes, page.more)
    } add: { [self] cursor, target, volume in
      // A replicated volume is listed once, by its leg 0 (the other legs skip).
      let replicated = VolumeAttribute.replicatedID(of: volume.record)
      cursor.add(
        ObjectID(kind: .volume, target: target.name, uuid: volume.uuid),
        skip: (VolumeAttribute.replicaIndex(of: volume.record) ?? 0) > 0,
        .with {
          if let replicated, let legs = try? legTargets(of: LegMap(implied: replicated)).map(\.target) {
            $0.volume = csiVolume(volume, id: replicated, legs: legs)
          } else {
            $0.volume = csiVolume(volume, on: target)
          }
          $0.status = .with {
            $0.publishedNodeIds = volume.record.publications.map(\.nodeID.description)
            $0.volumeCondition = condition(volume)
          }
        })
    }
    return .with {
      $0.entries = cursor.entries
      $0.nextToken = cursor.nextToken
    }
  }

  public func controllerGetVolume(request: Csi_V1_ControllerGetVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_ControllerGetVolumeResponse
  {
    guard !request.volumeID.isEmpty else { throw NVMeCSIError.invalidArgument("volume_id is required") }
    let id = try VolumeID(parsing: request.volumeID)
    if id.isReplicated { return try await getReplicated(id) }
    let target = try targets.holding(id.primary)
    let volume = try await target.api.volume(id.uuid)
    return .with {
      $0.volume = csiVolume(volume, on: target)
      $0.status = .with {
        $0.publishedNodeIds = volume.record.publications.map(\.nodeID.description)
        $0.volumeCondition = condition(volume)
      }
    }
  }

  public func getCapacity(request: Csi_V1_GetCapacityRequest, context: ServerContext) async throws
    -> Csi_V1_GetCapacityResponse
  {
    if !request.volumeCapabilities.isEmpty { _ = try VolumeCapabilities(request.volumeCapabilities) }
    let parameters = try VolumeParameters(parsing: request.parameters)
    let candidates = targets.all.filter { target in
      (parameters.target == nil || parameters.target == target.name)
        && (!request.hasAccessibleTopology || target.isAccessible(from: request.accessibleTopology.segments))
    }
    let infos = await targets.reachableInfo(candidates, logger: logger)
    // What can still be provisioned: the overcommit ratio and the physically free space.
    // A replicated volume takes its size on each of `replicas` targets (failure domains
    // aside: an estimate, as CSI allows).
    let replicas = parameters.replicas
    let total = infos.reduce(UInt64(0)) { $0.addingReportingOverflow($1.info.allocatableBytes).partialValue }
    let available = total / UInt64(replicas)
    let sizes = infos.map(\.info.allocatableBytes).sorted(by: >)
    let largest =
      sizes.count < replicas
      ? 0
      : Capacity.alignDown(
        replicas == 1
          ? sizes[0] : ReplicaLayout.volumeBytes(ofLeg: min(sizes[replicas - 1], ReplicaLayout.maximumVolumeBytes)))
    return .with {
      $0.availableCapacity = Int64(clamping: available)
      $0.maximumVolumeSize = .init(Int64(clamping: largest))
      $0.minimumVolumeSize = .init(Int64(Capacity.alignment))
    }
  }

  public func controllerGetCapabilities(request: Csi_V1_ControllerGetCapabilitiesRequest, context: ServerContext)
    async throws -> Csi_V1_ControllerGetCapabilitiesResponse
  {
    let supported: [Csi_V1_ControllerServiceCapability.RPC.TypeEnum] = [
      .createDeleteVolume, .publishUnpublishVolume, .listVolumes, .listVolumesPublishedNodes, .getCapacity,
      .createDeleteSnapshot, .listSnapshots, .getSnapshot, .cloneVolume, .expandVolume, .publishReadonly, .getVolume,
      .volumeCondition, .singleNodeMultiWriter, .modifyVolume,
    ]
    return .with {
      $0.capabilities = supported.map { type in .with { $0.rpc = .with { $0.type = type } } }
    }
  }

  // MARK: snapshots

  public func createSnapshot(request: Csi_V1_CreateSnapshotRequest, context: ServerContext) async throws
    -> Csi_V1_CreateSnapshotResponse
  {
    let name = request.name
    guard !name.isEmpty else { throw NVMeCSIError.invalidArgument("name is required") }
    guard !request.sourceVolumeID.isEmpty else { throw NVMeCSIError.invalidArgument("source_volume_id is required") }
    for key in request.parameters.keys.sorted() where !key.hasPrefix(VolumeParameters.sidecarPrefix) {
      throw NVMeCSIError.invalidArgument("unknown snapshot parameter \(quoted(key)): snapshots take no parameters")
    }
    let sourceID = try VolumeID(parsing: request.sourceVolumeID)
    let legs = try legTargets(of: try await currentLegMap(of: sourceID))

    return try await locks.withLock("snapshot-name:" + name) {
      // A snapshot lives on its source's target (a replicated source's: one of its legs'),
      // so a retry finds it there: those targets must answer. The others are asked only
      // so that a name used for another source is refused (AlreadyExists); one that does
      // not answer cannot hold this request's snapshot, so it does not stop it (a target
      // down must not stop every snapshot).
      let filter = SnapshotFilter(name: name)
      for (leg, target) in legs {
        guard let existing = try await target.api.snapshots(matching: filter).first else { continue }
        guard existing.sourceVolume == leg.uuid else {
          throw NVMeCSIError.alreadyExists("snapshot \(quoted(name)) already exists for a different source volume")
        }
        return .with { $0.snapshot = csiSnapshot(existing, on: target) }
      }
      let others = targets.all.filter { target in !legs.contains { $0.target.name == target.name } }
      let elsewhere = await targets.askReachable(others, logger: logger) {
        try await $0.api.snapshots(matching: filter)
      }
      if let holder = elsewhere.first(where: { !$0.value.isEmpty })?.target {
        throw NVMeCSIError.alreadyExists(
          "snapshot \(quoted(name)) already exists on target \(holder.name) for a different source volume")
      }
      // A replicated volume's snapshot is one in-sync leg's, and records the set it is of;
      // not beside a repair, whose new leg is in the map before it exists.
      let attributes = sourceID.isReplicated ? [VolumeAttribute.replicaSet: sourceID.description] : [:]
      let (created, leg, target) = try await withLegsLocked(sourceID) {
        let (leg, target) = sourceID.isReplicated ? try await currentLeg(of: sourceID) : legs[0]
        return (try await target.api.createSnapshot(named: name, of: leg.uuid, attributes: attributes), leg, target)
      }
      guard created.snapshot.sourceVolume == leg.uuid else {
        throw NVMeCSIError.alreadyExists("snapshot \(quoted(name)) already exists for a different source volume")
      }
      return .with { $0.snapshot = csiSnapshot(created.snapshot, on: target) }
    }
  }

  public func deleteSnapshot(request: Csi_V1_DeleteSnapshotRequest, context: ServerContext) async throws
    -> Csi_V1_DeleteSnapshotResponse
  {
    guard !request.snapshotID.isEmpty else { throw NVMeCSIError.invalidArgument("snapshot_id is required") }
    guard let id = try? ObjectID(parsing: request.snapshotID, as: .snapshot), let target = targets[id.target] else {
      return .init()
    }
    try await target.api.deleteSnapshot(id.uuid)
    return .init()
  }

  public func listSnapshots(request: Csi_V1_ListSnapshotsRequest, context: ServerContext) async throws
    -> Csi_V1_ListSnapshotsResponse
  {
    if request.snapshotID.isEmpty && request.sourceVolumeID.isEmpty {
      // Every snapshot: targets in the order of the snapshot IDs, each asked only for
      // the page's share, so a page costs what it returns however many there are.
      var cursor = try ListCursor<Csi_V1_ListSnapshotsResponse.Entry>(
        token: request.startingToken, maxEntries: request.maxEntries, kind: .snapshot)
      try await cursor.fill(from: targets.all) { target, after, limit in
        let page = try await target.api.snapshots(after: after, limit: limit)
        return (page.snapshots, page.more)
      } add: { [self] cursor, target, snapshot in
        cursor.add(
          ObjectID(kind: .snapshot, target: target.name, uuid: snapshot.uuid),
          .with { $0.snapshot = csiSnapshot(snapshot, on: target) })
      }
      return .with {
        $0.entries = cursor.entries
        $0.nextToken = cursor.nextToken
      }
    }
    // A filter names one snapshot or one source's: found through the targets' indexes
    // (by UUID, by source volume), few enough to page here.
    var filter = SnapshotFilter()
    var scope = targets.all
    // Filters that name no object of ours match nothing.
    if !request.snapshotID.isEmpty {
      guard let id = try? ObjectID(parsing: request.snapshotID, as: .snapshot), let target = targets[id.target] else {
        return .init()
      }
      filter.uuid = id.uuid
      scope = [target]
    }
    // A source's snapshots are on its legs' targets, each of its own leg.
    var legOn: [TargetName: ObjectUUID] = [:]
    if !request.sourceVolumeID.isEmpty {
      guard let id = try? VolumeID(parsing: request.sourceVolumeID) else { return .init() }
      let map = (try? await currentLegMap(of: id)) ?? LegMap(implied: id)
      for leg in id.legs + map.legIDs where targets[leg.target] != nil { legOn[leg.target] = leg.uuid }
      scope = scope.filter { legOn[$0.name] != nil }
      if scope.isEmpty { return .init() }
    }
    let perTarget = try await targets.askEvery(scope) { [filter, legOn] target in
      var filter = filter
      filter.sourceVolume = legOn[target.name]
      return try await target.api.snapshots(matching: filter)
    }
    let all = perTarget.flatMap { target, snapshots in
      snapshots.map { snapshot in
        (
          id: ObjectID(kind: .snapshot, target: target.name, uuid: snapshot.uuid),
          entry: Csi_V1_ListSnapshotsResponse.Entry.with { $0.snapshot = csiSnapshot(snapshot, on: target) }
        )
      }
    }.filter { request.sourceVolumeID.isEmpty || $0.entry.snapshot.sourceVolumeID == request.sourceVolumeID }
    return try .init(paging: all, startingToken: request.startingToken, maxEntries: request.maxEntries, kind: .snapshot)
  }

  public func getSnapshot(request: Csi_V1_GetSnapshotRequest, context: ServerContext) async throws
    -> Csi_V1_GetSnapshotResponse
  {
    guard !request.snapshotID.isEmpty else { throw NVMeCSIError.invalidArgument("snapshot_id is required") }
    let (target, snapshot) = try await snapshot(try ObjectID(parsing: request.snapshotID, as: .snapshot))
    return .with { $0.snapshot = csiSnapshot(snapshot, on: target) }
  }

  // MARK: expansion

  public func controllerExpandVolume(request: Csi_V1_ControllerExpandVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_ControllerExpandVolumeResponse
  {
    guard !request.volumeID.isEmpty else { throw NVMeCSIError.invalidArgument("volume_id is required") }
    guard request.hasCapacityRange else { throw NVMeCSIError.invalidArgument("capacity_range is required") }
    let range = try CapacityBounds(request.capacityRange, given: true)
    let access = request.hasVolumeCapability ? try VolumeAccess(request.volumeCapability) : nil
    let id = try VolumeID(parsing: request.volumeID)
    // Not beside a repair, which makes its new leg the size the legs had when it began.
    let grown = try await withLegsLocked(id) {
      let map = try await currentLegMap(of: id)
      let primary = map.legIDs[0]
      let current = try await targets.holding(primary).api.volume(primary.uuid).record
      let currentBytes = VolumeAttribute.volumeBytes(of: current)
      if range.limit != 0 && currentBytes > range.limit {
        throw NVMeCSIError.outOfRange(
          "volume \(id) is already \(currentBytes) bytes, above limit_bytes \(range.limit): volumes cannot shrink")
      }
      let size = try Capacity.resolve(required: range.required, limit: range.limit)
      // Every leg of a replicated volume grows (the node then grows the mirror); a leg
      // already grown by an earlier attempt is left as it is.
      let legBytes = id.isReplicated ? ReplicaLayout.legBytes(forVolume: size) : size
      return try await onEveryLeg(map) { leg, target in
        let record = try await target.api.volume(leg.uuid).record
        return record.sizeBytes < legBytes ? try await target.api.expandVolume(leg.uuid, to: legBytes).record : record
      }[0]
    }
    // Block volumes need nothing on the node, unless mirrored (md must grow);
    // file systems must be grown there.
    let isBlock = try access.map { $0.type == .block } ?? VolumeAttribute.capabilities(of: grown).isBlockOnly
    return .with {
      $0.capacityBytes = Int64(clamping: VolumeAttribute.volumeBytes(of: grown))
      $0.nodeExpansionRequired = !isBlock || id.isReplicated
    }
  }

  public func controllerModifyVolume(request: Csi_V1_ControllerModifyVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_ControllerModifyVolumeResponse
  {
    guard !request.volumeID.isEmpty else { throw NVMeCSIError.invalidArgument("volume_id is required") }
    guard !request.mutableParameters.isEmpty else {
      throw NVMeCSIError.invalidArgument("mutable_parameters is empty: name the settings to change")
    }
    let changes = try MutableParameters(parsing: request.mutableParameters)
    let id = try VolumeID(parsing: request.volumeID)
    // One change at a time per volume: each is checked against the settings it replaces.
    // A replicated volume's: none beside a repair, which copies a survivor's settings.
    try await withLegsLocked(id) {
      try await locks.withLock("volume-modify:" + id.description) {
        // Publishes read leg 0's settings; every leg records them, so that a repair of
        // leg 0 copies them from a survivor.
        let map = try await currentLegMap(of: id)
        let primary = map.legIDs[0]
        let current = try await targets.holding(primary).api.volume(primary.uuid).record
        _ = try changes.applied(to: VolumeAttribute.effectiveContext(of: current))
        // Recorded with the volume; the node applies them at the next attach (the kernel
        // fixes them when it connects), through ControllerPublishVolume's publish_context.
        let modified = VolumeAttribute.modified(changes.values)
        _ = try await onEveryLeg(map) { leg, target in
          try await target.api.updateVolumeAttributes(leg.uuid, setting: modified)
        }
      }
    }
    logger.info(
      "volume modified; the node applies it at the next attach",
      metadata: ["volume": "\(id)", "settings": "\(changes.values.sorted { $0.key < $1.key })"])
    return .init()
  }

  // MARK: helpers

  /// Where a new volume's content comes from, checked to exist.
  struct ContentSource {
    /// What is copied: a snapshot, or a volume (a replicated source's in-sync leg).
    var id: ObjectID
    /// What the source offers (for a replicated source, its legs less md's overhead).
    var sizeBytes: UInt64
    /// The content source as the request named it.
    var csiID: String
    /// A replicated source's md array, whose superblock the copy carries to the node.
    var seed: ObjectUUID?

    var volumeSource: VolumeSource { id.kind == .snapshot ? .snapshot(id.uuid) : .volume(id.uuid) }
  }

  /// The content source, checked to exist (`notFound` otherwise, as CSI asks).
  private func contentSource(of request: Csi_V1_CreateVolumeRequest) async throws -> ContentSource? {
    guard request.hasVolumeContentSource else { return nil }
    switch request.volumeContentSource.type {
    case .snapshot(let s)?:
      let id = try ObjectID(parsing: s.snapshotID, as: .snapshot)
      let snapshot = try await snapshot(id).snapshot
      guard let set = snapshot.attributes[VolumeAttribute.replicaSet] else {
        return ContentSource(id: id, sizeBytes: snapshot.sizeBytes, csiID: s.snapshotID)
      }
      guard let source = try? VolumeID(parsing: set), source.isReplicated else {
        throw NVMeCSIError.failedPrecondition(
          "snapshot \(id) records \(quoted(set)) as its replicated source volume, which is no such ID")
      }
      return ContentSource(
        id: id, sizeBytes: ReplicaLayout.volumeBytes(ofLeg: snapshot.sizeBytes), csiID: s.snapshotID,
        seed: source.uuid)
    case .volume(let v)?:
      let sourceID = try VolumeID(parsing: v.volumeID)
      let (leg, target) =
        sourceID.isReplicated ? try await currentLeg(of: sourceID) : try legTargets(of: LegMap(implied: sourceID))[0]
      let volume = try await target.api.volume(leg.uuid)
      return ContentSource(
        id: leg, sizeBytes: VolumeAttribute.volumeBytes(of: volume.record), csiID: v.volumeID,
        seed: sourceID.isReplicated ? sourceID.uuid : nil)
    case nil:
      throw NVMeCSIError.invalidArgument("volume_content_source has neither a snapshot nor a volume")
    }
  }

  /// A snapshot by ID, from the target that holds it; `notFound` when it is gone.
  private func snapshot(_ id: ObjectID) async throws -> (target: StorageTarget, snapshot: SnapshotRecord) {
    let target = try targets.holding(id)
    guard let snapshot = try await target.api.snapshots(matching: SnapshotFilter(uuid: id.uuid)).first else {
      throw NVMeCSIError.notFound("snapshot \(id) does not exist")
    }
    return (target, snapshot)
  }

  /// Whether a volume of this request may live on `target` at all (capacity aside).
  private func fits(
    _ target: StorageTarget, pinned: TargetName?, source: ContentSource?, topology: Csi_V1_TopologyRequirement
  ) -> Bool {
    if let pinned, pinned != target.name { return false }
    if let source, source.id.target != target.name { return false }
    return topology.requisite.isEmpty || topology.requisite.contains { target.isAccessible(from: $0.segments) }
  }

  /// The target for a new volume: the source's target for clones (reflinks stay on one
  /// file system); otherwise the first target that fits the topology, preferred
  /// topologies first, then the one with the most free space.
  private func chooseTarget(
    size: UInt64, pinned: TargetName?, source: ContentSource?, topology: Csi_V1_TopologyRequirement
  ) async throws -> (target: StorageTarget, info: TargetInfo) {
    var candidates = targets.all
    if let pinned {
      guard let target = targets[pinned] else {
        throw NVMeCSIError.invalidArgument("parameter target=\(pinned) names no target in the targets file")
      }
      candidates = [target]
    }
    if let source { candidates = candidates.filter { $0.name == source.id.target } }
    if !topology.requisite.isEmpty {
      candidates = candidates.filter { target in topology.requisite.contains { target.isAccessible(from: $0.segments) }
      }
    }
    guard !candidates.isEmpty else {
      throw NVMeCSIError.resourceExhausted(
        "no storage target fits: "
          + "\(source != nil ? "clones must stay on the source's target \(source!.id.target), " : "")"
          + "check the StorageClass's target parameter and allowedTopologies"
      )
    }
    let ranked = await rank(candidates, topology: topology)
    let needsSpace = source == nil || ranked.first.map { !$0.info.sharesBlocks } ?? true
    if let fit = ranked.first(where: { !needsSpace || $0.info.allocatableBytes >= size }) { return fit }
    throw NVMeCSIError.resourceExhausted("no storage target has room for \(size) bytes (\(Self.report(ranked)))")
  }

  /// The candidates that answer, preferred topologies first, then by free space.
  func rank(_ candidates: [StorageTarget], topology: Csi_V1_TopologyRequirement) async
    -> [(target: StorageTarget, info: TargetInfo)]
  {
    func preference(_ target: StorageTarget) -> Int {
      topology.preferred.firstIndex { target.isAccessible(from: $0.segments) } ?? Int.max
    }
    let infos = await targetInfo.info(of: candidates, in: targets, logger: logger)
    return infos.sorted {
      (preference($0.target), $1.info.allocatableBytes) < (preference($1.target), $0.info.allocatableBytes)
    }
  }

  /// The targets' free space, for a refusal's message.
  static func report(_ ranked: [(target: StorageTarget, info: TargetInfo)]) -> String {
    let report = ranked.map { "\($0.target.name): \($0.info.allocatableBytes) bytes allocatable" }
    return report.isEmpty ? "no target answered" : report.joined(separator: ", ")
  }

  func csiVolume(_ volume: TargetVolume, on target: StorageTarget) -> Csi_V1_Volume {
    let record = volume.record
    return .with {
      $0.volumeID = ObjectID(kind: .volume, target: target.name, uuid: record.uuid).description
      $0.capacityBytes = Int64(clamping: record.sizeBytes)
      $0.volumeContext = VolumeAttribute.context(of: record)
      switch record.source {
      case .snapshot(let uuid)?:
        $0.contentSource = .with {
          $0.snapshot = .with { $0.snapshotID = ObjectID(kind: .snapshot, target: target.name, uuid: uuid).description }
        }
      case .volume(let uuid)?:
        $0.contentSource = .with {
          $0.volume = .with { $0.volumeID = ObjectID(kind: .volume, target: target.name, uuid: uuid).description }
        }
      case nil: break
      }
      if !target.topology.isEmpty { $0.accessibleTopology = [Csi_V1_Topology(target.topology)] }
    }
  }

  func csiSnapshot(_ snapshot: SnapshotRecord, on target: StorageTarget) -> Csi_V1_Snapshot {
    .with {
      $0.snapshotID = ObjectID(kind: .snapshot, target: target.name, uuid: snapshot.uuid).description
      // A leg's snapshot is its replicated volume's, and offers what the volume does.
      let set = snapshot.attributes[VolumeAttribute.replicaSet]
      $0.sourceVolumeID =
        set ?? ObjectID(kind: .volume, target: target.name, uuid: snapshot.sourceVolume).description
      $0.sizeBytes = Int64(
        clamping: set == nil ? snapshot.sizeBytes : ReplicaLayout.volumeBytes(ofLeg: snapshot.sizeBytes))
      $0.creationTime = Google_Protobuf_Timestamp(date: snapshot.created)
      $0.readyToUse = true
    }
  }

  func condition(_ volume: TargetVolume) -> Csi_V1_VolumeCondition {
    .with {
      $0.abnormal = volume.problem != nil
      $0.message = volume.problem ?? "volume data present and exported"
    }
  }
}

/// A CSI capacity range, checked for sign and order.
struct CapacityBounds: Sendable {
  var required: UInt64
  var limit: UInt64

  init(_ range: Csi_V1_CapacityRange, given: Bool) throws(NVMeCSIError) {
    guard given else {
      self.required = 0
      self.limit = 0
      return
    }
    guard range.requiredBytes >= 0, range.limitBytes >= 0 else {
      throw .invalidArgument("capacity_range bytes must not be negative")
    }
    self.required = UInt64(range.requiredBytes)
    self.limit = UInt64(range.limitBytes)
  }

  func admits(_ size: UInt64) -> Bool { size >= required && (limit == 0 || size <= limit) }
}

/// What a CreateVolume asks for, to compare with a volume that already has its name.
struct RequestedVolume {
  var range: CapacityBounds
  var source: VolumeSource?
  var capabilities: VolumeCapabilities
  /// The StorageClass parameters the node needs (volume_context).
  var context: [String: String]
  /// Mutable parameters given at creation (a VolumeAttributesClass): not compared with
  /// an existing volume's, which may have been modified since.
  var modified: [String: String] = [:]
  /// A replicated copy's content source as CSI named it: compared instead of `source`,
  /// the leg copied, which a retry may choose differently.
  var replicaSource: String?

  /// What the target keeps with the volume.
  var attributes: [String: String] {
    var attributes = VolumeAttribute.attributes(capabilities: capabilities, context: context, modified: modified)
    attributes[VolumeAttribute.replicaSource] = replicaSource
    return attributes
  }

  func check(_ existing: VolumeRecord, name: String) throws(NVMeCSIError) {
    var differences: [String] = []
    let bytes = VolumeAttribute.volumeBytes(of: existing)
    if !range.admits(bytes) { differences.append("size \(bytes) bytes") }
    let sameSource =
      replicaSource == nil
      ? existing.source == source : existing.attributes[VolumeAttribute.replicaSource] == replicaSource
    if !sameSource { differences.append("content source") }
    if (try? VolumeAttribute.capabilities(of: existing)) != capabilities { differences.append("capabilities") }
    if VolumeAttribute.context(of: existing) != context { differences.append("parameters") }
    guard differences.isEmpty else {
      throw .alreadyExists(
        "volume \(quoted(name)) already exists with a different \(differences.joined(separator: ", ")): "
          + "use another name or the same request"
      )
    }
  }
}

extension ControllerService {
  /// How many targets answer now (Probe readiness).
  public func reachableTargetCount() async -> Int {
    await targets.reachableInfo(targets.all, logger: logger).count
  }

  /// Every target by name, with what it reported (nil: it did not answer within
  /// `deadline`, so a target that swallows packets cannot hold up a scrape).
  public func targetReport(deadline: Duration = .seconds(3)) async -> [(name: String, info: TargetInfo?)] {
    await withTaskGroup(of: (Int, TargetInfo?).self) { group in
      for (index, target) in targets.all.enumerated() {
        group.addTask {
          await withTaskGroup(of: TargetInfo?.self) { race in
            race.addTask { try? await target.api.info() }
            race.addTask {
              try? await Task.sleep(for: deadline)
              return nil
            }
            let first = await race.next() ?? nil
            race.cancelAll()
            return (index, first)
          }
        }
      }
      var infos = [TargetInfo?](repeating: nil, count: targets.all.count)
      for await (index, info) in group { infos[index] = info }
      return zip(targets.all, infos).map { ($0.name.value, $1) }
    }
  }
}
