import CSIProto
import CSIServer
import Foundation
import GRPCCore
import Logging
import Mounting
import NVMeCSICore
import NVMeFabrics

/// CSI Node: attaches volumes over NVMe/TCP, formats (only blank devices), mounts.
///
/// Each handler: validate → lock the volume → idempotent check against the staging
/// record and what the kernel shows → act, undoing in reverse on failure. The device
/// is always found again by (subsystem NQN, namespace UUID) and checked before a
/// mount; nothing is unmounted that this plugin did not mount.
public struct NodeService: Csi_V1_Node.SimpleServiceProtocol {
  public struct Configuration: Sendable {
    public var host: HostIdentity
    public var topology: [String: String]
    public var maxVolumesPerNode: Int64
    public var deviceTimeout: Duration
    /// Crash points between the steps of stage and unstage, for crash tests.
    public var failpoints: Failpoints
    /// Reads the leg maps on replicated volumes' legs (the mirror reconciler).
    public var legMapBlocks: any LegMapBlockReader

    public init(
      host: HostIdentity, topology: [String: String] = [:], maxVolumesPerNode: Int64 = 0,
      deviceTimeout: Duration = .seconds(30), failpoints: Failpoints = .none,
      legMapBlocks: any LegMapBlockReader = UncachedLegMapBlockReader()
    ) {
      self.host = host
      self.topology = topology
      self.maxVolumesPerNode = maxVolumesPerNode
      self.deviceTimeout = deviceTimeout
      self.failpoints = failpoints
      self.legMapBlocks = legMapBlocks
    }
  }

  let configuration: Configuration
  let attacher: any Attacher
  let mounter: any Mounter
  /// md RAID1 over the legs of replicated volumes.
  let mirrors: any MirrorArrays
  let records: StagingRecords
  let logger: Logger
  let locks = KeyedLock<String>()

  public init(
    configuration: Configuration, attacher: any Attacher, mounter: any Mounter, mirrors: any MirrorArrays,
    records: StagingRecords, logger: Logger
  ) {
    self.configuration = configuration
    self.attacher = attacher
    self.mounter = mounter
    self.mirrors = mirrors
    self.records = records
    self.logger = logger
  }

  /// Reports (never repairs by unmounting) staged volumes whose device vanished.
  /// Each staged volume with the states of its NVMe controllers (live, connecting,
  /// resetting, deleting, …), read from sysfs: for metrics.
  /// A replicated volume's are those of every leg.
  public func stagedVolumePaths() -> [(volumeID: String, states: [String])] {
    records.loadAll(logger: logger).map { record in
      let subsystems = record.mirror?.legs.map(\.subsystemNQN) ?? [record.subsystemNQN]
      return (record.volumeID, subsystems.flatMap { attacher.paths(subsystemNQN: $0).map(\.state) })
    }
  }

  public func checkStagedVolumes() {
    for record in records.loadAll(logger: logger) where record.state == .staged {
      let metadata: Logger.Metadata = ["volume": "\(record.volumeID)", "subsystem": "\(record.subsystemNQN)"]
      do {
        if try stagedDevice(of: record) == nil {
          let message =
            "staged volume has no device: the kernel lost it (target down?) or the node rebooted; "
            + "the next NodeStageVolume reattaches it"
          logger.warning("\(message)", metadata: metadata)
        }
      } catch {
        logger.warning(
          "cannot check the device of a staged volume", metadata: metadata.merging(["error": "\(error.message)"]) { $1 }
        )
      }
    }
  }

  // MARK: stage

