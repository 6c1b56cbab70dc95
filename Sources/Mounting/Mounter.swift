import NVMeCSICore

/// File-system and mount operations the node plugin needs.
///
/// Contract: every call is bounded in time (external tools run with a timeout and a
/// timeout is an error saying which tool hung), arguments are never built from
/// unvalidated input (callers pass validated absolute paths and a supported fs type),
/// and failures are `NVMeCSIError`s whose message keeps the tool's stderr.
/// Mutations are idempotent where noted. Calls for different paths may run concurrently.
public protocol Mounter: Sendable {
  /// The mount at exactly `path`, or nil when `path` is not a mount point.
  func mount(at path: String) throws(NVMeCSIError) -> MountInfo?
  /// Every mount whose source is `device` (e.g. "/dev/nvme0n1"), any mount point.
  func mounts(ofDevice device: String) throws(NVMeCSIError) -> [MountInfo]

  /// What `device` holds (a file system type, a partition table type, or "unknown"),
  /// nil only when a successful probe proved it blank. A probe that fails throws: it
  /// is never taken for a blank device.
  func fileSystem(on device: String) async throws(NVMeCSIError) -> String?
  /// Creates `fsType` ("ext4" or "xfs") on `device`. Callers check it is blank first.
  func format(_ device: String, as fsType: String) async throws(NVMeCSIError)
  /// Mounts a file system. Idempotent when `target` already holds `device`.
  func mountFileSystem(_ device: String, at target: String, fsType: String, options: [String], readonly: Bool)
    async throws(NVMeCSIError)
  /// Bind-mounts `source` (a directory, or a device node onto a file) at `target`.
  /// Idempotent when `target` already holds that bind.
  func bindMount(_ source: String, at target: String, readonly: Bool) async throws(NVMeCSIError)
  /// Unmounts `target`; a path that is not a mount point is success.
  func unmount(_ target: String) async throws(NVMeCSIError)
  /// Grows a mounted file system to fill its device (resize2fs, xfs_growfs).
  func growFileSystem(device: String, mountedAt mountPoint: String, fsType: String) async throws(NVMeCSIError)
  /// Bytes and inodes of the file system mounted at `path` (statvfs).
  func usage(of path: String) throws(NVMeCSIError) -> FileSystemUsage
  /// Size in bytes of a block device.
  func deviceSize(_ device: String) throws(NVMeCSIError) -> UInt64
}

/// One line of /proc/self/mountinfo, the parts we use.
public struct MountInfo: Hashable, Sendable {
  public var mountPoint: String
  /// The mount source ("/dev/nvme0n1"); for bind mounts of a directory, the device
  /// of the file system the directory lives on.
  public var source: String
  /// Path inside the source file system that is mounted ("/" for a whole file system).
  public var root: String
  public var fsType: String
  public var readonly: Bool

  public init(mountPoint: String, source: String, root: String, fsType: String, readonly: Bool) {
    self.mountPoint = mountPoint
    self.source = source
    self.root = root
    self.fsType = fsType
    self.readonly = readonly
  }
}

public struct FileSystemUsage: Hashable, Sendable {
  public var totalBytes: UInt64
  public var availableBytes: UInt64
  public var usedBytes: UInt64
  public var totalInodes: UInt64
  public var freeInodes: UInt64
  public var usedInodes: UInt64

  public init(
    totalBytes: UInt64, availableBytes: UInt64, usedBytes: UInt64, totalInodes: UInt64, freeInodes: UInt64,
    usedInodes: UInt64
  ) {
    self.totalBytes = totalBytes
    self.availableBytes = availableBytes
    self.usedBytes = usedBytes
    self.totalInodes = totalInodes
    self.freeInodes = freeInodes
    self.usedInodes = usedInodes
  }
}
