import Foundation
import Mounting
import NVMeCSICore
import NVMeFabrics
import NodePlugin
import Synchronization

/// The node's kernel as far as the node plugin can see it: NVMe/TCP controllers and
/// the block devices they bring, what is on each device, and the mount table. The
/// targets' volumes ("exports") outlive connections, as they do on a real target.
///
/// Modelled behaviour:
/// - connect creates one controller per path unless a controller for that subsystem
///   and address exists already (never a second one); the first controller of a
///   subsystem brings its device, named `nvme<N>n1` with the lowest free N (the kernel
///   reuses instance numbers);
/// - disconnect removes the controllers and the device; mounts of a vanished device
///   stay in the mount table, dead;
/// - a device's size is what the kernel read last: growing an export shows only after
///   a rescan;
/// - a mount of a directory that is a mount point binds that mount's device; a bind of
///   a device node shows up as devtmpfs, like in /proc/self/mountinfo.
///
/// Every step can be made to fail with a chosen error.
final class FakeKernel: Sendable {
  enum Step: String, Sendable, CaseIterable {
    case kernelSupport, connect, device, disconnect, rescan, fileSystem, format, mount, bind, unmount, grow
  }

  struct Export: Sendable {
    var namespaceUUID: String
    var sizeBytes: UInt64
    var fileSystem: String?
    /// The leg map block (`LegMap.blockOffset`) as the controller wrote it; nil reads as zeros.
    var mapBlock: [UInt8]? = nil
  }

  struct Controller: Sendable {
    var name: String
    var subsystemNQN: String
    var address: String
    var state: String
  }

  struct Disk: Sendable {
    var name: String
    var subsystemNQN: String
    var namespaceUUID: String
    var sizeBytes: UInt64
    /// Distinguishes this device from an earlier one that had the same name.
    var generation: Int
    var path: String { "/dev/" + name }
  }

  struct Mount: Sendable {
    var info: MountInfo
    var options: [String]
    /// The device generation behind the mount (nil: not an NVMe device).
    var generation: Int?
  }

  struct State: Sendable {
    var exports: [String: Export] = [:]
    var controllers: [Controller] = []
    var disks: [Disk] = []
    /// In mount order: a later mount at the same point is on top.
    var mounts: [Mount] = []
    var failures: [Step: NVMeCSIError] = [:]
    var deviceNeverAppears = false
    var growsOnRescan = true
    var nextGeneration = 1
    var pendingLookups: [String: Int] = [:]
    var lookupsBeforeDeviceAppears = 0

    var connectCalls = 0
    var controllersCreated = 0
    var disconnectCalls = 0
    /// The subsystem of each disconnect, in order.
    var disconnected: [String] = []
    var rescanCalls = 0
    var fileSystemCalls = 0
    var formats: [(device: String, fsType: String)] = []
    var mountCalls: [(device: String, target: String, fsType: String, options: [String], readonly: Bool)] = []
    var bindCalls: [(source: String, target: String, readonly: Bool)] = []
    var unmountCalls: [String] = []
    var grows: [(device: String, mountPoint: String, fsType: String)] = []
    var lastHost: HostIdentity?
    var lastParameters: ConnectionParameters?
  }

  let state = Mutex(State())

  func read<R: Sendable>(_ body: (State) -> R) -> R { state.withLock { body($0) } }

  // MARK: test controls

  /// A target exports a volume: the device shows up when the node connects.
  func export(_ nqn: String, namespaceUUID: String, sizeBytes: UInt64 = 1 << 30, fileSystem: String? = nil) {
    state.withLock {
      $0.exports[nqn] = Export(namespaceUUID: namespaceUUID, sizeBytes: sizeBytes, fileSystem: fileSystem)
    }
  }

  /// The controller wrote a leg map block into a leg (on its target).
  func writeMapBlock(_ block: [UInt8], on nqn: String) { state.withLock { $0.exports[nqn]?.mapBlock = block } }

  /// ControllerExpandVolume happened on the target: the node sees it after a rescan.
  func resizeExport(_ nqn: String, to sizeBytes: UInt64) { state.withLock { $0.exports[nqn]?.sizeBytes = sizeBytes } }