  public func nodeStageVolume(request: Csi_V1_NodeStageVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_NodeStageVolumeResponse
  {
    // Required fields first (InvalidArgument), then whether the volume can be ours (NotFound).
    try requireVolumeID(request.volumeID)
    try PathCheck.validate(request.stagingTargetPath, field: "staging_target_path")
    guard request.hasVolumeCapability else { throw NVMeCSIError.invalidArgument("volume_capability is required") }
    let access = try NodeAccess(request.volumeCapability)
    let volume = try VolumeID(parsing: request.volumeID)
    let publishContext = try PublishContext(decoding: request.publishContext)
    // Each leg (one, unless replicated) must be this volume's: leg i any generation of
    // slot i (a repaired leg's is above 0), under the subsystem its UUID names.
    guard publishContext.legs.count == volume.legs.count else {
      throw NVMeCSIError.invalidArgument(
        "publish_context names \(publishContext.legs.count) legs, but volume \(volume) has \(volume.legs.count)")
    }
    for (index, leg) in publishContext.legs.enumerated() {
      let uuid = try? ObjectUUID(leg.namespaceUUID)
      let generation = uuid.flatMap { ReplicaLayout.generation(ofLeg: $0, index: index, set: volume.uuid) }
      guard let uuid, let generation, volume.isReplicated || generation == 0,
        leg.subsystemNQN == SubsystemNaming.nqn(for: uuid)
      else {
        throw NVMeCSIError.invalidArgument(
          "publish_context names subsystem \(leg.subsystemNQN) (namespace \(leg.namespaceUUID)) as leg \(index),"
            + " which is not volume \(volume)'s: refusing to attach another volume")
      }
    }
    // Settings changed after creation (ControllerModifyVolume) come in publish_context.
    let parameters = try ConnectionParameters(
      from: request.volumeContext.merging(publishContext.connection) { $1 })
    let stagingPath = request.stagingTargetPath
    // A restored replicated volume: the array whose superblock its leg 0 carries.
    let seed = try request.volumeContext[ReplicaLayout.seedKey].map { text throws(NVMeCSIError) in
      guard volume.isReplicated, let uuid = try? ObjectUUID(text) else {
        throw NVMeCSIError.invalidArgument(
          "volume_context \(ReplicaLayout.seedKey)=\(quoted(text)) is not the UUID of a replicated volume's mirror")
      }
      return uuid
    }

    let start = ContinuousClock.now
    return try await locks.withLock(volume.description) {
      var steps = StepTimes(since: start)
      steps.lap("lock")
      let earlier = try records.load(volume)
      // publish_context is fixed when the volume is attached: a leg map the reconciler
      // followed since (recorded, the node rebooted with the volume attached) is newer.
      var publishContext = publishContext
      if let mirror = earlier?.mirror, mirror.legs.count == volume.legs.count,
        (mirror.mapVersion ?? 0) > publishContext.legMapVersion
      {
        logger.notice(
          "staging the legs of the newer leg map this node followed, not publish_context's",
          metadata: [
            "volume": "\(volume)", "recorded map version": "\(mirror.mapVersion ?? 0)",
            "publish_context map version": "\(publishContext.legMapVersion)",
          ])
        publishContext = try mirror.publishContext(like: publishContext)
      }
      if let earlier, earlier.state == .staged {
        guard earlier.stagingPath == stagingPath else {
          throw NVMeCSIError.alreadyExists("volume \(volume) is already staged at \(earlier.stagingPath)")
        }
        if try await isStillStaged(earlier) { return .init() }
        logger.notice("staged volume lost its device or mount; staging again", metadata: ["volume": "\(volume)"])
      }
      try attacher.checkKernelSupport()
      // A mount left on a device that vanished is dead: remove it (it is ours, the
      // record says so) before the volume is mounted there again.
      if let earlier, earlier.accessType == .mount, try mounter.mount(at: earlier.stagingPath) != nil {
        try await mounter.unmount(earlier.stagingPath)
      }
      var record = StagingRecord(
        volumeID: volume.description, stagingPath: stagingPath, subsystemNQN: publishContext.subsystemNQN,
        namespaceUUID: publishContext.namespaceUUID, accessType: access.type, fsType: access.fsType)
      record.targets = earlier?.targets ?? []
      if volume.isReplicated {
        record.mirror = MirrorRecord(
          legs: publishContext.legs.map(MirrorRecord.Leg.init), connection: parameters.asContext,
          mapVersion: publishContext.legMapVersion)
        // Legs a map dropped that may still be connected: disconnected at unstage.
        let dropped = (earlier?.mirror?.droppedLegs ?? []).filter { old in
          !publishContext.legs.contains { $0.subsystemNQN == old.subsystemNQN }
        }
        record.mirror?.droppedLegs = dropped.isEmpty ? nil : dropped
      }

      steps.lap("checks")
      var undo = UndoStack()
      do {
        try records.save(record)  // intent first: a crash from here on is recoverable
        steps.lap("record")
        undo.push("restore the staging record") {
          // Keep what an earlier stage recorded, so a later unstage still cleans up.
          if let earlier { try records.save(earlier) } else { try records.remove(volume) }
        }
        let device: BlockDevice
        if volume.isReplicated {
          device = try await stageMirrored(
            volume, context: publishContext, seed: seed, parameters: parameters, record: record, undo: &undo)
          steps.lap("mirror")
        } else {
          try await attacher.connect(publishContext, as: configuration.host, with: parameters)
          undo.push("disconnect \(publishContext.subsystemNQN)") { try await disconnectIfUnused(record) }
          steps.lap("connect")
          configuration.failpoints.reach("node.stage.after-connect")
          device = try await attacher.waitForDevice(
            subsystemNQN: publishContext.subsystemNQN, namespaceUUID: publishContext.namespaceUUID,
            timeout: configuration.deviceTimeout)
          steps.lap("device")
        }
        if access.type == .mount {
          try await prepareFileSystem(on: device, as: access.fsType, volume: volume)
          steps.lap("filesystem")
          configuration.failpoints.reach("node.stage.after-format")
          try await mounter.mountFileSystem(
            device.path, at: stagingPath, fsType: access.fsType, options: access.mountOptions, readonly: access.readonly
          )
          undo.push("unmount \(stagingPath)") { try await mounter.unmount(stagingPath) }
          steps.lap("mount")
        }
        record.state = .staged
        record.device = device.name
        try records.save(record)
        steps.lap("record")
        logger.info(
          "volume staged",
          metadata: [
            "volume": "\(volume)", "device": "\(device.path)", "bytes": "\(device.sizeBytes)", "step_ms": "\(steps)",
          ])
        return .init()
      } catch {
        await undo.run(logger: logger)
        throw error
      }
    }
  }

  public func nodeUnstageVolume(request: Csi_V1_NodeUnstageVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_NodeUnstageVolumeResponse
  {
    guard !request.volumeID.isEmpty else { throw NVMeCSIError.invalidArgument("volume_id is required") }
    try PathCheck.validate(request.stagingTargetPath, field: "staging_target_path")
    // An ID we cannot have staged has nothing to unstage.
    guard let volume = try? VolumeID(parsing: request.volumeID) else { return .init() }

    let start = ContinuousClock.now
    return try await locks.withLock(volume.description) {
      var steps = StepTimes(since: start)
      steps.lap("lock")
      guard let record = try records.load(volume) else { return .init() }
      // Refuse before changing anything while a pod's target still holds the volume.
      let held = try record.targets.filter { try mounter.mount(at: $0) != nil }
      guard held.isEmpty else {
        throw NVMeCSIError.failedPrecondition(
          "volume \(volume) is still published at \(held.joined(separator: ", ")): "
            + "unpublish it first (NodeUnpublishVolume)"
        )
      }
      steps.lap("checks")
      if record.accessType == .mount, try mounter.mount(at: record.stagingPath) != nil {
        try await mounter.unmount(record.stagingPath)
        steps.lap("unmount")
      }
      configuration.failpoints.reach("node.unstage.after-unmount")
      if record.mirror != nil { try await disconnectMirror(record) } else { try await disconnectIfUnused(record) }
      steps.lap("disconnect")
      configuration.failpoints.reach("node.unstage.after-disconnect")
      try records.remove(volume)
      steps.lap("record")
      logger.info("volume unstaged", metadata: ["volume": "\(volume)", "step_ms": "\(steps)"])
      return .init()
    }
  }

  // MARK: publish

  public func nodePublishVolume(request: Csi_V1_NodePublishVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_NodePublishVolumeResponse
  {
    try requireVolumeID(request.volumeID)
    try PathCheck.validate(request.stagingTargetPath, field: "staging_target_path")
    try PathCheck.validate(request.targetPath, field: "target_path")
    guard request.hasVolumeCapability else { throw NVMeCSIError.invalidArgument("volume_capability is required") }
    let access = try NodeAccess(request.volumeCapability)
    let volume = try VolumeID(parsing: request.volumeID)
    let readonly = request.readonly || access.readonly
    let targetPath = request.targetPath

    let start = ContinuousClock.now
    return try await locks.withLock(volume.description) {
      var steps = StepTimes(since: start)
      steps.lap("lock")
      guard var record = try records.load(volume), record.state == .staged,
        record.stagingPath == request.stagingTargetPath
      else {
        throw NVMeCSIError.failedPrecondition(
          "volume \(volume) is not staged at \(request.stagingTargetPath): NodeStageVolume must succeed first")
      }
      guard record.accessType == access.type else {
        throw NVMeCSIError.invalidArgument(
          "volume \(volume) was staged for \(record.accessType.rawValue) access, not \(access.type.rawValue)")
      }
      // SINGLE_NODE_SINGLE_WRITER promises one writer: one pod, so one mounted target path
      // (a target whose publish failed holds nothing and does not count).
      let others = try record.targets.filter { try $0 != targetPath && mounter.mount(at: $0) != nil }
      if access.mode == .singleNodeSingleWriter, let other = others.first {
        throw NVMeCSIError.failedPrecondition(
          "volume \(volume) has access mode SINGLE_NODE_SINGLE_WRITER and is already published at \(other):"
            + " unpublish it there first")
      }
      let device = try currentDevice(of: record)
      steps.lap("checks")
      // Recorded before mounting, so a crash mid-publish leaves a target this volume owns.
      if !record.targets.contains(targetPath) {
        record.targets.append(targetPath)
        try records.save(record)
        steps.lap("record")
      }
      switch access.type {
      case .mount:
        // Identity check: the staging mount must still hold this volume's device.
        guard let staged = try mounter.mount(at: record.stagingPath),
          isSameDevice(mountSource: staged.source, devicePath: device.path)
        else {
          throw NVMeCSIError.failedPrecondition(
            "staging path \(record.stagingPath) no longer holds \(device.path) of volume \(volume): "
              + "unstage and stage again"
          )
        }
        try await mounter.bindMount(record.stagingPath, at: targetPath, readonly: readonly)
      case .block:
        try await mounter.bindMount(device.path, at: targetPath, readonly: readonly)
      }
      steps.lap("mount")
      logger.debug(
        "volume published", metadata: ["volume": "\(volume)", "target": "\(targetPath)", "step_ms": "\(steps)"])
      return .init()
    }
  }

  public func nodeUnpublishVolume(request: Csi_V1_NodeUnpublishVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_NodeUnpublishVolumeResponse
  {
    guard !request.volumeID.isEmpty else { throw NVMeCSIError.invalidArgument("volume_id is required") }
    try PathCheck.validate(request.targetPath, field: "target_path")
    // An ID we cannot have published: nothing of ours is at that path.
    guard let volume = try? VolumeID(parsing: request.volumeID) else { return .init() }
    let targetPath = request.targetPath

    let start = ContinuousClock.now
    return try await locks.withLock(volume.description) {
      var steps = StepTimes(since: start)
      steps.lap("lock")
      let record = try records.load(volume)
      let ours = record?.targets.contains(targetPath) ?? false
      let mounted = try mounter.mount(at: targetPath) != nil
      // Only this volume's publication is taken down; anything else at the path is left alone.
      guard ours || (!mounted && Self.isEmptyLeftover(targetPath)) else {
        throw NVMeCSIError.failedPrecondition(
          "target_path \(targetPath) holds \(mounted ? "a mount" : "files") that this node's records do not"
            + " attribute to volume \(volume): refusing to touch it")
      }
      steps.lap("checks")
      if mounted { try await mounter.unmount(targetPath) }
      try removeTarget(targetPath)
      steps.lap("unmount")
      if var record, ours {
        record.targets.removeAll { $0 == targetPath }
        try records.save(record)
        steps.lap("record")
      }
      logger.debug(
        "volume unpublished", metadata: ["volume": "\(volume)", "target": "\(targetPath)", "step_ms": "\(steps)"])
      return .init()
    }
  }

  // MARK: stats and expansion

  public func nodeGetVolumeStats(request: Csi_V1_NodeGetVolumeStatsRequest, context: ServerContext) async throws
    -> Csi_V1_NodeGetVolumeStatsResponse
  {
    try requireVolumeID(request.volumeID)
    // No volume is ever published at a relative path (the CSI spec's NotFound case).
    if !request.volumePath.isEmpty && !request.volumePath.hasPrefix("/") {
      throw NVMeCSIError.notFound(
        "volume_path \(quoted(request.volumePath)) is not an absolute path: nothing is published there")
    }
    try PathCheck.validate(request.volumePath, field: "volume_path")
    let volume = try VolumeID(parsing: request.volumeID)
    guard FileManager.default.fileExists(atPath: request.volumePath) else {
      throw NVMeCSIError.notFound("volume_path \(request.volumePath) does not exist")
    }
    guard let record = try records.load(volume) else {
      throw NVMeCSIError.notFound("volume \(volume) is not staged on this node")
    }
    // Stats never fail for want of numbers: the condition says what is wrong, and
    // usage stays empty (with the reason logged) when it cannot be read.
    let device = Result { () throws(NVMeCSIError) in try stagedDevice(of: record) }
    let condition = record.mirror != nil ? mirrorCondition(of: record) : self.condition(of: record, device: device)
    var usage: [Csi_V1_VolumeUsage] = []
    if record.accessType == .mount {
      do {
        let fileSystem = try mounter.usage(of: request.volumePath)
        usage = [
          .with {
            $0.unit = .bytes
            $0.total = Int64(clamping: fileSystem.totalBytes)
            $0.available = Int64(clamping: fileSystem.availableBytes)
            $0.used = Int64(clamping: fileSystem.usedBytes)
          },
          .with {
            $0.unit = .inodes
            $0.total = Int64(clamping: fileSystem.totalInodes)
            $0.available = Int64(clamping: fileSystem.freeInodes)
            $0.used = Int64(clamping: fileSystem.usedInodes)
          },
        ]
      } catch {
        logger.warning(
          "no usage for the volume: cannot read its file system's statistics",
          metadata: ["volume": "\(volume)", "path": "\(request.volumePath)", "reason": "\(error.message)"])
      }
    } else if case .success(let device?) = device {
      usage = [
        .with {
          $0.unit = .bytes
          $0.total = Int64(clamping: device.sizeBytes)
        }
      ]
    }
    // A block volume without a device (or whose lookup failed) has no size to report;
    // the condition carries that.
    return .with {
      $0.usage = usage
      $0.volumeCondition = condition
    }
  }

  public func nodeExpandVolume(request: Csi_V1_NodeExpandVolumeRequest, context: ServerContext) async throws
    -> Csi_V1_NodeExpandVolumeResponse
  {
    let volume = try VolumeID(parsing: request.volumeID)
    try PathCheck.validate(request.volumePath, field: "volume_path")
    let required = UInt64(clamping: max(request.capacityRange.requiredBytes, 0))

    return try await locks.withLock(volume.description) {
      guard let record = try records.load(volume), record.state == .staged else {
        throw NVMeCSIError.notFound("volume \(volume) is not staged on this node")
      }
      // The target told the kernel (revalidate); make sure every path re-reads it.
      try attacher.rescan(subsystemNQN: record.subsystemNQN)
      if record.mirror != nil { try await growMirror(of: record, toVolumeBytes: required) }
      var device = try currentDevice(of: record)
      let deadline = ContinuousClock.now + configuration.deviceTimeout
      while device.sizeBytes < required && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(20))
        device = try currentDevice(of: record)
      }
      guard device.sizeBytes >= required else {
        throw NVMeCSIError.unavailable(
          "\(device.path) still shows \(device.sizeBytes) bytes, not \(required): did ControllerExpandVolume succeed?")
      }
      if record.accessType == .mount {
        try await mounter.growFileSystem(device: device.path, mountedAt: record.stagingPath, fsType: record.fsType)
      }
      logger.info("volume expanded on the node", metadata: ["volume": "\(volume)", "bytes": "\(device.sizeBytes)"])
      return .with { $0.capacityBytes = Int64(clamping: device.sizeBytes) }
    }
  }

  // MARK: node info

  public func nodeGetCapabilities(request: Csi_V1_NodeGetCapabilitiesRequest, context: ServerContext) async throws
    -> Csi_V1_NodeGetCapabilitiesResponse
  {
    let supported: [Csi_V1_NodeServiceCapability.RPC.TypeEnum] = [
      .stageUnstageVolume, .getVolumeStats, .expandVolume, .volumeCondition, .singleNodeMultiWriter,
    ]
    return .with { $0.capabilities = supported.map { type in .with { $0.rpc = .with { $0.type = type } } } }
  }

  public func nodeGetInfo(request: Csi_V1_NodeGetInfoRequest, context: ServerContext) async throws
    -> Csi_V1_NodeGetInfoResponse
  {
    .with {
      $0.nodeID = configuration.host.nodeID.description
      $0.maxVolumesPerNode = configuration.maxVolumesPerNode
      if !configuration.topology.isEmpty { $0.accessibleTopology = .with { $0.segments = configuration.topology } }
    }
  }

  // MARK: helpers

  /// The volume's device as the kernel shows it now, found by identity.
  private func currentDevice(of record: StagingRecord) throws(NVMeCSIError) -> BlockDevice {
    guard let device = try stagedDevice(of: record) else {
      let paths = ControllerPath.describe(attacher.paths(subsystemNQN: record.subsystemNQN))
      throw .failedPrecondition(
        "the device of volume \(record.volumeID) is gone (paths: \(paths)): unstage and stage it again")
    }
    return device
  }

  /// Still staged: the device is there and, for mounts, the staging path holds it.
  private func isStillStaged(_ record: StagingRecord) async throws -> Bool {
    guard let device = try stagedDevice(of: record) else { return false }
    guard record.accessType == .mount else { return true }
    guard let mount = try mounter.mount(at: record.stagingPath) else { return false }
    return isSameDevice(mountSource: mount.source, devicePath: device.path)
  }

  /// The device a staged volume's file system or pod uses: the namespace's, or for a
  /// replicated volume the md array over its legs. Nil when the kernel has none.
  func stagedDevice(of record: StagingRecord) throws(NVMeCSIError) -> BlockDevice? {
    guard record.mirror != nil else {
      return try attacher.device(subsystemNQN: record.subsystemNQN, namespaceUUID: record.namespaceUUID)
    }
    guard let array = try mirrorArray(of: record) else { return nil }
    let status = try mirrors.status(of: array)
    return BlockDevice(name: status.device, sizeBytes: status.sizeBytes)
  }

  /// Formats only a blank device; a device holding another file system is refused,
  /// never reformatted.
  private func prepareFileSystem(on device: BlockDevice, as fsType: String, volume: VolumeID) async throws {
    switch try await mounter.fileSystem(on: device.path) {
    case nil:
      logger.info(
        "formatting blank device", metadata: ["volume": "\(volume)", "device": "\(device.path)", "fs": "\(fsType)"])
      try await mounter.format(device.path, as: fsType)
    case fsType?: break
    case let other?:
      let holds = other == "unknown" ? "data no probe recognises" : other
      throw NVMeCSIError.failedPrecondition(
        "\(device.path) of volume \(volume) holds \(holds), but \(fsType) was requested: "
          + "refusing to reformat a volume with data"
      )
    }
  }

  /// Disconnects the volume's subsystem unless its device is still mounted somewhere.
  private func disconnectIfUnused(_ record: StagingRecord) async throws {
    if let device = try attacher.device(subsystemNQN: record.subsystemNQN, namespaceUUID: record.namespaceUUID) {
      let mounts = try mounter.mounts(ofDevice: device.path).map(\.mountPoint)
      let binds = try record.targets.filter { try mounter.mount(at: $0) != nil }
      guard mounts.isEmpty && binds.isEmpty else {
        throw NVMeCSIError.failedPrecondition(
          "\(device.path) of volume \(record.volumeID) is still mounted at "
            + "\((mounts + binds).joined(separator: ", ")): unpublish it first"
        )
      }
    }
    try await attacher.disconnect(subsystemNQN: record.subsystemNQN)
  }

  /// Whether a mount's source is the device: the same path, or both resolve to one node.
  private func isSameDevice(mountSource: String, devicePath: String) -> Bool {
    guard mountSource != devicePath else { return true }
    guard let resolved = resolvedPath(mountSource) else { return false }
    return resolved == resolvedPath(devicePath)
  }

  private func resolvedPath(_ path: String) -> String? {
    guard let resolved = Glibc.realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
  }

  /// Removes the empty directory or file kubelet's target was; one that is already gone is success.
  /// Nothing there, an empty directory or an empty file: what a publish that never
  /// finished leaves, safe to remove whoever made it.
  static func isEmptyLeftover(_ path: String) -> Bool {
    var st = stat()
    guard lstat(path, &st) == 0 else { return true }
    switch st.st_mode & S_IFMT {
    case S_IFDIR: return ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? ["?"]).isEmpty
    case S_IFREG: return st.st_size == 0
    default: return false
    }
  }

  private func requireVolumeID(_ id: String) throws(NVMeCSIError) {
    guard !id.isEmpty else { throw .invalidArgument("volume_id is required") }
  }

  private func removeTarget(_ path: String) throws(NVMeCSIError) {
    var st = stat()
    switch valueOrErrno({ lstat(path, &st) }) {
    case .success: break
    case .failure(.noEntry), .failure(.notDirectory): return
    case .failure(let error):
      throw NVMeCSIError(.internalError, "cannot look at \(path) to remove it: \(error)", cause: error)
    }
    let removed = valueOrErrno { (st.st_mode & S_IFMT) == S_IFDIR ? rmdir(path) : unlink(path) }
    if case .failure(let error) = removed, error != .noEntry {
      throw NVMeCSIError(.internalError, "cannot remove \(path): \(error)", cause: error)
    }
  }

  /// Abnormal when the device lookup failed, found none, or no path is live.
  private func condition(
    of record: StagingRecord, device: Result<BlockDevice?, NVMeCSIError>
  ) -> Csi_V1_VolumeCondition {
    let paths = attacher.paths(subsystemNQN: record.subsystemNQN)
    let described = ControllerPath.describe(paths)
    switch device {
    case .failure(let error):
      return .with {
        $0.abnormal = true
        $0.message = "cannot look up the volume's block device: \(error.message) (paths: \(described))"
      }
    case .success(nil):
      return .with {
        $0.abnormal = true
        $0.message = "no block device for the volume (paths: \(described))"
      }
    case .success:
      break
    }
    if !paths.contains(where: \.isLive) {
      return .with {
        $0.abnormal = true
        $0.message = "no live NVMe/TCP path (\(described)): I/O is queued or failing"
      }
    }
    return .with {
      $0.abnormal = false
      $0.message = "\(paths.filter(\.isLive).count) of \(paths.count) paths live"
    }
  }
}

/// A capability as the node serves it.
struct NodeAccess {
  /// Mount options: the capability's flags, plus `nouuid` for xfs, since a restored
  /// snapshot or clone carries its source's file-system UUID and xfs refuses to mount
  /// a second file system with the same UUID on one node.
  var mountOptions: [String] {
    fsType == "xfs" && !mountFlags.contains("nouuid") ? mountFlags + ["nouuid"] : mountFlags
  }

