import Foundation
import Mounting
import NVMeCSICore
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// `MDAdmArrays` against a fake `mdadm` (a script that records every call) and a fake
/// sysfs tree: this machine's kernel has no md. The real mdadm only reads superblocks,
/// which works on regular files.
@Suite("MDAdmArrays")
struct MDAdmArraysTests {
  static let uuid = try! ObjectUUID("01234567-89ab-cdef-0123-456789abcdef")
  static let other = try! ObjectUUID("fedcba98-7654-3210-fedc-ba9876543210")
  static let devicePath = "/dev/md/nvmecsi-0123456789abcdef"
  static let mdadmUUID = "01234567:89abcdef:01234567:89abcdef"

  /// A temporary directory with `bin/mdadm` (once `install` made it) and a sysfs tree in `sys`.
  struct Fake {
    let directory: String
    var sysfs: String { directory + "/sys" }
    var arrays: MDAdmArrays {
      MDAdmArrays(runner: CommandRunner(pool: .forTests, searchDirectories: [directory + "/bin"]), sysfsRoot: sysfs)
    }

    /// Makes `mdadm` a script that logs its arguments and environment, then runs
    /// `body` (sh) with `$SYS` set to the fake sysfs root.
    func install(_ body: String = "") throws {
      try FileManager.default.createDirectory(atPath: directory + "/bin", withIntermediateDirectories: true)
      let script = """
        #!/bin/sh
        PATH=/usr/bin:/bin
        SYS='\(sysfs)'
        for argument in "$@"; do printf '%s\\t' "$argument"; done >>'\(directory)/calls'
        printf '\\n' >>'\(directory)/calls'
        printf '%s %s\\n' "$MDADM_NO_UDEV" "$MDADM_NO_SYSTEMCTL" >>'\(directory)/environment'
        \(body)

        """
      try writeFile(directory + "/bin/mdadm", script)
      #expect(chmod(directory + "/bin/mdadm", 0o755) == 0)
    }

    /// Every call's arguments, in order.
    func calls() throws -> [[String]] {
      guard FileManager.default.fileExists(atPath: directory + "/calls") else { return [] }
      return try String(contentsOfFile: directory + "/calls", encoding: .utf8).split(separator: "\n").map {
        $0.split(separator: "\t", omittingEmptySubsequences: false).dropLast().map(String.init)
      }
    }

    func environment() throws -> [String] {
      try String(contentsOfFile: directory + "/environment", encoding: .utf8).split(separator: "\n").map(String.init)
    }

    func write(_ relativePath: String, _ text: String) throws {
      let path = sysfs + "/" + relativePath
      try FileManager.default.createDirectory(
        atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
      try writeFile(path, text + "\n")
    }

    /// A leg in /sys/block, held by `array` when one is given.
    func leg(_ name: String, heldBy array: String? = nil) throws {
      let holders = sysfs + "/block/" + name + "/holders"
      try FileManager.default.createDirectory(atPath: holders, withIntermediateDirectories: true)
      if let array {
        try FileManager.default.createDirectory(atPath: holders + "/" + array, withIntermediateDirectories: true)
      }
    }

    func exists(_ relativePath: String) -> Bool { FileManager.default.fileExists(atPath: sysfs + "/" + relativePath) }

    /// An md array's sysfs directory; members are (name, state, recovery_start).
    func array(
      _ name: String = "md127", uuid: ObjectUUID = MDAdmArraysTests.uuid, state: String = "clean",
      raidDisks: Int = 2, degraded: Int? = 0, syncAction: String? = "idle", syncCompleted: String? = "none",
      sectors: UInt64 = 2_093_056, members: [(String, String, String)] = [("nvme1n1", "in_sync", "none")]
    ) throws {
      let md = "block/\(name)/md"
      try write("block/\(name)/size", "\(sectors)")
      try write(md + "/array_state", state)
      try write(md + "/uuid", uuid.value)
      try write(md + "/raid_disks", "\(raidDisks)")
      try write(md + "/metadata_version", "1.2")
      try FileManager.default.createDirectory(atPath: sysfs + "/" + md + "/bitmap", withIntermediateDirectories: true)
      if let degraded { try write(md + "/degraded", "\(degraded)") }
      if let syncAction { try write(md + "/sync_action", syncAction) }
      if let syncCompleted { try write(md + "/sync_completed", syncCompleted) }
      for (index, (member, flags, recoveryStart)) in members.enumerated() {
        try write(md + "/dev-\(member)/state", flags)
        try write(md + "/dev-\(member)/recovery_start", recoveryStart)
        try write(md + "/rd\(index)", "")
      }
    }
  }

