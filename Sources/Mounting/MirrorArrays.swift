import NVMeCSICore

/// The md superblock on a leg, as `mdadm --examine` reads it.
public struct MirrorSuperblock: Hashable, Sendable {
  /// The array's UUID (mdadm writes it as four groups of 8 hex digits; this is the same 16 bytes).
  public var arrayUUID: ObjectUUID
  /// md's event count: the leg with the highest is the freshest.
  public var events: UInt64

  public init(arrayUUID: ObjectUUID, events: UInt64) {
    self.arrayUUID = arrayUUID
    self.events = events
  }
}

/// What md says of one member of an array (`/sys/block/mdX/md/dev-*/state`).
public struct MirrorMember: Hashable, Sendable {
  public enum State: Hashable, Sendable {
    /// Holds current data.
    case inSync
    /// Being resynced (a re-added or added leg).
    case rebuilding
    /// md stopped using it after an I/O error.
    case faulty
    /// Anything else md reports, verbatim.
    case other(String)
  }

  /// The leg's kernel name, e.g. "nvme1n1".
  public var device: String
  public var state: State

  public init(device: String, state: State) {
    self.device = device
    self.state = state
  }
}

/// An assembled array as the kernel shows it now.
public struct MirrorStatus: Hashable, Sendable {
  /// Kernel name, e.g. "md127".
  public var device: String
  public var path: String { "/dev/" + device }
  /// The array's UUID (`md/uuid`): which volume's it is.
  public var arrayUUID: ObjectUUID
  /// Started (an assembled array that md would not start is inactive).
  public var isRunning: Bool
  /// How many legs the array has room for (`raid_disks`).
  public var legCount: Int
  public var members: [MirrorMember]
  /// Legs missing or faulty (`md/degraded`).
  public var degraded: Int
  /// `md/sync_action`: "idle", "resync", "recover", "check", …
  public var syncAction: String
  /// Sectors done and total while a sync runs (`md/sync_completed`), nil when idle.
  public var syncProgress: (done: UInt64, total: UInt64)?
  public var sizeBytes: UInt64

  public init(
    device: String, arrayUUID: ObjectUUID, isRunning: Bool, legCount: Int, members: [MirrorMember], degraded: Int,
    syncAction: String, syncProgress: (done: UInt64, total: UInt64)?, sizeBytes: UInt64
  ) {
    self.device = device
    self.arrayUUID = arrayUUID
    self.isRunning = isRunning
    self.legCount = legCount
    self.members = members
    self.degraded = degraded
    self.syncAction = syncAction
    self.syncProgress = syncProgress
    self.sizeBytes = sizeBytes
  }

  public static func == (a: Self, b: Self) -> Bool {
    a.device == b.device && a.arrayUUID == b.arrayUUID && a.isRunning == b.isRunning && a.legCount == b.legCount
      && a.members == b.members && a.degraded == b.degraded
      && a.syncAction == b.syncAction && a.syncProgress?.done == b.syncProgress?.done
      && a.syncProgress?.total == b.syncProgress?.total && a.sizeBytes == b.sizeBytes
  }

  public func hash(into hasher: inout Hasher) {
    hasher.combine(device)
    hasher.combine(members)
  }
}

/// Kernel md RAID1 arrays over the legs of replicated volumes (docs/architecture.md,
/// "Replicated volumes"). Legs are named by their kernel names ("nvme1n1"), which the
/// caller found by identity (subsystem NQN + namespace UUID) just before.
///
/// Contract: nothing here ever assembles an array from fewer legs than md itself deems
/// enough (no `--run`, no `--force`, no scan): a stale leg can never win over a fresher
/// one. Every call is bounded in time. `create` and `add` write superblocks, so callers
/// pass only legs a probe proved blank (create), a restored leg named as the new
/// array's seed (create from a seed: the only copy of that data, so it starts alone), or
/// legs that carry this array's superblock or none at all (add). Calls for different
/// arrays may run concurrently.
public protocol MirrorArrays: Sendable {
  /// The md array that holds `leg` as a member (from sysfs), nil when none does.
  func array(holding leg: String) throws(NVMeCSIError) -> String?
  /// The md superblock on `device` (a /dev path), nil when mdadm finds none.
  func superblock(on device: String) async throws(NVMeCSIError) -> MirrorSuperblock?
  /// Creates a RAID1 array with this UUID over `legs` (/dev paths, all blank): metadata
  /// 1.2, an internal write-intent bitmap of `bitmapChunkBytes` chunks, data starting at
  /// `dataOffsetBytes`, and no initial resync (blank legs already agree). Answers the
  /// array's kernel name.
  func create(uuid: ObjectUUID, legs: [String], dataOffsetBytes: UInt64, bitmapChunkBytes: UInt64)
    async throws(NVMeCSIError) -> String
  /// Creates the array with this UUID from `seed` alone (/dev path of a leg restored
  /// from another array's leg: that array's superblock, then data at `dataOffsetBytes`),
  /// with `legCount` slots whose others stay empty until `add`. The seed's data is
  /// kept: only its superblock and bitmap are written. Answers the array's kernel name.
  func create(uuid: ObjectUUID, seed: String, legCount: Int, dataOffsetBytes: UInt64, bitmapChunkBytes: UInt64)
    async throws(NVMeCSIError) -> String
  /// Assembles the array of this UUID from exactly `legs` (/dev paths). md starts it only
  /// when the freshest superblocks among them say they are enough; otherwise this throws
  /// `unavailable` and leaves nothing assembled. Answers the array's kernel name.
  func assemble(uuid: ObjectUUID, legs: [String]) async throws(NVMeCSIError) -> String
  /// Assembles the array from exactly `legs` and starts it although members it last had
  /// are missing (`--run`, never `--force`: among `legs` the freshest superblocks still
  /// win). Only for members that are gone for good: the caller has proven that every
  /// current leg is among `legs` or is a blank replacement.
  func assembleWithoutMissing(uuid: ObjectUUID, legs: [String]) async throws(NVMeCSIError) -> String
  /// The array's state now; `notFound` when the kernel has no such array.
  func status(of array: String) throws(NVMeCSIError) -> MirrorStatus
  /// Puts a leg (/dev path) back: a former member catches up through the bitmap, a blank
  /// one is copied in full. A faulty member of the same device is removed first.
  func add(_ leg: String, to array: String) async throws(NVMeCSIError)
  /// Takes out members that md marked faulty or whose device is gone.
  func removeFailed(from array: String) async throws(NVMeCSIError)
  /// Stops the array (its legs stay untouched); an array that is not there is success.
  func stop(_ array: String) async throws(NVMeCSIError)
  /// Grows the array to the size of its (grown) legs.
  func grow(_ array: String) async throws(NVMeCSIError)
}
