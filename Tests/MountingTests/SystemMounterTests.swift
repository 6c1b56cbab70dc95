import Foundation
import Mounting
import NVMeCSICore
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// `SystemMounter` against the real tools, on sparse regular files: this machine has no
/// block device to spare, so nothing here mounts anything.
@Suite("SystemMounter")
struct SystemMounterTests {
  let mounter = SystemMounter(runner: CommandRunner(pool: .forTests))

  /// Runs `body` with the path of a fresh sparse file of `size` bytes.
  @discardableResult
  func withImage<R>(size: UInt64 = 64 * MiB, _ body: (String, String) async throws -> R) async throws -> R {
    try await withTemporaryDirectory { directory throws in
      let image = directory + "/disk.img"
      try makeSparseFile(image, size: size)
      return try await body(image, directory)
    }
  }

  // MARK: blkid and mkfs

  @Test("A blank device holds no file system")
  func blank() async throws {
    try await withImage { image, _ throws in
      #expect(try await mounter.fileSystem(on: image) == nil)
    }
  }

  @Test("Formatting as ext4 leaves an ext4 file system")
  func formatExt4() async throws {
    try await withImage { image, _ throws in
      try await mounter.format(image, as: "ext4")
      #expect(try await mounter.fileSystem(on: image) == "ext4")
    }
  }

  // mkfs.xfs refuses file systems smaller than 300 MB.
  @Test("Formatting as xfs leaves an xfs file system")
  func formatXFS() async throws {
    try await withImage(size: 512 * MiB) { image, _ throws in
      try await mounter.format(image, as: "xfs")
      #expect(try await mounter.fileSystem(on: image) == "xfs")
    }
  }

  @Test("mkfs's own complaint reaches the caller")
  func mkfsFailure() async throws {
    try await withImage(size: 64 * MiB) { image, _ throws in
      await expectError(.internalError, mentioning: ["mkfs.xfs -q -K", "exit code", "larger than"]) {
        try await mounter.format(image, as: "xfs")
      }
    }
  }

  @Test("A device with a partition table is not blank")
  func partitionTable() async throws {
    try await withImage { image, _ throws in
      // One MBR partition (type 0x83, sectors 2048…6143) and the boot signature.
      var sector = [UInt8](repeating: 0, count: 512)
      sector.replaceSubrange(446..<462, with: [0x00, 0, 0, 0, 0x83, 0, 0, 0, 0x00, 0x08, 0, 0, 0x00, 0x10, 0, 0])
      sector[510] = 0x55
      sector[511] = 0xAA
      let handle = try #require(FileHandle(forWritingAtPath: image))
      try handle.write(contentsOf: sector)
      try handle.close()
      #expect(try await mounter.fileSystem(on: image) == "dos")
    }
  }

  /// A mounter whose `blkid` is a script that prints `output` and exits with `code`.
  func mounter(withBlkidExiting code: Int32, output: String = "", in directory: String) throws -> SystemMounter {
    let script = directory + "/blkid"
    try Data("#!/bin/sh\nprintf '\(output)'\nexit \(code)\n".utf8).write(to: URL(fileURLWithPath: script))
    #expect(chmod(script, 0o755) == 0)
    return SystemMounter(runner: CommandRunner(pool: .forTests, searchDirectories: [directory]))
  }

  @Test("blkid finding nothing on zeros is blank; on data, or on an unreadable device, it is not")
  func blkidFindsNothing() async throws {
    try await withImage(size: 8 * MiB) { image, directory throws in
      let probe = try mounter(withBlkidExiting: 2, in: directory)
      #expect(try await probe.fileSystem(on: image) == nil)

      // Data in the last MiB, no signature anywhere: not blank.
      let handle = try #require(FileHandle(forWritingAtPath: image))
      try handle.seek(toOffset: 8 * MiB - 10)
      try handle.write(contentsOf: Data([1]))
      try handle.close()
      #expect(try await probe.fileSystem(on: image) == "unknown")

    }
  }

  @Test("A device whose end cannot be read is never blank")
  func shortDevice() async throws {
    try await withTemporaryDirectory { directory throws in
      let image = directory + "/short.img"
      try makeSparseFile(image, size: 2 * MiB)
      // Claim more than is there, as a device that fails at its end would read.
      expectError(.unavailable, mentioning: ["ended early", "not formatting"]) {
        try SystemMounter.zeroedEnds(of: image, size: 4 * MiB)
      }
      expectError(.unavailable, mentioning: ["size 0"]) { try SystemMounter.zeroedEnds(of: image, size: 0) }
      // A read that fails (EISDIR here; EIO on a dying path) is an error, never blank.
      expectError(.unavailable, mentioning: ["cannot read", "never taken for a blank device"]) {
        try SystemMounter.zeroedEnds(of: directory, size: 4 * MiB)
      }
      #expect(try SystemMounter.zeroedEnds(of: image, size: 2 * MiB))
    }
  }