  func withFake<R>(_ body: (Fake) async throws -> R) async throws -> R {
    try await withTemporaryDirectory { directory throws in try await body(Fake(directory: directory)) }
  }

  /// An md 1.2 superblock as mdadm writes it (4 KiB into the device), for the real mdadm to read.
  static func superblock12(uuid: ObjectUUID, events: UInt64, sectors: UInt64) -> [UInt8] {
    var sb = [UInt8](repeating: 0, count: 256 + 2 * 2)
    func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
      withUnsafeBytes(of: value.littleEndian) { sb.replaceSubrange(offset..<offset + $0.count, with: $0) }
    }
    put(UInt32(0xa92b_4efc), at: 0)  // magic
    put(UInt32(1), at: 4)  // major version
    let uuidBytes = stride(from: 0, to: 32, by: 2).map { index in
      UInt8(String(Array(uuid.hexDigits)[index..<index + 2]), radix: 16)!
    }
    sb.replaceSubrange(16..<32, with: uuidBytes)
    sb.replaceSubrange(32..<32 + 24, with: Array("nvmecsi-0123456789abcdef".utf8))
    put(UInt64(1_700_000_000), at: 64)  // ctime
    put(UInt32(1), at: 72)  // level
    put(sectors - 4096, at: 80)  // size
    put(UInt32(2), at: 92)  // raid disks
    put(UInt64(4096), at: 128)  // data offset
    put(sectors - 4096, at: 136)  // data size
    put(UInt64(8), at: 144)  // super offset
    put(UInt64(1_700_000_100), at: 192)  // utime
    put(events, at: 200)
    put(UInt64.max, at: 208)  // resync offset
    put(UInt32(2), at: 220)  // max devices
    put(UInt16(0), at: 256)  // roles
    put(UInt16(1), at: 258)
    var sum: UInt64 = 0
    for offset in stride(from: 0, to: sb.count, by: 4) {
      sum +=
        UInt64(sb[offset]) | UInt64(sb[offset + 1]) << 8 | UInt64(sb[offset + 2]) << 16
        | UInt64(sb[offset + 3]) << 24
    }
    put(UInt32(truncatingIfNeeded: (sum & 0xffff_ffff) + (sum >> 32)), at: 216)
    return sb
  }

  static func write(_ bytes: [UInt8], to path: String, at offset: UInt64) throws {
    let handle = try #require(FileHandle(forWritingAtPath: path))
    try handle.seek(toOffset: offset)
    try handle.write(contentsOf: Data(bytes))
    try handle.close()
  }

  static let noSuperblock = "echo \"mdadm: No md superblock detected on $3.\" >&2; exit 1"

  // MARK: Superblocks

  @Test("The real mdadm reads a 1.2 superblock's UUID and event count, and finds none on zeros")
  func realExamine() async throws {
    try await withTemporaryDirectory { directory throws in
      let arrays = MDAdmArrays(runner: CommandRunner(pool: .forTests), sysfsRoot: directory)
      let image = directory + "/leg.img"
      try makeSparseFile(image, size: 64 * MiB)
      #expect(try await arrays.superblock(on: image) == nil)

      try Self.write(Self.superblock12(uuid: Self.uuid, events: 138, sectors: 64 * MiB / 512), to: image, at: 4096)
      #expect(try await arrays.superblock(on: image) == MirrorSuperblock(arrayUUID: Self.uuid, events: 138))
    }
  }

  @Test("Examine output gives the array UUID and the event count")
  func examineParsed() async throws {
    try await withFake { fake throws in
      try fake.install(
        """
        printf 'MD_LEVEL=raid1\\nMD_DEVICES=2\\nMD_NAME=nvmecsi-fedcba9876543210\\nMD_UUID=fedcba98:76543210:fedcba98:76543210\\n'
        printf 'MD_UPDATE_TIME=1700000100\\nMD_DEV_UUID=00010203:04050607:08090a0b:0c0d0e0f\\nMD_EVENTS=18446744073709551615\\n'
        """)
      let leg = fake.directory + "/leg.img"
      try makeSparseFile(leg, size: MiB)
      #expect(try await fake.arrays.superblock(on: leg) == MirrorSuperblock(arrayUUID: Self.other, events: .max))
      #expect(try fake.calls() == [["--examine", "--export", leg]])
    }
  }

