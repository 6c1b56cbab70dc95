import Foundation
import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// The `Mounter` of a real Linux node: mountinfo for lookups, mount(2)/umount2(2)
/// directly, and blkid, mkfs and the grow tools through a `CommandRunner` with timeouts.
///
/// mount(2) and umount2(2) run on a thread of their own (mounting replays a journal,
/// unmounting flushes to the device), so a slow device never stalls the cooperative
/// pool; they have no timeout of their own. Lookups (mountinfo, stat, statvfs, the size
/// ioctl) are quick and run inline.
public struct SystemMounter: Mounter {
  public static let probeTimeout: Duration = .seconds(30)
  public static let formatTimeout: Duration = .seconds(5 * 60)
  public static let growTimeout: Duration = .seconds(10 * 60)
  public static let supportedFileSystems = ["ext4", "xfs"]

  public var runner: CommandRunner
  /// Where the mount table is read from; tests point it at a fixture.
  public var mountInfoPath: String

  /// mount(2) and umount(2) run on the runner's pool too: they can block for long
  /// (a journal replayed, a slow device flushed).
  public init(runner: CommandRunner, mountInfoPath: String = MountTable.defaultPath) {
    self.runner = runner
    self.mountInfoPath = mountInfoPath
  }

  // MARK: Lookups

  public func mount(at path: String) throws(NVMeCSIError) -> MountInfo? {
    entry(at: path, in: try table())?.info
  }

  /// Every mount of the file system on `device` — found by its name, by the path it
  /// resolves to, or by its device number — and every bind mount of the device node
  /// itself (a raw block volume published to a pod).
  public func mounts(ofDevice device: String) throws(NVMeCSIError) -> [MountInfo] {
    let identity = DeviceIdentity(device)
    return try table().entries.filter { identity.isSource(of: $0) || identity.isBoundNode(at: $0) }.map(\.info)
  }

  func table() throws(NVMeCSIError) -> MountTable { try MountTable.read(from: mountInfoPath) }

  /// The mount at `path`; when `path` is spelled through a symlink, at the path it resolves to.
  func entry(at path: String, in table: MountTable) -> MountTableEntry? {
    if let found = table.mount(at: path) { return found }
    guard let resolved = POSIX.resolved(path), resolved != POSIX.withoutTrailingSlash(path) else { return nil }
    return table.mount(at: resolved)
  }

  // MARK: File systems

  /// What is on the device: TYPE when there is a file system, else PTTYPE ("gpt",
  /// "dos") when it holds a partition table, else "unknown" for any other signature or
  /// for data without one; nil only when the device is proven blank.
  ///
  /// Fail closed: nil means formatting destroys nothing, so it needs two proofs. blkid
  /// (`-p`, low-level probing, so a partitioned disk is not called blank) must find no
  /// signature (exit code 2), and this process must then read the first and last MiB
  /// in full and find only zeros. blkid also answers 2 when it cannot read the device,
  /// so exit code 2 alone proves nothing: a read error here is an error, never "blank".
  ///
  /// A device that plainly holds ext4 or XFS is recognized in-process first
  /// (`PlainFileSystem`: a restage needs no blkid process); that never answers blank.
  public func fileSystem(on device: String) async throws(NVMeCSIError) -> String? {
    try Self.checkReadable(device)
    // Reads the device: on the pool, as a path in trouble can stall a read.
    if let plain = try await runner.pool.run({ PlainFileSystem.recognize(device: device) }) { return plain }
    let result = try await runner.run(
      "blkid", ["-p", "-o", "export", device], timeout: Self.probeTimeout, acceptedExitCodes: [0, 2, 8])
    switch result.exitCode {
    case 2:
      return try Self.zeroedEnds(of: device, size: try deviceSize(device)) ? nil : "unknown"
    case 8:
      throw .failedPrecondition(
        "\(quoted(device)) holds signatures of more than one kind (blkid: ambivalent result), so it is neither"
          + " blank nor one clear file system; the driver will not touch it: inspect it with wipefs")
    default:
      let signature = KeyValueList.dictionary(result.standardOutput, separator: "\n")
      return signature["TYPE"] ?? signature["PTTYPE"] ?? "unknown"
    }
  }

