import Mounting
import NVMeCSICore
import NVMeFabrics
import Synchronization

/// md RAID1 over the fake kernel's disks. A leg's superblock belongs to its subsystem
/// (it lives on the target, so it outlasts a disconnect); an array is a disk of the
/// fake kernel ("md127") whose contents (its file system) outlast a stop, so the fake
/// mounter formats and mounts it like any device.
final class FakeMirrors: MirrorArrays {
  struct Array: Sendable {
    var uuid: ObjectUUID
    var legCount: Int
    /// Member device name → state.
    var members: [String: MirrorMember.State]
  }

  struct State: Sendable {
    /// Subsystem NQN of a leg → the superblock on it.
    var superblocks: [String: MirrorSuperblock] = [:]
    var arrays: [String: Array] = [:]
    /// Arrays md would start from fewer legs (their superblocks mark the others failed).
    var startsDegraded: Set<ObjectUUID> = []
    var creates = 0
    var seededCreates = 0
    var assembles = 0
    /// Assemblies started without missing members (`--run`).
    var assemblesWithoutMissing = 0
    var adds: [String] = []
    var stops = 0
  }

  let kernel: FakeKernel
  let state = Mutex(State())

  init(kernel: FakeKernel) { self.kernel = kernel }

  static func arrayNQN(_ uuid: ObjectUUID) -> String { "md:" + uuid.value }

  // MARK: test controls

  /// md failed a leg after an I/O error.
  func failLeg(_ device: String) {
    state.withLock { s in
      for name in s.arrays.keys where s.arrays[name]!.members[device] != nil {
        s.arrays[name]!.members[device] = .faulty
      }
    }
  }

  func allowDegradedStart(_ uuid: ObjectUUID) { _ = state.withLock { $0.startsDegraded.insert(uuid) } }

  func read<R: Sendable>(_ body: (State) -> R) -> R { state.withLock { body($0) } }

  // MARK: MirrorArrays

  func array(holding leg: String) throws(NVMeCSIError) -> String? {
    state.withLock { s in s.arrays.first { $0.value.members[leg] != nil }?.key }
  }

  func superblock(on device: String) async throws(NVMeCSIError) -> MirrorSuperblock? {
    let nqn = try subsystem(of: device)
    return state.withLock { $0.superblocks[nqn] }
  }

  func create(uuid: ObjectUUID, legs: [String], dataOffsetBytes: UInt64, bitmapChunkBytes: UInt64)
    async throws(NVMeCSIError) -> String
  {
    var nqns: [String] = []
    for leg in legs { nqns.append(try subsystem(of: leg)) }
    let sizes = kernel.read { s in legs.compactMap { leg in s.disks.first { $0.path == leg }?.sizeBytes } }
    let name = startArray(uuid: uuid, legs: legs, legCount: legs.count, size: sizes.min()! - dataOffsetBytes)
    state.withLock { s in
      s.creates += 1
      for nqn in nqns { s.superblocks[nqn] = MirrorSuperblock(arrayUUID: uuid, events: 1) }
    }
    return name
  }

  /// The new array's contents are the seed's array's (its data rides on the seed leg).
  func create(uuid: ObjectUUID, seed: String, legCount: Int, dataOffsetBytes: UInt64, bitmapChunkBytes: UInt64)
    async throws(NVMeCSIError) -> String
  {
    let nqn = try subsystem(of: seed)
    guard let source = state.withLock({ $0.superblocks[nqn]?.arrayUUID }) else {
      throw .internalError("the fake's seed \(seed) carries no superblock")
    }
    let size = kernel.read { s in s.disks.first { $0.path == seed }!.sizeBytes } - dataOffsetBytes
    kernel.state.withLock { s in
      s.exports[Self.arrayNQN(uuid)] = .init(
        namespaceUUID: uuid.value, sizeBytes: size, fileSystem: s.exports[Self.arrayNQN(source)]?.fileSystem)
    }
    let name = startArray(uuid: uuid, legs: [seed], legCount: legCount, size: size)
    state.withLock { s in
      s.seededCreates += 1
      s.superblocks[nqn] = MirrorSuperblock(arrayUUID: uuid, events: 1)
    }
    return name
  }

  func assemble(uuid: ObjectUUID, legs: [String]) async throws(NVMeCSIError) -> String {
    let (legCount, degradedOK) = state.withLock { s in
      (s.superblocks.values.filter { $0.arrayUUID == uuid }.count, s.startsDegraded.contains(uuid))
    }
    guard legs.count == legCount || degradedOK else {
      throw .unavailable("md refused to start the array from \(legs.count) of \(legCount) legs")
    }
    let sizes = kernel.read { s in legs.compactMap { leg in s.disks.first { $0.path == leg }?.sizeBytes } }
    state.withLock { $0.assembles += 1 }
    return startArray(
      uuid: uuid, legs: legs, legCount: legCount, size: sizes.min()! - ReplicaLayout.dataOffsetBytes)
  }