  func fail(_ step: Step, with error: NVMeCSIError) { state.withLock { $0.failures[step] = error } }
  func heal(_ step: Step) { state.withLock { _ = $0.failures.removeValue(forKey: step) } }
  func setDeviceNeverAppears(_ value: Bool) { state.withLock { $0.deviceNeverAppears = value } }
  func setGrowsOnRescan(_ value: Bool) { state.withLock { $0.growsOnRescan = value } }
  func setLookupsBeforeDeviceAppears(_ n: Int) { state.withLock { $0.lookupsBeforeDeviceAppears = n } }

  /// Every path of a subsystem changes state (e.g. "connecting" after the target died).
  func setPathState(_ nqn: String, _ pathState: String) {
    state.withLock { s in
      for i in s.controllers.indices where s.controllers[i].subsystemNQN == nqn { s.controllers[i].state = pathState }
    }
  }

  /// ctrl_loss_tmo ran out: the kernel removed the controllers and the device.
  func loseDevice(_ nqn: String) { state.withLock { Self.removeSubsystem(nqn, from: &$0) } }

  /// A mount made behind the plugin's back (an administrator, another pod).
  func addMount(_ info: MountInfo) {
    state.withLock { $0.mounts.append(Mount(info: info, options: [], generation: nil)) }
  }

  // MARK: what a test inspects

  var connectCalls: Int { read(\.connectCalls) }
  var controllersCreated: Int { read(\.controllersCreated) }
  var formatCount: Int { read(\.formats.count) }
  var mountCallCount: Int { read(\.mountCalls.count) }
  var allMounts: [MountInfo] { read { $0.mounts.map(\.info) } }

  func controllers(of nqn: String) -> [Controller] { read { $0.controllers.filter { $0.subsystemNQN == nqn } } }
  func disk(of nqn: String) -> Disk? { read { $0.disks.first { $0.subsystemNQN == nqn } } }
  func fileSystem(of nqn: String) -> String? { read { $0.exports[nqn]?.fileSystem } }
  func mounts(at path: String) -> [Mount] { read { $0.mounts.filter { $0.info.mountPoint == path } } }

  /// Whether the mount on top of `path` is on a device the kernel still has.
  func isLive(mountAt path: String) -> Bool {
    read { s in
      guard let top = s.mounts.last(where: { $0.info.mountPoint == path }), let generation = top.generation else {
        return false
      }
      return s.disks.contains { $0.generation == generation }
    }
  }

  // MARK: kernel behaviour (used by the fakes, under the lock)

  static func removeSubsystem(_ nqn: String, from s: inout State) {
    s.controllers.removeAll { $0.subsystemNQN == nqn }
    s.disks.removeAll { $0.subsystemNQN == nqn }
    s.pendingLookups[nqn] = nil
  }

  static func lowestFree(_ prefix: String, suffix: String = "", in names: [String]) -> String {
    var n = 0
    while names.contains(prefix + String(n) + suffix) { n += 1 }
    return prefix + String(n) + suffix
  }

  func check(_ step: Step, _ s: State) throws(NVMeCSIError) {
    if let error = s.failures[step] { throw error }
  }
}

/// The attacher over the fake kernel.
struct FakeAttacher: Attacher {
  let kernel: FakeKernel

  func checkKernelSupport() throws(NVMeCSIError) {
    try kernel.state.withLock { (s) throws(NVMeCSIError) in try kernel.check(.kernelSupport, s) }
  }

  func connect(_ context: PublishContext, as host: HostIdentity, with parameters: ConnectionParameters)
    async throws(NVMeCSIError)
  {
    try kernel.state.withLock { (s) throws(NVMeCSIError) in
      s.connectCalls += 1
      s.lastHost = host
      s.lastParameters = parameters
      try kernel.check(.connect, s)
      guard let export = s.exports[context.subsystemNQN] else {
        throw .failedPrecondition("connecting \(context.subsystemNQN) failed: the target has no such subsystem")
      }
      for path in context.paths {
        let address = path.description
        if s.controllers.contains(where: { $0.subsystemNQN == context.subsystemNQN && $0.address == address }) {
          continue
        }
        let name = FakeKernel.lowestFree("nvme", in: s.controllers.map(\.name))
        s.controllers.append(.init(name: name, subsystemNQN: context.subsystemNQN, address: address, state: "live"))
        s.controllersCreated += 1
      }
      if !s.disks.contains(where: { $0.subsystemNQN == context.subsystemNQN }) {
        let name = FakeKernel.lowestFree("nvme", suffix: "n1", in: s.disks.map(\.name))
        s.disks.append(
          .init(
            name: name, subsystemNQN: context.subsystemNQN, namespaceUUID: export.namespaceUUID,
            sizeBytes: export.sizeBytes,
            generation: s.nextGeneration))
        s.nextGeneration += 1
        s.pendingLookups[context.subsystemNQN] = s.lookupsBeforeDeviceAppears
      }
    }
  }