  /// How much of each end of a device must read back as zeros before it counts as blank.
  static let blankProbeBytes = 1 << 20

  /// Whether the first and last `blankProbeBytes` of the device read back, in full, as
  /// zeros. Any read failure or short read throws: an unreadable device is not blank.
  public static func zeroedEnds(of device: String, size: UInt64) throws(NVMeCSIError) -> Bool {
    guard size > 0 else {
      throw .unavailable("\(quoted(device)) reports size 0 (not identified yet?): not formatting it; retry")
    }
    let fd = try openDevice(device)
    defer { close(fd) }
    let length = Int(min(UInt64(blankProbeBytes), size))
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 4096)
    defer { buffer.deallocate() }
    for offset in Set([UInt64(0), size - UInt64(length)]).sorted() {
      var done = 0
      while done < length {
        let read = valueOrErrno { pread(fd, buffer.baseAddress! + done, length - done, off_t(offset) + off_t(done)) }
        switch read {
        case .success(0):
          throw .unavailable(
            "\(quoted(device)) ended early while proving it blank (at byte \(offset + UInt64(done)) of \(size)):"
              + " not formatting it; retry")
        case .success(let n): done += n
        case .failure(let error):
          throw NVMeCSIError(
            .unavailable,
            "cannot read \(quoted(device)) to prove it blank (\(error)): not formatting it, a read error is"
              + " never taken for a blank device; retry once the path is healthy",
            cause: error)
        }
      }
      if buffer.contains(where: { $0 != 0 }) { return false }
    }
    return true
  }

  public func format(_ device: String, as fsType: String) async throws(NVMeCSIError) {
    let tool: String
    let arguments: [String]
    switch fsType {
    case "ext4":
      tool = "mkfs.ext4"
      // No -F: mke2fs still refuses a device in use. (Run without a terminal it does not
      // stop for an existing signature: the blank probe before it is what guards data.)
      arguments = ["-q", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", device]
    case "xfs":
      tool = "mkfs.xfs"
      // No -f: mkfs.xfs refuses a device that holds any signature.
      arguments = ["-q", "-K", device]
    default:
      throw Self.unsupported(fsType)
    }
    try Self.checkReadable(device)
    _ = try await runner.run(tool, arguments, timeout: Self.formatTimeout)
  }

  public func growFileSystem(device: String, mountedAt mountPoint: String, fsType: String) async throws(NVMeCSIError) {
    switch fsType {
    case "ext4":
      try Self.checkReadable(device)
      _ = try await runner.run("resize2fs", [device], timeout: Self.growTimeout)
    case "xfs":
      _ = try await runner.run("xfs_growfs", ["-d", mountPoint], timeout: Self.growTimeout)
    default:
      throw Self.unsupported(fsType)
    }
  }

  /// A file system type mount(2) may be given: lowercase letters and digits.
  static func isPlainName(_ fsType: String) -> Bool {
    !fsType.isEmpty
      && fsType.utf8.allSatisfy {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
      }
  }

  static func unsupported(_ fsType: String) -> NVMeCSIError {
    .invalidArgument(
      "file system type \(quoted(fsType)) is not supported: use one of \(supportedFileSystems.joined(separator: ", "))")
  }

  /// A missing device is `notFound`; one this process cannot open is `internalError`.
  /// Checked before blkid, whose "nothing found" exit code also covers "cannot open".
  static func checkReadable(_ device: String) throws(NVMeCSIError) {
    close(try openDevice(device))
  }

  /// The device opened read-only; a missing one is `notFound`.
  static func openDevice(_ device: String) throws(NVMeCSIError) -> Int32 {
    switch valueOrErrno({ open(device, O_RDONLY | O_CLOEXEC) }) {
    case .success(let fd): return fd
    case .failure(.noEntry): throw .notFound("device \(quoted(device)) does not exist")
    case .failure(let error): throw POSIX.internalError("cannot open device \(quoted(device))", error)
    }
  }

  // MARK: Mounting

  public func mountFileSystem(
    _ device: String, at target: String, fsType: String, options: [String], readonly: Bool
  ) async throws(NVMeCSIError) {
    let target = POSIX.withoutTrailingSlash(target)
    let parsed = try MountOptions.parse(options, readonly: readonly)
    guard Self.isPlainName(fsType) else { throw Self.unsupported(fsType) }

    if let existing = entry(at: target, in: try table()) {
      guard existing.root == "/", DeviceIdentity(device).isSource(of: existing) else {
        throw .failedPrecondition(
          "\(quoted(target)) already has \(Self.describe(existing)) mounted, not \(quoted(device))")
      }
      guard existing.readonly == parsed.readonly else {
        throw .alreadyExists(
          "\(quoted(target)) already has \(quoted(device)) mounted \(Self.access(existing.readonly)), not"
            + " \(Self.access(parsed.readonly)); unmount it first to change that")
      }
      return
    }

    try POSIX.makeDirectories(target, mode: 0o750)
    let mounted = try await runner.pool.run {
      valueOrErrno {
        if let data = parsed.dataString {
          data.withCString { Glibc.mount(device, target, fsType, parsed.flags, $0) }
        } else {
          Glibc.mount(device, target, fsType, parsed.flags, nil)
        }
      }
    }
    if case .failure(let error) = mounted {
      throw Self.mountFailure(error, device: device, target: target, fsType: fsType, data: parsed.dataString)
    }
  }

  static func mountFailure(_ error: Errno, device: String, target: String, fsType: String, data: String?)
    -> NVMeCSIError
  {
    let what = "cannot mount \(quoted(device)) (\(fsType)) at \(quoted(target)): \(error)"
    let options = data.map { " or one of the options \(quoted($0)) is not a \(fsType) option" } ?? ""
    var failure: NVMeCSIError =
      switch error.code {
      case EBUSY:
        .failedPrecondition(
          "\(what): the device is in use — mounted elsewhere with other options, or held open exclusively")
      case ENOENT: .internalError("\(what): the device or the target directory vanished; retry")
      case EINVAL: .internalError("\(what): the device holds no valid \(fsType) file system\(options); see dmesg")
      case ENODEV: .failedPrecondition("\(what): the kernel does not support \(fsType)")
      case EROFS, EACCES: .failedPrecondition("\(what): the device is read-only; mount it read-only")
      case EPERM: .failedPrecondition("\(what): \(needsPrivilege)")
      case ENOTBLK: .invalidArgument("\(what): not a block device")
      default: .internalError(what)
      }
    failure.cause = error
    return failure
  }

  static let needsPrivilege = "mounting needs CAP_SYS_ADMIN; run the node plugin privileged"

  /// Bind-mounts `source` at `target`. A directory goes onto a directory, a block device
  /// or a regular file onto an empty regular file; the target (and its parents, mode
  /// 0750) is created when missing. Read-only binds are made with a second, remounting
  /// call that keeps the bind's other flags. Idempotent: a target that already shows
  /// `source` (the same inode, or for a device node the same device number) is success
  /// when the access mode matches and `alreadyExists` when it does not.
  public func bindMount(_ source: String, at target: String, readonly: Bool) async throws(NVMeCSIError) {
    let target = POSIX.withoutTrailingSlash(target)
    let sourceStatus: stat
    switch POSIX.status(source) {
    case .success(let st): sourceStatus = st
    case .failure(.noEntry):
      throw .failedPrecondition("cannot bind-mount \(quoted(source)): it does not exist")
    case .failure(let error):
      throw POSIX.internalError("cannot stat \(quoted(source))", error)
    }
    let sourceIsDirectory = POSIX.isDirectory(sourceStatus)
    guard sourceIsDirectory || POSIX.isBlockDevice(sourceStatus) || POSIX.isRegularFile(sourceStatus) else {
      throw .invalidArgument(
        "cannot bind-mount \(quoted(source)): it is neither a directory, a block device nor a file")
    }

    if let existing = entry(at: target, in: try table()) {
      guard Self.shows(target, sameAs: sourceStatus) else {
        throw .failedPrecondition(
          "\(quoted(target)) already has \(Self.describe(existing)) mounted, not a bind of \(quoted(source))")
      }
      guard existing.readonly == readonly else {
        throw .alreadyExists(
          "\(quoted(target)) already holds a bind of \(quoted(source)) mounted \(Self.access(existing.readonly)),"
            + " not \(Self.access(readonly)); unmount it first to change that")
      }
      return
    }

    if sourceIsDirectory {
      try POSIX.makeDirectories(target, mode: 0o750)
    } else {
      try Self.makeEmptyFile(target)
    }
    let bound = try await runner.pool.run { valueOrErrno { Glibc.mount(source, target, nil, UInt(MS_BIND), nil) } }
    if case .failure(let error) = bound {
      let what = "cannot bind-mount \(quoted(source)) at \(quoted(target)): \(error)"
      if error.code == EPERM {
        throw NVMeCSIError(.failedPrecondition, "\(what): \(Self.needsPrivilege)", cause: error)
      }
      throw NVMeCSIError(.internalError, what, cause: error)
    }
    guard readonly else { return }
    do throws(NVMeCSIError) {
      try await makeReadOnly(bindOf: source, at: target)
    } catch {
      // Best effort: the error says the bind was undone; if this fails too, the
      // read-write bind stays and the caller's retry finds it and answers alreadyExists.
      _ = try? await runner.pool.runToEnd { umount2(target, 0) }
      throw error
    }
  }

  /// Remounts a fresh bind read-only. MS_REMOUNT|MS_BIND replaces every per-mount flag,
  /// so the ones the bind inherited (nosuid, nodev, noatime, …) are passed again.
  private func makeReadOnly(bindOf source: String, at target: String) async throws(NVMeCSIError) {
    guard let bind = entry(at: target, in: try table()) else {
      throw .internalError("the bind of \(quoted(source)) at \(quoted(target)) vanished before it was made read-only")
    }
    let flags = UInt(MS_REMOUNT | MS_BIND | MS_RDONLY) | MountOptions.flags(ofMountOptions: bind.mountOptions)
    let remounted = try await runner.pool.run { valueOrErrno { Glibc.mount(source, target, nil, flags, nil) } }
    if case .failure(let error) = remounted {
      throw POSIX.internalError(
        "cannot make the bind of \(quoted(source)) at \(quoted(target)) read-only (the bind was undone)", error)
    }
  }

  /// Whether the object visible at `target` is the one `source` names: the same inode,
  /// or for block devices the same device number (a node in another /dev).
  static func shows(_ target: String, sameAs source: stat) -> Bool {
    guard case .success(let shown) = POSIX.status(target) else { return false }
    if shown.st_dev == source.st_dev && shown.st_ino == source.st_ino { return true }
    return POSIX.isBlockDevice(shown) && POSIX.isBlockDevice(source) && shown.st_rdev == source.st_rdev
  }

  static func makeEmptyFile(_ path: String) throws(NVMeCSIError) {
    switch POSIX.status(path) {
    case .success(let st):
      guard POSIX.isRegularFile(st) else {
        throw .failedPrecondition(
          "\(quoted(path)) exists and is not a regular file, so a device cannot be bound onto it")
      }
      guard st.st_size == 0 else {
        throw .failedPrecondition(
          "\(quoted(path)) is a file with data in it; a device is only bound onto an empty file")
      }
    case .failure(.noEntry):
      let parent = (path as NSString).deletingLastPathComponent
      if !parent.isEmpty { try POSIX.makeDirectories(parent, mode: 0o750) }
      switch valueOrErrno({ open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o640) }) {
      case .success(let fd): close(fd)
      case .failure(.exists): break  // made meanwhile: as good
      case .failure(let error): throw POSIX.internalError("cannot create \(quoted(path))", error)
      }
    case .failure(.notDirectory):
      throw .failedPrecondition("cannot create \(quoted(path)): part of its path is not a directory")
    case .failure(let error):
      throw POSIX.internalError("cannot stat \(quoted(path))", error)
    }
  }

  /// Unmounts `target` until nothing is mounted there (mounts may be stacked); a path
  /// that is not a mount point, or does not exist, is success.
  public func unmount(_ target: String) async throws(NVMeCSIError) {
    let target = POSIX.withoutTrailingSlash(target)
    for _ in 0..<16 {
      guard let mounted = entry(at: target, in: try table()) else { return }
      let path = mounted.mountPoint
      let unmounted = try await runner.pool.runToEnd { valueOrErrno { umount2(path, 0) } }
      guard case .failure(let error) = unmounted else { continue }
      switch error.code {
      case EINVAL, ENOENT:
        return  // unmounted meanwhile
      case EBUSY:
        throw .failedPrecondition(
          "cannot unmount \(quoted(target)): it is still in use (open files, a process's working directory,"
            + " or a mount below it); stop what uses it and retry")
      case EPERM:
        throw .failedPrecondition(
          "cannot unmount \(quoted(target)): unmounting needs CAP_SYS_ADMIN; run the node plugin privileged")
      default:
        throw POSIX.internalError("cannot unmount \(quoted(target))", error)
      }
    }
    throw .internalError("\(quoted(target)) still has mounts after 16 unmounts; something keeps mounting there")
  }

  // MARK: Sizes

  public func usage(of path: String) throws(NVMeCSIError) -> FileSystemUsage {
    var statistics = statvfs()
    switch valueOrErrno({ statvfs(path, &statistics) }) {
    case .success: break
    case .failure(.noEntry): throw .notFound("\(quoted(path)) does not exist")
    case .failure(let error): throw POSIX.internalError("cannot get file system statistics of \(quoted(path))", error)
    }
    let unit = UInt64(statistics.f_frsize)
    let total = UInt64(statistics.f_blocks) * unit
    let free = UInt64(statistics.f_bfree) * unit
    let totalInodes = UInt64(statistics.f_files)
    let freeInodes = UInt64(statistics.f_ffree)
    return FileSystemUsage(
      totalBytes: total, availableBytes: UInt64(statistics.f_bavail) * unit,
      usedBytes: total >= free ? total - free : 0,
      totalInodes: totalInodes, freeInodes: freeInodes,
      usedInodes: totalInodes >= freeInodes ? totalInodes - freeInodes : 0)
  }

  /// The size of a block device (BLKGETSIZE64), or of a regular file (its length).
  public func deviceSize(_ device: String) throws(NVMeCSIError) -> UInt64 {
    let fd = try Self.openDevice(device)
    defer { close(fd) }
    return try POSIX.size(of: fd, device)
  }

  // MARK: Messages

  static func describe(_ entry: MountTableEntry) -> String {
    let source = entry.source.isEmpty ? entry.fsType : entry.source
    let subtree = entry.root == "/" ? "" : " (its \(quoted(entry.root)))"
    return "\(quoted(source))\(subtree) (\(entry.fsType), \(access(entry.readonly)))"
  }

  static func access(_ readonly: Bool) -> String { readonly ? "read-only" : "read-write" }
}