  @Test("blkid's other answers: a type, a partition table, ambivalence, failure")
  func blkidOutcomes() async throws {
    try await withImage(size: 4 * MiB) { image, directory throws in
      #expect(
        try await mounter(withBlkidExiting: 0, output: "TYPE=xfs\\n", in: directory).fileSystem(on: image) == "xfs")
      #expect(
        try await mounter(withBlkidExiting: 0, output: "PTTYPE=gpt\\n", in: directory).fileSystem(on: image) == "gpt")
      #expect(try await mounter(withBlkidExiting: 0, output: "", in: directory).fileSystem(on: image) == "unknown")
      await expectError(.failedPrecondition, mentioning: ["ambivalent"]) {
        try await mounter(withBlkidExiting: 8, in: directory).fileSystem(on: image)
      }
      // Usage or system errors (exit 4) are errors, not "blank".
      let failed = await expectError(.internalError) {
        try await mounter(withBlkidExiting: 4, in: directory).fileSystem(on: image)
      }
      #expect(failed?.message.contains("blkid") == true)
    }
  }

  @Test("mkfs.xfs is never forced: it refuses a device that holds a file system")
  func mkfsNotForced() async throws {
    try await withImage(size: 512 * MiB) { image, _ throws in
      try await mounter.format(image, as: "xfs")
      await expectError(.internalError, mentioning: ["existing filesystem"]) {
        try await mounter.format(image, as: "xfs")
      }
      #expect(try await mounter.fileSystem(on: image) == "xfs")
    }
  }

  @Test("Probing a missing device is not found rather than blank")
  func probeMissing() async throws {
    await expectError(.notFound, mentioning: ["/nonexistent/disk.img"]) {
      try await mounter.fileSystem(on: "/nonexistent/disk.img")
    }
  }

  @Test(
    "An unsupported file system type is rejected before any tool runs",
    arguments: ["btrfs", "", "ext3", "EXT4", "ext4 ", "xfs;reboot"])
  func unsupportedFormat(_ fsType: String) async throws {
    try await withImage { image, _ throws in
      await expectError(.invalidArgument, mentioning: [quoted(fsType), "ext4, xfs"]) {
        try await mounter.format(image, as: fsType)
      }
      #expect(try await mounter.fileSystem(on: image) == nil)
    }
  }

  @Test("Formatting a missing device is not found")
  func formatMissing() async {
    await expectError(.notFound, mentioning: ["/nonexistent/disk.img"]) {
      try await mounter.format("/nonexistent/disk.img", as: "ext4")
    }
  }

  @Test("A missing mkfs names the package to install")
  func missingMkfs() async throws {
    try await withImage { image, directory throws in
      let mounter = SystemMounter(runner: CommandRunner(pool: .forTests, searchDirectories: [directory]))
      await expectError(.failedPrecondition, mentioning: ["mkfs.ext4", "e2fsprogs"]) {
        try await mounter.format(image, as: "ext4")
      }
    }
  }

  // MARK: Growing

  @Test("resize2fs grows an ext4 file system to fill its grown device")
  func growExt4() async throws {
    try await withImage { image, _ throws in
      try await mounter.format(image, as: "ext4")
      #expect(try Self.ext4Size(image) == 64 * MiB)
      #expect(truncate(image, off_t(128 * MiB)) == 0)
      try await mounter.growFileSystem(device: image, mountedAt: "/unused", fsType: "ext4")
      #expect(try Self.ext4Size(image) == 128 * MiB)
    }
  }

  @Test("xfs_growfs of a path that is no xfs mount fails with its own message")
  func growXFSUnmounted() async throws {
    try await withTemporaryDirectory { directory throws in
      await expectError(.internalError, mentioning: ["xfs_growfs -d \(directory)", "exit code"]) {
        try await mounter.growFileSystem(device: "/dev/null", mountedAt: directory, fsType: "xfs")
      }
    }
  }

  @Test("Growing an unsupported file system type is rejected", arguments: ["btrfs", ""])
  func growUnsupported(_ fsType: String) async {
    await expectError(.invalidArgument, mentioning: [quoted(fsType)]) {
      try await mounter.growFileSystem(device: "/dev/null", mountedAt: "/tmp", fsType: fsType)
    }
  }

  /// Blocks × block size from the ext4 superblock (at byte 1024).
  static func ext4Size(_ path: String) throws -> UInt64 {
    let handle = try #require(FileHandle(forReadingAtPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: 1024)
    let superblock = try #require(try handle.read(upToCount: 1024))
    func le32(_ offset: Int) -> UInt64 {
      (0..<4).reduce(UInt64(0)) { $0 | UInt64(superblock[offset + $1]) << (8 * UInt64($1)) }
    }
    #expect(superblock[0x38] == 0x53 && superblock[0x39] == 0xEF, "no ext4 magic")
    let blocks = le32(0x04) | le32(0x150) << 32
    return blocks * (1024 << le32(0x18))
  }

  // MARK: Sizes

  @Test("Usage of a mounted file system is consistent")
  func usage() throws {
    let usage = try mounter.usage(of: "/tmp")
    #expect(usage.totalBytes > 0)
    #expect(usage.availableBytes <= usage.totalBytes)
    #expect(usage.usedBytes <= usage.totalBytes)
    #expect(usage.freeInodes <= usage.totalInodes)
    #expect(usage.usedInodes == usage.totalInodes - usage.freeInodes)
  }

  @Test("Usage of a missing path is not found")
  func usageMissing() async {
    await expectError(.notFound, mentioning: ["/nonexistent/volume"]) { try mounter.usage(of: "/nonexistent/volume") }
  }

  @Test("The size of a regular file is its length", arguments: [0, 4096, 64 * MiB, 3 << 40] as [UInt64])
  func deviceSize(_ size: UInt64) async throws {
    try await withImage(size: size) { image, _ throws in
      #expect(try mounter.deviceSize(image) == size)
    }
  }

  @Test("The size of a missing device is not found; of a directory, invalid")
  func deviceSizeErrors() async throws {
    await expectError(.notFound, mentioning: ["/nonexistent/disk.img"]) {
      try mounter.deviceSize("/nonexistent/disk.img")
    }
    await expectError(.invalidArgument, mentioning: ["\"/tmp\"", "neither a block device nor a regular file"]) {
      try mounter.deviceSize("/tmp")
    }
  }

  // MARK: Mount table

  @Test("The root directory is a mount point; a fresh directory is not")
  func mountAt() async throws {
    let root = try #require(try mounter.mount(at: "/"))
    #expect(root.mountPoint == "/")
    #expect(try mounter.mounts(ofDevice: root.source).contains(root))
    try await withTemporaryDirectory { directory throws in
      #expect(try mounter.mount(at: directory) == nil)
      #expect(try mounter.mount(at: directory + "/") == nil)
    }
  }

  @Test("Mounts of a device are found through symlinks to it, and by its exact name")
  func mountsThroughSymlinks() async throws {
    try await withTemporaryDirectory { directory throws in
      let device = directory + "/nvme7n1"
      let link = directory + "/by-id-link"
      try makeSparseFile(device, size: 0)
      #expect(symlink(device, link) == 0)
      let table = directory + "/mountinfo"
      try writeFile(
        table,
        """
        1 0 8:1 / / rw - ext4 /dev/sda1 rw
        2 1 259:7 / /stage rw - ext4 \(link) rw
        3 1 259:7 /sub /pod ro - ext4 \(link) rw
        4 1 259:9 / /other rw - ext4 \(directory)/nvme8n1 rw
        5 1 259:7 / /named rw - ext4 /not/a/real/path rw

        """)
      let mounter = SystemMounter(runner: CommandRunner(pool: .forTests), mountInfoPath: table)
      #expect(try mounter.mounts(ofDevice: device).map(\.mountPoint) == ["/stage", "/pod"])
      #expect(try mounter.mounts(ofDevice: link).map(\.mountPoint) == ["/stage", "/pod"])
      #expect(try mounter.mounts(ofDevice: "/not/a/real/path").map(\.mountPoint) == ["/named"])
      #expect(try mounter.mounts(ofDevice: directory + "/nvme9n1").isEmpty)
      #expect(
        try mounter.mount(at: "/pod/")
          == MountInfo(mountPoint: "/pod", source: link, root: "/sub", fsType: "ext4", readonly: true))
    }
  }

  @Test("A mount point spelled through a symlink is found")
  func mountPointThroughSymlink() async throws {
    try await withTemporaryDirectory { directory throws in
      try FileManager.default.createDirectory(atPath: directory + "/real", withIntermediateDirectories: false)
      #expect(symlink(directory + "/real", directory + "/alias") == 0)
      let table = directory + "/mountinfo"
      try writeFile(table, "1 0 8:1 / \(directory)/real rw - ext4 /dev/sda1 rw\n")
      let mounter = SystemMounter(runner: CommandRunner(pool: .forTests), mountInfoPath: table)
      #expect(try mounter.mount(at: directory + "/alias")?.mountPoint == directory + "/real")
    }
  }

  // MARK: A real block device, read only (the disk this machine's root is on, if any)

  /// The block device the root file system is mounted from, with its "major:minor".
  static let rootDevice: (path: String, number: String)? = {
    guard let root = try? MountTable.read().mount(at: "/"), root.source.hasPrefix("/dev/") else { return nil }
    var st = stat()
    guard stat(root.source, &st) == 0, st.st_mode & S_IFMT == S_IFBLK else { return nil }
    return (root.source, "\(root.major):\(root.minor)")
  }()

  @Test(
    "Mounts of a block device are found by name, through a symlink and by device number",
    .enabled(if: rootDevice != nil, "the root file system is not on a block device"))
  func mountsOfBlockDevice() async throws {
    let device = try #require(Self.rootDevice)
    #expect(try mounter.mounts(ofDevice: device.path).contains { $0.mountPoint == "/" })
    try await withTemporaryDirectory { directory throws in
      #expect(symlink(device.path, directory + "/by-id") == 0)
      #expect(try mounter.mounts(ofDevice: directory + "/by-id").contains { $0.mountPoint == "/" })
      // Another name for the same device number (a node made elsewhere, a renamed device).
      let table = directory + "/mountinfo"
      try writeFile(
        table, "1 0 \(device.number) / /stage rw - ext4 /dev/some-other-name rw\n2 1 1:3 / /other rw - ext4 /dev/x rw\n"
      )
      let fixtureMounter = SystemMounter(runner: CommandRunner(pool: .forTests), mountInfoPath: table)
      #expect(try fixtureMounter.mounts(ofDevice: device.path).map(\.mountPoint) == ["/stage"])
      // …which also makes mounting it there again a no-op.
      try await fixtureMounter.mountFileSystem(device.path, at: "/stage", fsType: "ext4", options: [], readonly: false)
    }
  }

  /// Block devices this process may open, with the size the kernel reports in sysfs.
  static let blockDevices: [(path: String, size: UInt64)] = {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
    return names.sorted().compactMap { name in
      var st = stat()
      let fd = open("/dev/" + name, O_RDONLY | O_CLOEXEC)
      if fd >= 0 { close(fd) }
      guard fd >= 0, stat("/dev/" + name, &st) == 0, st.st_mode & S_IFMT == S_IFBLK,
        let text = try? String(contentsOfFile: "/sys/block/\(name)/size", encoding: .utf8),
        let sectors = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines))
      else { return nil }
      return ("/dev/" + name, sectors * 512)
    }
  }()

  @Test("The size of a block device is what the kernel reports", .enabled(if: !blockDevices.isEmpty, "no block device"))
  func blockDeviceSize() throws {
    for device in Self.blockDevices {
      #expect(try mounter.deviceSize(device.path) == device.size, "\(device.path)")
    }
  }

  // MARK: Mounting (only what fails or succeeds before mount(2))

  @Test("Unmounting a path that is not a mount point, or does not exist, is success")
  func unmountNothing() async throws {
    try await withTemporaryDirectory { directory throws in
      try await mounter.unmount(directory)
      try await mounter.unmount(directory + "/missing/")
      #expect(FileManager.default.fileExists(atPath: directory))
    }
  }

  @Test(
    "A mount option outside the allowed characters is rejected before anything happens",
    arguments: ["a b", "x;y", "logdev=/dev/sdb", "$(reboot)", "", "nouuid\n", "context=\"x\"", "bind", "remount"])
  func badOption(_ option: String) async throws {
    try await withImage { image, directory throws in
      let target = directory + "/target"
      await expectError(.invalidArgument, mentioning: ["mount option", "not allowed"]) {
        try await mounter.mountFileSystem(
          image, at: target, fsType: "ext4", options: ["noatime", option], readonly: false)
      }
      #expect(!FileManager.default.fileExists(atPath: target))
    }
  }

  @Test("A file system type that is not a plain name is rejected", arguments: ["", "ext4,ro", "../xfs", "XFS"])
  func badFSType(_ fsType: String) async throws {
    try await withImage { image, directory throws in
      await expectError(.invalidArgument, mentioning: [quoted(fsType)]) {
        try await mounter.mountFileSystem(
          image, at: directory + "/target", fsType: fsType, options: [], readonly: false)
      }
    }
  }

  @Test("Mounting onto a mount point that holds another device says what is there")
  func mountOntoOther() async throws {
    let root = try #require(try mounter.mount(at: "/"))
    try await withImage { image, _ throws in
      await expectError(
        .failedPrecondition, mentioning: ["\"/\" already has", quoted(root.source), root.fsType, quoted(image)]
      ) {
        try await mounter.mountFileSystem(image, at: "/", fsType: "ext4", options: [], readonly: false)
      }
    }
  }

  @Test("Mounting a device where it is already mounted is success; with other access, already exists")
  func mountIdempotent() async throws {
    try await withTemporaryDirectory { directory throws in
      let device = directory + "/nvme7n1"
      try makeSparseFile(device, size: 0)
      let table = directory + "/mountinfo"
      try writeFile(table, "1 0 259:7 / \(directory)/stage rw,relatime - ext4 \(device) rw\n")
      let mounter = SystemMounter(runner: CommandRunner(pool: .forTests), mountInfoPath: table)
      try await mounter.mountFileSystem(
        device, at: directory + "/stage/", fsType: "ext4", options: ["noatime"], readonly: false)
      await expectError(.alreadyExists, mentioning: ["read-write", "not read-only"]) {
        try await mounter.mountFileSystem(device, at: directory + "/stage", fsType: "ext4", options: [], readonly: true)
      }
      await expectError(.alreadyExists, mentioning: ["read-write", "not read-only"]) {
        try await mounter.mountFileSystem(
          device, at: directory + "/stage", fsType: "ext4", options: ["ro"], readonly: false)
      }
      #expect(!FileManager.default.fileExists(atPath: directory + "/stage"), "nothing should have been created")
    }
  }

  @Test("Bind-mounting a missing source fails before anything is created")
  func bindMissingSource() async throws {
    try await withTemporaryDirectory { directory throws in
      await expectError(.failedPrecondition, mentioning: ["does not exist"]) {
        try await mounter.bindMount(directory + "/missing", at: directory + "/target", readonly: false)
      }
      #expect(!FileManager.default.fileExists(atPath: directory + "/target"))
    }
  }

  @Test("Bind-mounting onto a mount point that holds something else says what is there")
  func bindOntoOther() async throws {
    let root = try #require(try mounter.mount(at: "/"))
    try await withTemporaryDirectory { directory throws in
      await expectError(.failedPrecondition, mentioning: ["\"/\" already has", quoted(root.source), "not a bind of"]) {
        try await mounter.bindMount(directory, at: "/", readonly: false)
      }
    }
  }

  struct BadTarget: Sendable, CustomTestStringConvertible {
    var name: String
    var sourceIsDirectory: Bool
    /// Makes the target in the directory; returns its path.
    var make: @Sendable (String) throws -> String
    var complaint: String
    var testDescription: String { name }
  }

  @Test(
    "A bind target of the wrong kind is refused",
    arguments: [
      BadTarget(
        name: "directory onto a file", sourceIsDirectory: true,
        make: { directory in
          try writeFile(directory + "/target", "")
          return directory + "/target"
        }, complaint: "is not a directory"),
      BadTarget(
        name: "file onto a directory", sourceIsDirectory: false,
        make: { directory in
          try FileManager.default.createDirectory(atPath: directory + "/target", withIntermediateDirectories: false)
          return directory + "/target"
        }, complaint: "is not a regular file"),
      BadTarget(
        name: "file onto a file with data", sourceIsDirectory: false,
        make: { directory in
          try writeFile(directory + "/target", "precious")
          return directory + "/target"
        }, complaint: "with data in it"),
      BadTarget(
        name: "directory below a file", sourceIsDirectory: true,
        make: { directory in
          try writeFile(directory + "/file", "")
          return directory + "/file/target"
        }, complaint: "part of its path is not a directory"),
      BadTarget(
        name: "file below a file", sourceIsDirectory: false,
        make: { directory in
          try writeFile(directory + "/file", "")
          return directory + "/file/target"
        }, complaint: "part of its path is not a directory"),
    ])
  func badBindTarget(_ bad: BadTarget) async throws {
    try await withTemporaryDirectory { directory throws in
      let source = directory + "/source"
      if bad.sourceIsDirectory {
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: false)
      } else {
        try makeSparseFile(source, size: MiB)
      }
      let target = try bad.make(directory)
      await expectError(.failedPrecondition, mentioning: [bad.complaint]) {
        try await mounter.bindMount(source, at: target, readonly: false)
      }
      #expect(try mounter.mount(at: target) == nil)
    }
  }
}