  func device(subsystemNQN: String, namespaceUUID: String) throws(NVMeCSIError) -> BlockDevice? {
    try kernel.state.withLock { (s) throws(NVMeCSIError) -> BlockDevice? in
      try kernel.check(.device, s)
      guard !s.deviceNeverAppears,
        let disk = s.disks.first(where: {
          $0.subsystemNQN == subsystemNQN && $0.namespaceUUID == namespaceUUID.lowercased()
        })
      else { return nil }
      if let pending = s.pendingLookups[subsystemNQN], pending > 0 {
        s.pendingLookups[subsystemNQN] = pending - 1
        return nil
      }
      return BlockDevice(name: disk.name, sizeBytes: disk.sizeBytes)
    }
  }

  func paths(subsystemNQN: String) -> [ControllerPath] {
    kernel.controllers(of: subsystemNQN).map { ControllerPath(name: $0.name, address: $0.address, state: $0.state) }
  }

  func rescan(subsystemNQN: String) throws(NVMeCSIError) {
    try kernel.state.withLock { (s) throws(NVMeCSIError) in
      s.rescanCalls += 1
      try kernel.check(.rescan, s)
      guard s.growsOnRescan, s.controllers.contains(where: { $0.subsystemNQN == subsystemNQN && $0.state == "live" }),
        let size = s.exports[subsystemNQN]?.sizeBytes
      else { return }
      for i in s.disks.indices where s.disks[i].subsystemNQN == subsystemNQN { s.disks[i].sizeBytes = size }
    }
  }

  func disconnect(subsystemNQN: String) async throws(NVMeCSIError) {
    try kernel.state.withLock { (s) throws(NVMeCSIError) in
      s.disconnectCalls += 1
      try kernel.check(.disconnect, s)
      s.disconnected.append(subsystemNQN)
      FakeKernel.removeSubsystem(subsystemNQN, from: &s)
    }
  }
}

/// Reads a leg's map block from the fake kernel: the block is on the target's export
/// (it outlasts a disconnect), read through the device the node has of it.
struct FakeLegMapBlocks: LegMapBlockReader {
  let kernel: FakeKernel

  func mapBlock(on device: String) throws(NVMeCSIError) -> [UInt8] {
    try kernel.state.withLock { (s) throws(NVMeCSIError) -> [UInt8] in
      guard let disk = s.disks.first(where: { $0.path == device }) else {
        throw .internalError("cannot open \(device): No such file or directory")
      }
      return s.exports[disk.subsystemNQN]?.mapBlock ?? [UInt8](repeating: 0, count: LegMap.blockBytes)
    }
  }
}

/// The mounter over the fake kernel. Like a real mounter it creates a publish target
/// (a directory, or a file for a device) when it is missing; CSI leaves that to the
/// plugin. A staging directory must exist (kubelet creates it).
struct FakeMounter: Mounter {
  let kernel: FakeKernel

  func mount(at path: String) throws(NVMeCSIError) -> MountInfo? {
    kernel.read { $0.mounts.last { $0.info.mountPoint == path }?.info }
  }

  func mounts(ofDevice device: String) throws(NVMeCSIError) -> [MountInfo] {
    kernel.read { $0.mounts.filter { $0.info.source == device }.map(\.info) }
  }

  func fileSystem(on device: String) async throws(NVMeCSIError) -> String? {
    try kernel.state.withLock { (s) throws(NVMeCSIError) -> String? in
      s.fileSystemCalls += 1
      try kernel.check(.fileSystem, s)
      guard let disk = s.disks.first(where: { $0.path == device }) else {
        throw .internalError("blkid: \(device): no such device")
      }
      return s.exports[disk.subsystemNQN]?.fileSystem
    }
  }

  func format(_ device: String, as fsType: String) async throws(NVMeCSIError) {
    try kernel.state.withLock { (s) throws(NVMeCSIError) in
      try kernel.check(.format, s)
      guard let disk = s.disks.first(where: { $0.path == device }) else {
        throw .internalError("mkfs: \(device): no such device")
      }
      s.exports[disk.subsystemNQN]?.fileSystem = fsType
      s.formats.append((device, fsType))
    }
  }