  @Test("mdadm's \"no superblock\" is proved on the device: zeros are none, md magic or size 0 are errors")
  func noSuperblockProved() async throws {
    try await withFake { fake throws in
      try fake.install(Self.noSuperblock)
      let leg = fake.directory + "/leg.img"
      try makeSparseFile(leg, size: 8 * MiB)
      #expect(try await fake.arrays.superblock(on: leg) == nil)

      // Magic where a 1.0 superblock lives (8 KiB before the end, 4 KiB aligned).
      try Self.write([0xfc, 0x4e, 0x2b, 0xa9], to: leg, at: 8 * MiB - 8192)
      await expectError(.internalError, mentioning: ["no md superblock", "magic", "byte \(8 * MiB - 8192)"]) {
        try await fake.arrays.superblock(on: leg)
      }
      // And at 4 KiB (1.2).
      try makeSparseFile(leg, size: 8 * MiB)
      try Self.write([0xfc, 0x4e, 0x2b, 0xa9], to: leg, at: 4096)
      await expectError(.internalError, mentioning: ["byte 4096"]) { try await fake.arrays.superblock(on: leg) }

      // An NVMe namespace first shows up with size 0: that proves nothing.
      try makeSparseFile(leg, size: 0)
      await expectError(.unavailable, mentioning: ["size 0"]) { try await fake.arrays.superblock(on: leg) }
    }
  }

  @Test(
    "Any other examine failure throws, never reads as no superblock",
    arguments: [
      "echo \"mdadm: cannot open $3: Input/output error\" >&2; exit 1",
      "exit 1",
      "echo 'mdadm: an md device must be given' >&2; exit 2",
      "echo 'MD_LEVEL=raid1'; exit 0",
    ])
  func examineFailure(_ body: String) async throws {
    try await withFake { fake throws in
      try fake.install(body)
      let leg = fake.directory + "/leg.img"
      try makeSparseFile(leg, size: MiB)
      await expectError(.internalError, mentioning: ["mdadm"]) { try await fake.arrays.superblock(on: leg) }
    }
  }

  @Test("Examining a missing device is not found, and mdadm never runs")
  func examineMissing() async throws {
    try await withFake { fake throws in
      try fake.install(Self.noSuperblock)
      await expectError(.notFound) { try await fake.arrays.superblock(on: fake.directory + "/nvme9n1") }
      #expect(try fake.calls().isEmpty)
    }
  }

  // MARK: Holders

  @Test("The array holding a leg is its md holder; none for a free or missing leg")
  func holders() async throws {
    try await withFake { fake throws in
      try fake.leg("nvme1n1", heldBy: "md127")
      try fake.leg("nvme2n1")
      try fake.leg("nvme3n1", heldBy: "dm-0")
      #expect(try fake.arrays.array(holding: "nvme1n1") == "md127")
      #expect(try fake.arrays.array(holding: "nvme2n1") == nil)
      #expect(try fake.arrays.array(holding: "nvme3n1") == nil)
      #expect(try fake.arrays.array(holding: "nvme4n1") == nil)
    }
  }

  @Test("Names that are not plain kernel names are rejected", arguments: ["", ".", "..", "a/b", "../nvme1n1", "/"])
  func invalidNames(_ name: String) async throws {
    try await withFake { fake throws in
      try fake.install()
      try fake.leg("nvme1n1", heldBy: "md127")
      try fake.array()
      expectError(.invalidArgument) { try fake.arrays.array(holding: name) }
      expectError(.invalidArgument) { try fake.arrays.status(of: name) }
      await expectError(.invalidArgument) { try await fake.arrays.stop(name) }
      await expectError(.invalidArgument) { try await fake.arrays.add("/dev/nvme2n1", to: name) }
      #expect(try fake.calls().isEmpty)
    }
  }

  @Test("Array names must be md arrays, leg paths absolute", arguments: ["nvme1n1", "sda", "md127/../sda"])
  func notAnArray(_ name: String) async throws {
    try await withFake { fake throws in
      try fake.install()
      try fake.array()
      expectError(.invalidArgument, mentioning: ["md array"]) { try fake.arrays.status(of: name) }
      await expectError(.invalidArgument) { try await fake.arrays.grow(name) }
      await expectError(.invalidArgument, mentioning: ["absolute"]) {
        try await fake.arrays.add("nvme2n1", to: "md127")
      }
      await expectError(.invalidArgument, mentioning: ["absolute"]) {
        try await fake.arrays.assemble(uuid: Self.uuid, legs: ["/dev/nvme1n1", "nvme2n1"])
      }
      #expect(try fake.calls().isEmpty)
    }
  }

  // MARK: Creating

