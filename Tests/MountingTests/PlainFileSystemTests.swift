import Foundation
import Mounting
import NVMeCSICore
import TestSupport
import Testing

/// Staging a formatted volume reads its file system in-process; anything short of a
/// plain ext4 or XFS file system is still blkid's to decide (nothing is ever called
/// blank without it). Images made by the real mkfs tools on sparse files.
@Suite("File system recognized without blkid")
struct PlainFileSystemTests {
  let mounter = SystemMounter(runner: CommandRunner(pool: .forTests))

  /// A mounter whose blkid fails (exit 4): any answer it gives came without blkid.
  func withoutBlkid(in directory: String) throws -> SystemMounter {
    let script = directory + "/blkid"
    try Data("#!/bin/sh\nexit 4\n".utf8).write(to: URL(fileURLWithPath: script))
    #expect(chmod(script, 0o755) == 0)
    return SystemMounter(runner: CommandRunner(pool: .forTests, searchDirectories: [directory]))
  }

  /// `image` was handed to blkid: the in-process probe declined it.
  func expectBlkidAsked(_ image: String, in directory: String, sourceLocation: SourceLocation = #_sourceLocation)
    async throws
  {
    let probe = try withoutBlkid(in: directory)
    await expectError(.internalError, mentioning: ["blkid"], sourceLocation: sourceLocation) {
      try await probe.fileSystem(on: image)
    }
  }

  func image(in directory: String, size: UInt64, formattedAs fsType: String) async throws -> String {
    let image = directory + "/disk.img"
    try makeSparseFile(image, size: size)
    try await mounter.format(image, as: fsType)
    return image
  }

  func overwrite(_ image: String, at offset: UInt64, with bytes: [UInt8]) throws {
    let handle = try #require(FileHandle(forWritingAtPath: image))
    try handle.seek(toOffset: offset)
    try handle.write(contentsOf: Data(bytes))
    try handle.close()
  }

  @Test("ext4 and XFS made by mkfs are recognized without running blkid")
  func recognized() async throws {
    try await withTemporaryDirectory { directory in
      let ext4 = try await image(in: directory, size: 64 * MiB, formattedAs: "ext4")
      #expect(try await withoutBlkid(in: directory).fileSystem(on: ext4) == "ext4")
    }
    // mkfs.xfs refuses file systems smaller than 300 MB.
    try await withTemporaryDirectory { directory in
      let xfs = try await image(in: directory, size: 512 * MiB, formattedAs: "xfs")
      #expect(try await withoutBlkid(in: directory).fileSystem(on: xfs) == "xfs")
    }
  }

  @Test("ext3, and blank devices, are blkid's to name")
  func ext3AndBlank() async throws {
    try await withTemporaryDirectory { directory in
      let image = directory + "/disk.img"
      try makeSparseFile(image, size: 64 * MiB)
      try await expectBlkidAsked(image, in: directory)
      _ = try await CommandRunner(pool: .forTests).run("mkfs.ext3", ["-q", image], timeout: .seconds(60))
      try await expectBlkidAsked(image, in: directory)
      #expect(try await mounter.fileSystem(on: image) == "ext3")
    }
  }

  @Test("ext4 with anything in its first KiB, a damaged superblock, or an md superblock at the end goes to blkid")
  func ext4InDoubt() async throws {
    try await withTemporaryDirectory { directory in
      let image = try await image(in: directory, size: 64 * MiB, formattedAs: "ext4")
      // A boot sector's signature in front of it.
      try overwrite(image, at: 510, with: [0x55, 0xAA])
      try await expectBlkidAsked(image, in: directory)
      try overwrite(image, at: 510, with: [0, 0])
      #expect(try await withoutBlkid(in: directory).fileSystem(on: image) == "ext4")

      // A byte of the superblock changed (its volume name): the checksum no longer matches.
      try overwrite(image, at: 1024 + 0x78, with: [0x41])
      try await expectBlkidAsked(image, in: directory)
      try overwrite(image, at: 1024 + 0x78, with: [0])
      #expect(try await withoutBlkid(in: directory).fileSystem(on: image) == "ext4")

      // md metadata 1.0 at the end: an array member, only to be reached through md.
      try overwrite(image, at: (64 * MiB - 8192) & ~4095, with: [0xFC, 0x4E, 0x2B, 0xA9])
      try await expectBlkidAsked(image, in: directory)
    }
  }

  @Test("XFS without its allocation group headers goes to blkid")
  func xfsInDoubt() async throws {
    try await withTemporaryDirectory { directory in
      let image = try await image(in: directory, size: 512 * MiB, formattedAs: "xfs")
      let sectorSize = try sectorSizeOfXFS(image)
      try overwrite(image, at: sectorSize, with: Array("XXXX".utf8))
      try await expectBlkidAsked(image, in: directory)
    }
  }

  func sectorSizeOfXFS(_ image: String) throws -> UInt64 {
    let handle = try #require(FileHandle(forReadingAtPath: image))
    defer { try? handle.close() }
    let superblock = try #require(try handle.read(upToCount: 104))
    return UInt64(superblock[102]) << 8 | UInt64(superblock[103])
  }
}