  func mountFileSystem(_ device: String, at target: String, fsType: String, options: [String], readonly: Bool)
    async throws(NVMeCSIError)
  {
    try kernel.state.withLock { (s) throws(NVMeCSIError) in
      try kernel.check(.mount, s)
      if let top = s.mounts.last(where: { $0.info.mountPoint == target }), top.info.source == device { return }
      guard let disk = s.disks.first(where: { $0.path == device }) else {
        throw .internalError("mount: \(device): no such device")
      }
      guard s.exports[disk.subsystemNQN]?.fileSystem == fsType else {
        throw .internalError("mount: \(target): wrong fs type, bad option, bad superblock on \(device)")
      }
      guard Self.isDirectory(target) else { throw .internalError("mount: \(target): mount point does not exist") }
      s.mounts.append(
        .init(
          info: MountInfo(mountPoint: target, source: device, root: "/", fsType: fsType, readonly: readonly),
          options: options,
          generation: disk.generation))
      s.mountCalls.append((device, target, fsType, options, readonly))
    }
  }

  func bindMount(_ source: String, at target: String, readonly: Bool) async throws(NVMeCSIError) {
    try kernel.state.withLock { (s) throws(NVMeCSIError) in
      try kernel.check(.bind, s)
      let mount: FakeKernel.Mount
      if let base = s.mounts.last(where: { $0.info.mountPoint == source }) {
        mount = .init(
          info: MountInfo(
            mountPoint: target, source: base.info.source, root: base.info.root, fsType: base.info.fsType,
            readonly: readonly),
          options: [], generation: base.generation)
        if !FileManager.default.fileExists(atPath: target) {
          try? FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        }
      } else if let disk = s.disks.first(where: { $0.path == source }) {
        mount = .init(
          info: MountInfo(
            mountPoint: target, source: "udev", root: "/" + disk.name, fsType: "devtmpfs", readonly: readonly),
          options: [], generation: disk.generation)
        if !FileManager.default.fileExists(atPath: target) {
          FileManager.default.createFile(atPath: target, contents: nil)
        }
      } else {
        throw .internalError("mount --bind \(source) \(target): special device \(source) does not exist")
      }
      if let top = s.mounts.last(where: { $0.info.mountPoint == target }) {
        guard top.info.source == mount.info.source, top.info.root == mount.info.root else {
          throw .internalError("\(target) already holds \(top.info.source)")
        }
        return
      }
      guard FileManager.default.fileExists(atPath: target) else {
        throw .internalError("mount: \(target): cannot create")
      }
      s.mounts.append(mount)
      s.bindCalls.append((source, target, readonly))
    }
  }

  func unmount(_ target: String) async throws(NVMeCSIError) {
    try kernel.state.withLock { (s) throws(NVMeCSIError) in
      try kernel.check(.unmount, s)
      guard let index = s.mounts.lastIndex(where: { $0.info.mountPoint == target }) else { return }
      s.mounts.remove(at: index)
      s.unmountCalls.append(target)
    }
  }

  func growFileSystem(device: String, mountedAt mountPoint: String, fsType: String) async throws(NVMeCSIError) {
    try kernel.state.withLock { (s) throws(NVMeCSIError) in
      try kernel.check(.grow, s)
      s.grows.append((device, mountPoint, fsType))
    }
  }

  func usage(of path: String) throws(NVMeCSIError) -> FileSystemUsage {
    try kernel.state.withLock { (s) throws(NVMeCSIError) -> FileSystemUsage in
      guard let mount = s.mounts.last(where: { $0.info.mountPoint == path }) else {
        throw .notFound("\(path) is not a mount point")
      }
      guard let disk = s.disks.first(where: { $0.generation == mount.generation }) else {
        throw .internalError("statvfs \(path): input/output error")
      }
      return FileSystemUsage(
        totalBytes: disk.sizeBytes, availableBytes: disk.sizeBytes - (1 << 20), usedBytes: 1 << 20, totalInodes: 65_536,
        freeInodes: 65_525, usedInodes: 11)
    }
  }

  func deviceSize(_ device: String) throws(NVMeCSIError) -> UInt64 {
    try kernel.state.withLock { (s) throws(NVMeCSIError) -> UInt64 in
      guard let disk = s.disks.first(where: { $0.path == device }) else {
        throw .internalError("\(device): no such device")
      }
      return disk.sizeBytes
    }
  }

  private static func isDirectory(_ path: String) -> Bool {
    var isDirectory: ObjCBool = false
    return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
  }
}