  var type: AccessType
  var mode: AccessMode
  var fsType: String
  var mountFlags: [String]
  var readonly: Bool

  init(_ capability: Csi_V1_VolumeCapability) throws(NVMeCSIError) {
    let access = try VolumeAccess(capability)  // validates type, mode and fs type
    type = access.type
    mode = access.mode
    fsType = access.fsType.isEmpty ? "ext4" : access.fsType
    readonly = access.mode.isReadOnly
    mountFlags = capability.mount.mountFlags
    for flag in mountFlags {
      let allowed = flag.unicodeScalars.allSatisfy {
        CharacterSet.alphanumerics.contains($0) || "=,._-".unicodeScalars.contains($0)
      }
      guard !flag.isEmpty, allowed else { throw .invalidArgument("mount flag \(quoted(flag)) is not allowed") }
    }
  }
}

/// Undo steps of a multi-step operation, run in reverse when a later step fails.
struct UndoStack {
  private var steps: [(String, () async throws -> Void)] = []

  mutating func push(_ what: String, _ step: @escaping () async throws -> Void) { steps.append((what, step)) }

  func run(logger: Logger) async {
    for (what, step) in steps.reversed() {
      do { try await step() } catch {
        logger.error(
          "undo step failed; the next NodeStageVolume or NodeUnstageVolume retries it",
          metadata: ["step": "\(what)", "error": "\(error)"])
      }
    }
  }
}