/// A device as named by a caller, and the ways a mountinfo line can refer to it.
struct DeviceIdentity {
  let path: String
  let resolved: String?
  /// The block device's number (`st_rdev`), nil when `path` is not a block device.
  let number: (major: UInt32, minor: UInt32)?
  /// The device number of the file system holding the device node (devtmpfs).
  let nodeFileSystem: (major: UInt32, minor: UInt32)?

  init(_ path: String) {
    self.path = path
    resolved = POSIX.resolved(path)
    if case .success(let st) = POSIX.status(path), POSIX.isBlockDevice(st) {
      number = (POSIX.major(st.st_rdev), POSIX.minor(st.st_rdev))
      nodeFileSystem = (POSIX.major(st.st_dev), POSIX.minor(st.st_dev))
    } else {
      number = nil
      nodeFileSystem = nil
    }
  }

  /// Whether `entry` mounts the file system on this device.
  func isSource(of entry: MountTableEntry) -> Bool {
    if entry.source == path { return true }
    if let number, entry.major == number.major, entry.minor == number.minor { return true }
    guard let resolved, entry.source.hasPrefix("/") else { return false }
    return POSIX.resolved(entry.source) == resolved
  }

  /// Whether `entry` is a bind mount of this device's node onto a file (raw block
  /// publishing): it mounts a subtree of the file system holding the node, and what is
  /// visible there is this block device.
  func isBoundNode(at entry: MountTableEntry) -> Bool {
    guard let number, let nodeFileSystem, entry.root != "/",
      entry.major == nodeFileSystem.major, entry.minor == nodeFileSystem.minor,
      case .success(let st) = POSIX.status(entry.mountPoint), POSIX.isBlockDevice(st)
    else { return false }
    return POSIX.major(st.st_rdev) == number.major && POSIX.minor(st.st_rdev) == number.minor
  }
}