  func assembleWithoutMissing(uuid: ObjectUUID, legs: [String]) async throws(NVMeCSIError) -> String {
    let legCount = state.withLock { s in s.superblocks.values.filter { $0.arrayUUID == uuid }.count }
    let sizes = kernel.read { s in legs.compactMap { leg in s.disks.first { $0.path == leg }?.sizeBytes } }
    state.withLock { $0.assemblesWithoutMissing += 1 }
    return startArray(
      uuid: uuid, legs: legs, legCount: legCount, size: sizes.min()! - ReplicaLayout.dataOffsetBytes)
  }

  func status(of array: String) throws(NVMeCSIError) -> MirrorStatus {
    guard let a = state.withLock({ $0.arrays[array] }) else { throw .notFound("no md array \(array)") }
    let size = kernel.read { s in s.disks.first { $0.name == array }?.sizeBytes ?? 0 }
    let members = a.members.sorted { $0.key < $1.key }.map { MirrorMember(device: $0.key, state: $0.value) }
    let inSync = members.filter { $0.state == .inSync }.count
    return MirrorStatus(
      device: array, arrayUUID: a.uuid, isRunning: true, legCount: a.legCount, members: members,
      degraded: a.legCount - inSync, syncAction: "idle",
      syncProgress: nil, sizeBytes: size)
  }

  func add(_ leg: String, to array: String) async throws(NVMeCSIError) {
    let nqn = try subsystem(of: leg)
    let device = String(leg.dropFirst("/dev/".count))
    try state.withLock { (s) throws(NVMeCSIError) in
      guard s.arrays[array] != nil else { throw .notFound("no md array \(array)") }
      s.arrays[array]!.members[device] = .inSync
      s.superblocks[nqn] = MirrorSuperblock(arrayUUID: s.arrays[array]!.uuid, events: 2)
      s.adds.append(device)
    }
  }

  func removeFailed(from array: String) async throws(NVMeCSIError) {
    let present = kernel.read { s in Set(s.disks.map(\.name)) }
    state.withLock { s in
      guard let members = s.arrays[array]?.members else { return }
      s.arrays[array]!.members = members.filter { $0.value != .faulty && present.contains($0.key) }
    }
  }

  func stop(_ array: String) async throws(NVMeCSIError) {
    state.withLock { s in
      if s.arrays.removeValue(forKey: array) != nil { s.stops += 1 }
    }
    kernel.state.withLock { s in s.disks.removeAll { $0.name == array } }
  }

  func grow(_ array: String) async throws(NVMeCSIError) {
    guard let members = state.withLock({ $0.arrays[array]?.members.keys }) else {
      throw .notFound("no md array \(array)")
    }
    kernel.state.withLock { s in
      let smallest = members.compactMap { m in s.disks.first { $0.name == m }?.sizeBytes }.min() ?? 0
      if let i = s.disks.firstIndex(where: { $0.name == array }) {
        s.disks[i].sizeBytes = smallest - ReplicaLayout.dataOffsetBytes
      }
    }
  }

  // MARK: helpers

  private func subsystem(of device: String) throws(NVMeCSIError) -> String {
    guard let nqn = kernel.read({ s in s.disks.first { $0.path == device }?.subsystemNQN }) else {
      throw .internalError("mdadm: cannot open \(device): No such file or directory")
    }
    return nqn
  }

  /// The array's disk appears in the fake kernel; its contents (a file system) are
  /// kept under a pseudo subsystem, like a volume's on its target.
  private func startArray(uuid: ObjectUUID, legs: [String], legCount: Int, size: UInt64) -> String {
    let name = kernel.state.withLock { s in
      let name = FakeKernel.lowestFree("md", in: s.disks.map(\.name))
      let nqn = Self.arrayNQN(uuid)
      if s.exports[nqn] == nil { s.exports[nqn] = .init(namespaceUUID: uuid.value, sizeBytes: size, fileSystem: nil) }
      s.disks.append(
        .init(name: name, subsystemNQN: nqn, namespaceUUID: uuid.value, sizeBytes: size, generation: s.nextGeneration))
      s.nextGeneration += 1
      return name
    }
    state.withLock { s in
      s.arrays[name] = Array(
        uuid: uuid, legCount: legCount,
        members: Dictionary(uniqueKeysWithValues: legs.map { (String($0.dropFirst("/dev/".count)), .inSync) }))
    }
    return name
  }
}