  @Test("create passes exactly the agreed flags and answers the array sysfs shows holding the legs")
  func create() async throws {
    try await withFake { fake throws in
      try fake.leg("nvme1n1")
      try fake.leg("nvme2n1")
      try fake.array("md127", members: [("nvme1n1", "in_sync", "none"), ("nvme2n1", "in_sync", "none")])
      try fake.install(
        """
        [ "$1" = --create ] && mkdir "$SYS/block/nvme1n1/holders/md127" "$SYS/block/nvme2n1/holders/md127"
        exit 0
        """)
      let name = try await fake.arrays.create(
        uuid: Self.uuid, legs: ["/dev/nvme1n1", "/dev/nvme2n1"], dataOffsetBytes: 8 * MiB, bitmapChunkBytes: 4 * MiB)
      #expect(name == "md127")
      let calls = try fake.calls()
      #expect(
        calls == [
          [
            "--create", Self.devicePath, "--run", "--level=1", "--raid-devices=2", "--metadata=1.2",
            "--bitmap=internal", "--bitmap-chunk=4096K", "--data-offset=8192K", "--assume-clean",
            "--uuid=" + Self.mdadmUUID, "--name=nvmecsi-0123456789abcdef", "--homehost=<none>", "/dev/nvme1n1",
            "/dev/nvme2n1",
          ]
        ])
      #expect(!calls.joined().contains { ["--force", "--scan", "-f", "-s"].contains($0) })
      #expect(try fake.environment() == ["1 1"])

      // A retried create finds the array and changes nothing.
      #expect(
        try await fake.arrays.create(
          uuid: Self.uuid, legs: ["/dev/nvme1n1", "/dev/nvme2n1"], dataOffsetBytes: 8 * MiB,
          bitmapChunkBytes: 4 * MiB) == "md127")
      #expect(try fake.calls().count == 1)
    }
  }

  @Test("create from a seed lists the seed and missing slots, never --assume-clean or --force, and is idempotent")
  func createFromSeed() async throws {
    try await withFake { fake throws in
      try fake.leg("nvme1n1")
      try fake.array("md127", members: [("nvme1n1", "in_sync", "none")])
      try fake.install(
        """
        [ "$1" = --create ] && mkdir "$SYS/block/nvme1n1/holders/md127"
        exit 0
        """)
      let name = try await fake.arrays.create(
        uuid: Self.uuid, seed: "/dev/nvme1n1", legCount: 3, dataOffsetBytes: 4 * MiB, bitmapChunkBytes: 4 * MiB)
      #expect(name == "md127")
      let calls = try fake.calls()
      #expect(
        calls == [
          [
            "--create", Self.devicePath, "--run", "--level=1", "--raid-devices=3", "--metadata=1.2",
            "--bitmap=internal", "--bitmap-chunk=4096K", "--data-offset=4096K",
            "--uuid=" + Self.mdadmUUID, "--name=nvmecsi-0123456789abcdef", "--homehost=<none>", "/dev/nvme1n1",
            "missing", "missing",
          ]
        ])
      #expect(
        try await fake.arrays.create(
          uuid: Self.uuid, seed: "/dev/nvme1n1", legCount: 3, dataOffsetBytes: 4 * MiB, bitmapChunkBytes: 4 * MiB)
          == "md127")
      #expect(try fake.calls().count == 1)
      await expectError(.invalidArgument, mentioning: ["2 to 3 legs"]) {
        try await fake.arrays.create(
          uuid: Self.uuid, seed: "/dev/nvme1n1", legCount: 1, dataOffsetBytes: 4 * MiB, bitmapChunkBytes: 4 * MiB)
      }
    }
  }

  @Test("create that leaves no array holding the legs is an error")
  func createFindsNothing() async throws {
    try await withFake { fake throws in
      try fake.leg("nvme1n1")
      try fake.leg("nvme2n1")
      try fake.install("exit 0")
      await expectError(.internalError, mentioning: ["mdadm --create succeeded", "no running md array"]) {
        try await fake.arrays.create(
          uuid: Self.uuid, legs: ["/dev/nvme1n1", "/dev/nvme2n1"], dataOffsetBytes: MiB, bitmapChunkBytes: MiB)
      }
    }
  }

  @Test("create refuses bad geometry, one leg, a repeated leg, or a leg another array holds, before mdadm runs")
  func createRefusals() async throws {
    try await withFake { fake throws in
      try fake.install()
      try fake.leg("nvme1n1")
      try fake.leg("nvme2n1", heldBy: "md126")
      try fake.array("md126", uuid: Self.other)
      let arrays = fake.arrays
      let legs = ["/dev/nvme1n1", "/dev/nvme3n1"]
      await expectError(.invalidArgument, mentioning: ["two legs"]) {
        try await arrays.create(uuid: Self.uuid, legs: ["/dev/nvme1n1"], dataOffsetBytes: MiB, bitmapChunkBytes: MiB)
      }
      await expectError(.invalidArgument, mentioning: ["twice"]) {
        try await arrays.create(
          uuid: Self.uuid, legs: ["/dev/nvme1n1", "/dev/nvme1n1"], dataOffsetBytes: MiB, bitmapChunkBytes: MiB)
      }
      await expectError(.invalidArgument, mentioning: ["power of two"]) {
        try await arrays.create(uuid: Self.uuid, legs: legs, dataOffsetBytes: MiB, bitmapChunkBytes: 3 * MiB)
      }
      await expectError(.invalidArgument, mentioning: ["power of two"]) {
        try await arrays.create(uuid: Self.uuid, legs: legs, dataOffsetBytes: MiB, bitmapChunkBytes: 2048)
      }
      await expectError(.invalidArgument, mentioning: ["data offset"]) {
        try await arrays.create(uuid: Self.uuid, legs: legs, dataOffsetBytes: MiB + 512, bitmapChunkBytes: MiB)
      }
      await expectError(.invalidArgument, mentioning: ["data offset"]) {
        try await arrays.create(uuid: Self.uuid, legs: legs, dataOffsetBytes: 0, bitmapChunkBytes: MiB)
      }
      await expectError(.failedPrecondition, mentioning: ["md126", Self.other.value]) {
        try await arrays.create(
          uuid: Self.uuid, legs: ["/dev/nvme1n1", "/dev/nvme2n1"], dataOffsetBytes: MiB, bitmapChunkBytes: MiB)
      }
      #expect(try fake.calls().isEmpty)
    }
  }

  // MARK: Assembling

  @Test("assemble names the device, the UUID and exactly the legs, never --run, --force or --scan")
  func assemble() async throws {
    try await withFake { fake throws in
      try fake.leg("nvme1n1")
      try fake.leg("nvme2n1")
      try fake.array("md126")
      // Only the second leg joins (the first is stale and left out): the name comes from any leg.
      try fake.install(
        """
        [ "$1" = --assemble ] && mkdir "$SYS/block/nvme2n1/holders/md126"
        echo "mdadm: $2 has been started with 1 drive (out of 2)." >&2
        """)
      let name = try await fake.arrays.assemble(uuid: Self.uuid, legs: ["/dev/nvme1n1", "/dev/nvme2n1"])
      #expect(name == "md126")
      let calls = try fake.calls()
      #expect(calls == [["--assemble", Self.devicePath, "--uuid=" + Self.mdadmUUID, "/dev/nvme1n1", "/dev/nvme2n1"]])
      #expect(!calls.joined().contains { ["--run", "-R", "--force", "-f", "--scan", "-s"].contains($0) })
      #expect(try fake.environment() == ["1 1"])
    }
  }

  @Test("assembling without members gone for good adds --run, never --force or --scan")
  func assembleWithoutMissing() async throws {
    try await withFake { fake throws in
      try fake.leg("nvme1n1")
      try fake.array("md126")
      try fake.install(
        """
        [ "$1" = --assemble ] && mkdir "$SYS/block/nvme1n1/holders/md126"
        echo "mdadm: $2 has been started with 1 drive (out of 2)." >&2
        """)
      let name = try await fake.arrays.assembleWithoutMissing(uuid: Self.uuid, legs: ["/dev/nvme1n1"])
      #expect(name == "md126")
      let calls = try fake.calls()
      #expect(calls == [["--assemble", Self.devicePath, "--uuid=" + Self.mdadmUUID, "--run", "/dev/nvme1n1"]])
      #expect(!calls.joined().contains { ["--force", "-f", "--scan", "-s"].contains($0) })
    }
  }

  @Test("md refusing to start is unavailable, and the inactive array it left is stopped")
  func assembleRefused() async throws {
    try await withFake { fake throws in
      try fake.leg("nvme2n1")
      try fake.leg("nvme3n1")
      try fake.array("md127", state: "inactive", degraded: nil, syncAction: nil, syncCompleted: nil)
      try fake.install(
        """
        case "$1" in
        --assemble)
          mkdir "$SYS/block/nvme2n1/holders/md127"
          echo "mdadm: $2 assembled from 1 drive - need all 2 to start it (use --run to insist)." >&2
          exit 1;;
        --stop)
          rmdir "$SYS/block/nvme2n1/holders/md127"; echo clear >"$SYS/block/md127/md/array_state"
          echo "mdadm: stopped $2" >&2;;
        esac
        """)
      await expectError(
        .unavailable,
        mentioning: ["md refused to start", "need all 2 to start it", "fresher", "retries when the other legs answer"]
      ) {
        try await fake.arrays.assemble(uuid: Self.uuid, legs: ["/dev/nvme2n1", "/dev/nvme3n1"])
      }
      #expect(
        try fake.calls() == [
          ["--assemble", Self.devicePath, "--uuid=" + Self.mdadmUUID, "/dev/nvme2n1", "/dev/nvme3n1"],
          ["--stop", "/dev/md127"],
        ])
      #expect(try fake.arrays.array(holding: "nvme2n1") == nil)
    }
  }

  @Test("An assembly that fails otherwise is an error with mdadm's words, and releases the legs too")
  func assembleFails() async throws {
    try await withFake { fake throws in
      try fake.leg("nvme1n1")
      try fake.array("md127", state: "inactive", degraded: nil, syncAction: nil, syncCompleted: nil)
      try fake.install(
        """
        case "$1" in
        --assemble)
          mkdir "$SYS/block/nvme1n1/holders/md127"
          echo "mdadm: superblock on /dev/nvme1n1 doesn't match others - assembly aborted" >&2; exit 1;;
        --stop) rmdir "$SYS/block/nvme1n1/holders/md127";;
        esac
        """)
      await expectError(.internalError, mentioning: ["mdadm --assemble", "exit code 1", "doesn't match others"]) {
        try await fake.arrays.assemble(uuid: Self.uuid, legs: ["/dev/nvme1n1"])
      }
      #expect(try fake.calls().map(\.first) == ["--assemble", "--stop"])
    }
  }

  @Test("A leftover inactive array holding a leg is stopped before assembling")
  func assembleAfterLeftover() async throws {
    try await withFake { fake throws in
      try fake.leg("nvme1n1", heldBy: "md125")
      try fake.leg("nvme2n1")
      try fake.array("md125", state: "inactive", degraded: nil, syncAction: nil, syncCompleted: nil)
      try fake.array("md126")
      try fake.install(
        """
        case "$1" in
        --stop) rmdir "$SYS/block/nvme1n1/holders/md125";;
        --assemble) mkdir "$SYS/block/nvme1n1/holders/md126" "$SYS/block/nvme2n1/holders/md126";;
        esac
        """)
      #expect(try await fake.arrays.assemble(uuid: Self.uuid, legs: ["/dev/nvme1n1", "/dev/nvme2n1"]) == "md126")
      #expect(try fake.calls().map(\.first) == ["--stop", "--assemble"])
      #expect(try fake.calls().first == ["--stop", "/dev/md125"])
    }
  }

  @Test("Assembling an array already running answers it without mdadm; another array's leg is refused")
  func assembleRunning() async throws {
    try await withFake { fake throws in
      try fake.install()
      try fake.leg("nvme1n1")
      try fake.leg("nvme2n1", heldBy: "md127")
      try fake.array("md127")
      #expect(try await fake.arrays.assemble(uuid: Self.uuid, legs: ["/dev/nvme1n1", "/dev/nvme2n1"]) == "md127")
      await expectError(.failedPrecondition, mentioning: ["nvme2n1", "md127", Self.uuid.value]) {
        try await fake.arrays.assemble(uuid: Self.other, legs: ["/dev/nvme1n1", "/dev/nvme2n1"])
      }
      #expect(try fake.calls().isEmpty)
    }
  }

  // MARK: Status

  @Test("An array in sync")
  func statusInSync() async throws {
    try await withFake { fake throws in
      try fake.array(members: [("nvme1n1", "in_sync", "none"), ("nvme2n1", "in_sync,write_mostly", "none")])
      let status = try fake.arrays.status(of: "md127")
      #expect(
        status
          == MirrorStatus(
            device: "md127", arrayUUID: Self.uuid, isRunning: true, legCount: 2,
            members: [.init(device: "nvme1n1", state: .inSync), .init(device: "nvme2n1", state: .inSync)],
            degraded: 0, syncAction: "idle", syncProgress: nil, sizeBytes: 2_093_056 * 512))
      #expect(status.path == "/dev/md127")
    }
  }

  @Test("A degraded array with a faulty member")
  func statusDegraded() async throws {
    try await withFake { fake throws in
      try fake.array(degraded: 1, members: [("nvme1n1", "in_sync", "none"), ("nvme2n1", "faulty", "none")])
      #expect(
        try fake.arrays.status(of: "md127")
          == MirrorStatus(
            device: "md127", arrayUUID: Self.uuid, isRunning: true, legCount: 2,
            members: [.init(device: "nvme1n1", state: .inSync), .init(device: "nvme2n1", state: .faulty)],
            degraded: 1, syncAction: "idle", syncProgress: nil, sizeBytes: 2_093_056 * 512))
    }
  }

  @Test("An array recovering a leg, with progress")
  func statusRecovering() async throws {
    try await withFake { fake throws in
      try fake.array(
        raidDisks: 3, degraded: 2, syncAction: "recover", syncCompleted: "1024 / 2093056",
        members: [("nvme1n1", "in_sync", "none"), ("nvme2n1", "spare", "1024"), ("nvme3n1", "blocked", "512")])
      let status = try fake.arrays.status(of: "md127")
      #expect(
        status
          == MirrorStatus(
            device: "md127", arrayUUID: Self.uuid, isRunning: true, legCount: 3,
            members: [
              .init(device: "nvme1n1", state: .inSync), .init(device: "nvme2n1", state: .rebuilding),
              .init(device: "nvme3n1", state: .rebuilding),
            ],
            degraded: 2, syncAction: "recover", syncProgress: (1024, 2_093_056), sizeBytes: 2_093_056 * 512))
      #expect(status.syncProgress?.done == 1024)
      #expect(status.syncProgress?.total == 2_093_056)
    }
  }

  @Test("A member md reports in another state keeps its flags")
  func statusOther() async throws {
    try await withFake { fake throws in
      try fake.array(members: [("nvme1n1", "in_sync", "none"), ("nvme2n1", "journal", "none")])
      #expect(try fake.arrays.status(of: "md127").members.last == .init(device: "nvme2n1", state: .other("journal")))
    }
  }

  @Test("An inactive array reports it as its sync action and counts what is not in sync")
  func statusInactive() async throws {
    try await withFake { fake throws in
      try fake.array(state: "inactive", degraded: nil, syncAction: nil, syncCompleted: nil)
      let status = try fake.arrays.status(of: "md127")
      #expect(status.syncAction == "inactive")
      #expect(!status.isRunning)
      #expect(status.degraded == 1)
    }
  }

  @Test("An array the kernel does not have, or an empty md device, is not found")
  func statusNotFound() async throws {
    try await withFake { fake throws in
      expectError(.notFound, mentioning: ["md127"]) { try fake.arrays.status(of: "md127") }
      try fake.array("md126", state: "clear", members: [])
      expectError(.notFound, mentioning: ["md126"]) { try fake.arrays.status(of: "md126") }
    }
  }

  @Test("A malformed sysfs attribute is an error, not a guess")
  func statusMalformed() async throws {
    try await withFake { fake throws in
      try fake.array()
      try fake.write("block/md127/md/raid_disks", "two")
      expectError(.internalError, mentioning: ["raid_disks", "\"two\""]) { try fake.arrays.status(of: "md127") }
    }
  }

  // MARK: Adding and removing

  @Test("A faulty member is removed by its kernel name, then re-added")
  func addFaulty() async throws {
    try await withFake { fake throws in
      try fake.array(degraded: 1, members: [("nvme1n1", "in_sync", "none"), ("nvme2n1", "faulty", "none")])
      try fake.install("echo \"mdadm: ok\" >&2")
      try await fake.arrays.add("/dev/nvme2n1", to: "md127")
      #expect(
        try fake.calls() == [["/dev/md127", "--remove", "nvme2n1"], ["/dev/md127", "--re-add", "/dev/nvme2n1"]])
    }
  }

  @Test("When re-adding is not possible, a blank leg is added in full")
  func addFallsBack() async throws {
    try await withFake { fake throws in
      try fake.array(degraded: 1, members: [("nvme1n1", "in_sync", "none")])
      let leg = fake.directory + "/nvme2n1"
      try makeSparseFile(leg, size: 8 * MiB)
      try fake.install(
        """
        case "$2" in
        --re-add) echo "mdadm: --re-add for $3 to $1 is not possible" >&2; exit 1;;
        --export) \(Self.noSuperblock);;
        esac
        """)
      try await fake.arrays.add(leg, to: "md127")
      #expect(
        try fake.calls() == [
          ["/dev/md127", "--re-add", leg], ["--examine", "--export", leg], ["/dev/md127", "--add", leg],
        ])
    }
  }

  @Test("A leg holding another array's superblock is never added over")
  func addForeign() async throws {
    try await withFake { fake throws in
      try fake.array(degraded: 1, members: [("nvme1n1", "in_sync", "none")])
      let leg = fake.directory + "/nvme2n1"
      try makeSparseFile(leg, size: MiB)
      try fake.install(
        """
        case "$2" in
        --re-add) echo "mdadm: --re-add for $3 to $1 is not possible" >&2; exit 1;;
        --export) printf 'MD_UUID=fedcba98:76543210:fedcba98:76543210\\nMD_EVENTS=5\\n';;
        esac
        """)
      await expectError(.failedPrecondition, mentioning: ["another md array", Self.other.value]) {
        try await fake.arrays.add(leg, to: "md127")
      }
      #expect(try !fake.calls().contains(["/dev/md127", "--add", leg]))
    }
  }

  @Test("A re-add that fails for another reason is an error, not a full copy")
  func addFails() async throws {
    try await withFake { fake throws in
      try fake.array(degraded: 1, members: [("nvme1n1", "in_sync", "none")])
      try fake.install("echo \"mdadm: Cannot open $3: Device or resource busy\" >&2; exit 1")
      await expectError(.internalError, mentioning: ["--re-add", "Device or resource busy"]) {
        try await fake.arrays.add("/dev/nvme2n1", to: "md127")
      }
      #expect(try fake.calls().count == 1)
    }
  }

  @Test("Adding a leg that is already in sync or rebuilding does nothing")
  func addIdempotent() async throws {
    try await withFake { fake throws in
      try fake.install("exit 1")
      try fake.array(degraded: 1, members: [("nvme1n1", "in_sync", "none"), ("nvme2n1", "spare", "4096")])
      try await fake.arrays.add("/dev/nvme1n1", to: "md127")
      try await fake.arrays.add("/dev/nvme2n1", to: "md127")
      #expect(try fake.calls().isEmpty)
      await expectError(.notFound) { try await fake.arrays.add("/dev/nvme2n1", to: "md120") }
    }
  }

  @Test("Removing failed members removes the faulty and the detached ones")
  func removeFailed() async throws {
    try await withFake { fake throws in
      try fake.install()
      try fake.array()
      try await fake.arrays.removeFailed(from: "md127")
      #expect(try fake.calls() == [["/dev/md127", "--remove", "failed"], ["/dev/md127", "--remove", "detached"]])
      await expectError(.notFound) { try await fake.arrays.removeFailed(from: "md126") }
    }
  }

  // MARK: Stopping and growing

  @Test("Stopping an array that is not there succeeds without opening it")
  func stopAbsent() async throws {
    try await withFake { fake throws in
      try fake.install("exit 1")
      try await fake.arrays.stop("md127")
      try fake.array("md126", state: "clear", members: [])
      try await fake.arrays.stop("md126")
      #expect(try fake.calls().isEmpty)
    }
  }

  @Test("Stopping runs mdadm --stop; an array in use is a failed precondition")
  func stop() async throws {
    try await withFake { fake throws in
      try fake.array()
      try fake.install("echo clear >\"$SYS/block/md127/md/array_state\"")
      try await fake.arrays.stop("md127")
      #expect(try fake.calls() == [["--stop", "/dev/md127"]])

      try fake.array()
      try fake.install(
        """
        echo "mdadm: Cannot get exclusive access to $2:Perhaps a running process, mounted filesystem or active volume group?" >&2
        exit 1
        """)
      await expectError(.failedPrecondition, mentioning: ["in use", "Cannot get exclusive access"]) {
        try await fake.arrays.stop("md127")
      }
    }
  }

  @Test("A stop that fails because the array went meanwhile is success")
  func stopRace() async throws {
    try await withFake { fake throws in
      try fake.array()
      try fake.install(
        "rm -r \"$SYS/block/md127\"; echo \"mdadm: error opening $2: No such file or directory\" >&2; exit 1")
      try await fake.arrays.stop("md127")
      #expect(!fake.exists("block/md127"))
    }
  }

  @Test("Growing asks md for the legs' full size")
  func grow() async throws {
    try await withFake { fake throws in
      try fake.install()
      try fake.array()
      try await fake.arrays.grow("md127")
      #expect(try fake.calls() == [["--grow", "/dev/md127", "--size=max"]])
      await expectError(.notFound) { try await fake.arrays.grow("md126") }
    }
  }

  @Test("A missing mdadm names the package to install")
  func missingTool() async throws {
    try await withFake { fake throws in
      try fake.array()
      await expectError(.failedPrecondition, mentioning: ["mdadm", "install mdadm"]) {
        try await fake.arrays.grow("md127")
      }
    }
  }
}
