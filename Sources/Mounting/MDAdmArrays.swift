import Foundation
import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// `MirrorArrays` with mdadm (4.2) and the kernel's md sysfs tree.
///
/// Lookups read sysfs; changes run mdadm through a `CommandRunner` with timeouts. mdadm
/// runs with `MDADM_NO_UDEV=1` (the node plugin's container has no udev: mdadm makes
/// `/dev/mdN` and the `/dev/md/` link itself instead of waiting for udev to) and
/// `MDADM_NO_SYSTEMCTL=1` (no systemd to start monitors through).
///
/// The kernel name of an array (`md127`) is always read back from the legs' `holders`
/// in sysfs after mdadm ran, never guessed: mdadm picks the number.
public struct MDAdmArrays: MirrorArrays {
  public static let probeTimeout: Duration = .seconds(30)
  /// Creating, assembling, adding, stopping: superblock writes on legs over the network,
  /// and mdadm's own retries (a stop retries a busy array for 5 s).
  public static let changeTimeout: Duration = .seconds(2 * 60)
  static let environment = ["MDADM_NO_UDEV": "1", "MDADM_NO_SYSTEMCTL": "1"]

  public var runner: CommandRunner
  /// Where sysfs is mounted; tests point it at a fake tree.
  public var sysfsRoot: String

  public init(runner: CommandRunner, sysfsRoot: String = "/sys") {
    self.runner = runner
    self.sysfsRoot = sysfsRoot
  }

  // MARK: Lookups

  public func array(holding leg: String) throws(NVMeCSIError) -> String? {
    guard Self.isKernelName(leg) else {
      throw .invalidArgument("\(quoted(leg)) is not a kernel device name (like \"nvme1n1\")")
    }
    // A leg that is gone has no holders either.
    let holders = try Self.entries(of: sysfsRoot + "/block/" + leg + "/holders") ?? []
    return holders.first { $0.hasPrefix("md") }
  }

  public func superblock(on device: String) async throws(NVMeCSIError) -> MirrorSuperblock? {
    try Self.checkDevicePath(device)
    try SystemMounter.checkReadable(device)
    let arguments = ["--examine", "--export", device]
    let result = try await mdadm(arguments, timeout: Self.probeTimeout, accepting: [0, 1])
    if result.exitCode == 0 { return try Self.parseExamine(result.standardOutput, device: device) }
    guard result.standardError.contains("No md superblock detected on") else {
      throw .internalError(Self.failure(arguments, result))
    }
    // mdadm says the same of a device it could not read: it ignores read errors while
    // guessing the metadata type. Prove the "none" here before anyone trusts it.
    try await runner.pool.run { () throws(NVMeCSIError) in try Self.proveNoSuperblock(on: device) }
    return nil
  }

  public func status(of array: String) throws(NVMeCSIError) -> MirrorStatus {
    try Self.checkArrayName(array)
    let block = sysfsRoot + "/block/" + array
    let md = block + "/md"
    guard let entries = try Self.entries(of: md), let state = try Self.attribute(md + "/array_state"),
      state != "clear"
    else { throw .notFound("the kernel has no md array \(quoted(array))") }

    let legCount = try Self.number(md + "/raid_disks", as: Int.self)
    var members: [MirrorMember] = []
    for entry in entries where entry.hasPrefix("dev-") {
      // A member removed between the listing and now is simply not one any more.
      guard let flags = try Self.attribute(md + "/" + entry + "/state") else { continue }
      let recoveryStart = try Self.attribute(md + "/" + entry + "/recovery_start")
      members.append(
        MirrorMember(
          device: String(entry.dropFirst(4)), state: Self.memberState(flags: flags, recoveryStart: recoveryStart)))
    }
    // `degraded` and `sync_action` exist only while the array runs; an assembled but
    // inactive array reports its array_state ("inactive") as its sync action.
    let degraded =
      try Self.attribute(md + "/degraded").map { text throws(NVMeCSIError) in
        try Self.parse(text, as: Int.self, from: md + "/degraded")
      } ?? max(0, legCount - members.filter { $0.state == .inSync }.count)
    let syncAction = try Self.attribute(md + "/sync_action") ?? state
    let progress = try Self.attribute(md + "/sync_completed").flatMap(Self.parseProgress)
    let sectors = try Self.number(block + "/size", as: UInt64.self)
    return MirrorStatus(
      device: array, arrayUUID: try uuid(of: array), isRunning: try isRunning(array), legCount: legCount,
      members: members, degraded: degraded, syncAction: syncAction, syncProgress: progress, sizeBytes: sectors * 512)
  }

  // MARK: Creating and assembling

  public func create(uuid: ObjectUUID, legs: [String], dataOffsetBytes: UInt64, bitmapChunkBytes: UInt64)
    async throws(NVMeCSIError) -> String
  {
    // mdadm refuses a one-leg RAID1 without --force, which is never given.
    guard legs.count >= 2 else {
      throw .invalidArgument("a mirror needs at least two legs, got \(legs.count)")
    }
    // Blank legs already agree: no initial resync.
    return try await create(
      uuid: uuid, legs: legs, slots: legs, dataOffsetBytes: dataOffsetBytes, bitmapChunkBytes: bitmapChunkBytes,
      extra: ["--assume-clean"])
  }

  public func create(uuid: ObjectUUID, seed: String, legCount: Int, dataOffsetBytes: UInt64, bitmapChunkBytes: UInt64)
    async throws(NVMeCSIError) -> String
  {
    guard (2...ReplicaLayout.maximumReplicas).contains(legCount) else {
      throw .invalidArgument("a mirror has 2 to \(ReplicaLayout.maximumReplicas) legs, not \(legCount)")
    }
    // The seed alone, the other slots "missing": md starts it degraded with nothing to
    // resync, and copies the seed onto each leg `add` brings.
    return try await create(
      uuid: uuid, legs: [seed], slots: [seed] + Array(repeating: "missing", count: legCount - 1),
      dataOffsetBytes: dataOffsetBytes, bitmapChunkBytes: bitmapChunkBytes, extra: [])
  }

  /// `mdadm --create` over `slots` (the legs, or "missing"), once: a retry whose first
  /// attempt went through answers the running array.
  private func create(
    uuid: ObjectUUID, legs: [String], slots: [String], dataOffsetBytes: UInt64, bitmapChunkBytes: UInt64,
    extra: [String]
  ) async throws(NVMeCSIError) -> String {
    let names = try Self.legNames(legs)
    guard dataOffsetBytes > 0, dataOffsetBytes % 4096 == 0 else {
      throw .invalidArgument("the data offset must be a positive multiple of 4 KiB, got \(dataOffsetBytes) bytes")
    }
    guard bitmapChunkBytes >= 4096, bitmapChunkBytes.nonzeroBitCount == 1 else {
      throw .invalidArgument(
        "the bitmap chunk must be a power of two of at least 4 KiB, got \(bitmapChunkBytes) bytes")
    }
    let found = try holders(of: legs, names: names, uuid: uuid)
    if let running = found.running { return running }
    if let held = found.inactive.first {
      throw .failedPrecondition(
        "cannot create array \(uuid) over \(quoted(held.leg)): the inactive md array \(held.array) holds it, so it"
          + " is not blank")
    }
    let arguments =
      [
        // --run only suppresses the "Continue creating array?" question mdadm asks when a
        // leg looks used (there is no terminal to answer it): the caller proved each leg
        // blank or named it as the seed.
        "--create", Self.devicePath(uuid), "--run", "--level=1", "--raid-devices=\(slots.count)",
        "--metadata=1.2", "--bitmap=internal", "--bitmap-chunk=\(bitmapChunkBytes / 1024)K",
        "--data-offset=\(dataOffsetBytes / 1024)K",
      ] + extra + [
        "--uuid=" + Self.mdadmUUID(uuid), "--name=" + Self.arrayName(uuid),
        // The array moves between nodes, so no node is its home: record none (the default
        // would record whichever node created it).
        "--homehost=<none>",
      ] + slots
    _ = try await mdadm(arguments, timeout: Self.changeTimeout)
    return try runningArray(of: uuid, holding: legs, names: names, after: "mdadm --create")
  }

  public func assemble(uuid: ObjectUUID, legs: [String]) async throws(NVMeCSIError) -> String {
    try await assemble(uuid: uuid, legs: legs, withoutMissing: false)
  }

  public func assembleWithoutMissing(uuid: ObjectUUID, legs: [String]) async throws(NVMeCSIError) -> String {
    try await assemble(uuid: uuid, legs: legs, withoutMissing: true)
  }

  private func assemble(uuid: ObjectUUID, legs: [String], withoutMissing: Bool) async throws(NVMeCSIError) -> String {
    let names = try Self.legNames(legs)
    let found = try holders(of: legs, names: names, uuid: uuid)
    if let running = found.running { return running }
    // Inactive arrays holding a leg are leftovers (an interrupted or refused assembly, a
    // host's partial auto-assembly). They serve nothing but keep the legs busy.
    for inactive in Set(found.inactive.map { $0.array }).sorted() { try await stopInactive(inactive) }

    // Never --force or --scan, and --run only for members gone for good: md starts the
    // array only when the freshest superblocks among these legs say they are enough, so
    // a stale leg never wins.
    let arguments =
      ["--assemble", Self.devicePath(uuid), "--uuid=" + Self.mdadmUUID(uuid)] + (withoutMissing ? ["--run"] : [])
      + legs
    let result: CommandResult
    do {
      result = try await mdadm(arguments, timeout: Self.changeTimeout, accepting: [0, 1, 2])
    } catch {
      throw error.adding(await releaseLegs(names))
    }
    if result.exitCode == 0 {
      do {
        return try runningArray(of: uuid, holding: legs, names: names, after: "mdadm --assemble")
      } catch {
        throw error.adding(await releaseLegs(names))
      }
    }
    let released = await releaseLegs(names)
    guard Self.refusedToStart(result.standardError) else {
      throw NVMeCSIError.internalError(Self.failure(arguments, result)).adding(released)
    }
    throw .unavailable(
      "md refused to start array \(uuid) from \(legs.joined(separator: ", ")) (\(Self.output(of: result))"
        + "): a leg with fresher data may be missing, so nothing was started"
        + (released.isEmpty ? "" : " (\(released))") + "; the driver retries when the other legs answer")
  }

  // MARK: Changing

  public func add(_ leg: String, to array: String) async throws(NVMeCSIError) {
    let name = try Self.legName(leg)
    let current = try status(of: array)
    if let member = current.members.first(where: { $0.device == name }) {
      switch member.state {
      case .inSync, .rebuilding:
        return
      case .faulty:
        // md keeps a failed leg open; take it out by its kernel name, which works even
        // when its device node is gone.
        _ = try await mdadm(["/dev/" + array, "--remove", name], timeout: Self.changeTimeout)
      case .other(let state):
        throw .failedPrecondition(
          "\(quoted(leg)) is already a member of \(array) in state \(quoted(state)); leaving it as it is")
      }
    }
    // A recent member catches up through the write-intent bitmap.
    let reAdd = ["/dev/" + array, "--re-add", leg]
    let result = try await mdadm(reAdd, timeout: Self.changeTimeout, accepting: [0, 1])
    if result.exitCode == 0 { return }
    guard result.standardError.contains("is not possible") else {
      throw .internalError(Self.failure(reAdd, result))
    }
    // Blank, or too stale for the bitmap: a full copy, which writes a new superblock, so
    // never over another array's.
    let arrayUUID = try uuid(of: array)
    if let found = try await superblock(on: leg), found.arrayUUID != arrayUUID {
      throw .failedPrecondition(
        "\(quoted(leg)) holds the superblock of another md array (\(found.arrayUUID)), not of \(array)"
          + " (\(arrayUUID)); not adding it")
    }
    _ = try await mdadm(["/dev/" + array, "--add", leg], timeout: Self.changeTimeout)
  }

  public func removeFailed(from array: String) async throws(NVMeCSIError) {
    _ = try status(of: array)
    // Both succeed silently when there is nothing to remove.
    _ = try await mdadm(["/dev/" + array, "--remove", "failed"], timeout: Self.changeTimeout)
    _ = try await mdadm(["/dev/" + array, "--remove", "detached"], timeout: Self.changeTimeout)
  }

  public func stop(_ array: String) async throws(NVMeCSIError) {
    try Self.checkArrayName(array)
    // Not even opened when absent: opening /dev/mdN makes an empty array appear again.
    guard try isPresent(array) else { return }
    let arguments = ["--stop", "/dev/" + array]
    let result = try await mdadm(arguments, timeout: Self.changeTimeout, accepting: [0, 1])
    guard result.exitCode != 0, try isPresent(array) else { return }
    if result.standardError.contains("Cannot get exclusive access") || result.standardError.contains("Perhaps a") {
      throw .failedPrecondition(
        "cannot stop \(array): it is in use (mounted, or open by a process): \(Self.output(of: result))")
    }
    throw .internalError(Self.failure(arguments, result))
  }

  public func grow(_ array: String) async throws(NVMeCSIError) {
    _ = try status(of: array)
    _ = try await mdadm(["--grow", "/dev/" + array, "--size=max"], timeout: Self.changeTimeout)
  }

  // MARK: Helpers

  private func mdadm(_ arguments: [String], timeout: Duration, accepting codes: Set<Int32> = [0])
    async throws(NVMeCSIError) -> CommandResult
  {
    try await runner.run(
      "mdadm", arguments, timeout: timeout, acceptedExitCodes: codes, environment: Self.environment)
  }

  /// The arrays holding `legs` now: the running one (checked to be array `uuid`) and any
  /// inactive ones with the leg each holds.
  private func holders(of legs: [String], names: [String], uuid: ObjectUUID) throws(NVMeCSIError)
    -> (running: String?, inactive: [(leg: String, array: String)])
  {
    var inactive: [(leg: String, array: String)] = []
    for (leg, name) in zip(legs, names) {
      guard let holder = try array(holding: name) else { continue }
      guard try isRunning(holder) else {
        inactive.append((leg, holder))
        continue
      }
      let holderUUID = try self.uuid(of: holder)
      guard holderUUID == uuid else {
        throw .failedPrecondition(
          "\(quoted(leg)) is a member of the running md array \(holder), which is array \(holderUUID), not \(uuid)")
      }
      return (holder, inactive)
    }
    return (nil, inactive)
  }

  /// The array mdadm just started over `legs`, found through their holders.
  private func runningArray(of uuid: ObjectUUID, holding legs: [String], names: [String], after command: String)
    throws(NVMeCSIError) -> String
  {
    let found = try holders(of: legs, names: names, uuid: uuid)
    if let running = found.running { return running }
    let state = found.inactive.first.map { " (\($0.array) holds \(quoted($0.leg)) but is not running)" } ?? ""
    throw .internalError(
      "\(command) succeeded but no running md array holds \(legs.joined(separator: ", "))\(state)")
  }

  /// Stops the inactive arrays holding any of these legs, after a failed assembly; what
  /// could not be stopped, for the error message ("" when everything went).
  private func releaseLegs(_ names: [String]) async -> String {
    var failures: [String] = []
    var seen: Set<String> = []
    for name in names {
      do throws(NVMeCSIError) {
        guard let holder = try array(holding: name), seen.insert(holder).inserted, try isRunning(holder) == false
        else {
          continue
        }
        try await stopInactive(holder)
      } catch {
        failures.append(error.message)
      }
    }
    return failures.isEmpty ? "" : "the legs may still be held: " + failures.joined(separator: "; ")
  }

  /// `mdadm --stop` of an array that serves nothing, as cleanup: it runs even when the
  /// request was cancelled.
  private func stopInactive(_ array: String) async throws(NVMeCSIError) {
    let runner = self.runner
    let arguments = ["--stop", "/dev/" + array]
    _ = try await runner.pool.runToEnd { () throws(NVMeCSIError) in
      try runner.runHere(
        "mdadm", arguments, timeout: Self.changeTimeout, environment: Self.environment)
    }
  }

  private func isPresent(_ array: String) throws(NVMeCSIError) -> Bool {
    guard let state = try Self.attribute(sysfsRoot + "/block/" + array + "/md/array_state") else { return false }
    return state != "clear"
  }

  private func isRunning(_ array: String) throws(NVMeCSIError) -> Bool {
    let state = try Self.attribute(sysfsRoot + "/block/" + array + "/md/array_state")
    return state != nil && state != "clear" && state != "inactive"
  }

  /// The array's UUID as the kernel has it (`md/uuid`, the superblock's 16 bytes).
  private func uuid(of array: String) throws(NVMeCSIError) -> ObjectUUID {
    let path = sysfsRoot + "/block/" + array + "/md/uuid"
    guard let text = try Self.attribute(path) else { throw .notFound("the kernel has no md array \(quoted(array))") }
    guard let uuid = ObjectUUID(hexDigits: text) else {
      throw .internalError("sysfs attribute \(path) holds \(quoted(text)), not a UUID")
    }
    return uuid
  }

  // MARK: Names

  /// `/dev/md/nvmecsi-<16 hex digits>`: mdadm 4.2 refuses names longer than 32
  /// characters, and the link is only for people: the array is found through sysfs.
  static func devicePath(_ uuid: ObjectUUID) -> String { "/dev/md/" + arrayName(uuid) }
  /// The name kept in the superblock (at most 31 bytes there).
  static func arrayName(_ uuid: ObjectUUID) -> String { "nvmecsi-" + uuid.hexDigits.prefix(16) }

  /// mdadm's spelling of a UUID: four groups of 8 hex digits, in byte order.
  static func mdadmUUID(_ uuid: ObjectUUID) -> String {
    let digits = Array(uuid.hexDigits)
    return stride(from: 0, to: 32, by: 8).map { String(digits[$0..<$0 + 8]) }.joined(separator: ":")
  }

  /// A name sysfs has a directory for: no '/', not "." or "..", not empty.
  static func isKernelName(_ name: String) -> Bool {
    !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.contains("\0")
  }

  static func checkArrayName(_ array: String) throws(NVMeCSIError) {
    guard isKernelName(array), array.hasPrefix("md") else {
      throw .invalidArgument("\(quoted(array)) is not the kernel name of an md array (like \"md127\")")
    }
  }

  static func checkDevicePath(_ device: String) throws(NVMeCSIError) {
    guard device.hasPrefix("/"), !device.contains("\0") else {
      throw .invalidArgument("\(quoted(device)) is not an absolute device path")
    }
  }

  /// The kernel name of a leg given by path: the last component of the path it resolves to.
  static func legName(_ leg: String) throws(NVMeCSIError) -> String {
    try checkDevicePath(leg)
    let name = ((POSIX.resolved(leg) ?? leg) as NSString).lastPathComponent
    guard isKernelName(name) else { throw .invalidArgument("\(quoted(leg)) does not name a device") }
    return name
  }

  static func legNames(_ legs: [String]) throws(NVMeCSIError) -> [String] {
    guard !legs.isEmpty else { throw .invalidArgument("no legs given") }
    var names: [String] = []
    for leg in legs { names.append(try legName(leg)) }
    guard Set(names).count == names.count else {
      throw .invalidArgument("a leg is listed twice: \(legs.joined(separator: ", "))")
    }
    return names
  }

  // MARK: Parsing

  static func parseExamine(_ output: String, device: String) throws(NVMeCSIError) -> MirrorSuperblock {
    let fields = KeyValueList.dictionary(output, separator: "\n").mapValues {
      $0.trimmingCharacters(in: .whitespaces)
    }
    guard let uuidText = fields["MD_UUID"], let uuid = ObjectUUID(hexDigits: uuidText.filter { $0 != ":" }),
      let eventsText = fields["MD_EVENTS"], let events = UInt64(eventsText)
    else {
      throw .internalError(
        "mdadm found an md superblock on \(quoted(device)) but printed no array UUID and event count: "
          + quoted(output.trimmingCharacters(in: .whitespacesAndNewlines)))
    }
    return MirrorSuperblock(arrayUUID: uuid, events: events)
  }

  /// "faulty" → faulty; "in_sync" → in sync; "spare" (md's word for any member neither
  /// faulty nor in sync, one being recovered included) or a recovery under way → rebuilding.
  static func memberState(flags: String, recoveryStart: String?) -> MirrorMember.State {
    let set = Set(flags.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
    if set.contains("faulty") { return .faulty }
    if set.contains("in_sync") { return .inSync }
    if set.contains("spare") || (recoveryStart != nil && recoveryStart != "none") { return .rebuilding }
    return .other(flags)
  }

  /// "123 / 456" → (123, 456); "none" or "delayed" → nil.
  static func parseProgress(_ text: String) -> (done: UInt64, total: UInt64)? {
    let parts = text.split(separator: "/").map { $0.trimmingCharacters(in: .whitespaces) }
    guard parts.count == 2, let done = UInt64(parts[0]), let total = UInt64(parts[1]) else { return nil }
    return (done, total)
  }

  // MARK: sysfs

  /// A sysfs attribute without surrounding white space; nil when it does not exist.
  static func attribute(_ path: String) throws(NVMeCSIError) -> String? {
    let fd: Int32
    switch valueOrErrno({ open(path, O_RDONLY | O_CLOEXEC) }) {
    case .success(let opened): fd = opened
    case .failure(.noEntry), .failure(.notDirectory): return nil
    case .failure(let error): throw POSIX.internalError("cannot open sysfs attribute \(path)", error)
    }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
      switch valueOrErrno({ buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }) {
      case .success(0):
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
      case .success(let count): bytes += buffer[..<count]
      // A member's attributes vanish with it.
      case .failure(.noEntry), .failure(Errno(ENODEV)): return nil
      case .failure(let error): throw POSIX.internalError("cannot read sysfs attribute \(path)", error)
      }
    }
  }

  /// The names in a directory, sorted; nil when it does not exist.
  static func entries(of directory: String) throws(NVMeCSIError) -> [String]? {
    switch Directory.names(in: directory) {
    case .success(let names): return names
    case .failure(let error) where error == .noEntry || error == .notDirectory: return nil
    case .failure(let error): throw POSIX.internalError("cannot list \(quoted(directory))", error)
    }
  }

  static func number<T: FixedWidthInteger>(_ path: String, as type: T.Type) throws(NVMeCSIError) -> T {
    guard let text = try attribute(path) else { throw .internalError("sysfs attribute \(path) is missing") }
    return try parse(text, as: type, from: path)
  }

  static func parse<T: FixedWidthInteger>(_ text: String, as type: T.Type, from path: String)
    throws(NVMeCSIError) -> T
  {
    guard let value = T(text) else {
      throw .internalError("sysfs attribute \(path) holds \(quoted(text)), not a number")
    }
    return value
  }

  // MARK: Proving "no superblock"

  /// Fails unless the places md keeps superblocks in read back in full and hold no md
  /// magic (0xa92b4efc in either byte order). A device of size 0 (an NVMe namespace not
  /// identified yet) proves nothing.
  static func proveNoSuperblock(on device: String) throws(NVMeCSIError) {
    let fd = try SystemMounter.openDevice(device)
    defer { close(fd) }
    let size = try POSIX.size(of: fd, device)
    guard size > 0 else {
      throw .unavailable(
        "\(quoted(device)) reports size 0 (not identified yet?): cannot tell whether it is blank; retry")
    }
    var magic = [UInt8](repeating: 0, count: 4)
    for offset in superblockOffsets(size: size) {
      var done = 0
      while done < magic.count {
        let read = valueOrErrno {
          magic.withUnsafeMutableBytes {
            pread(fd, $0.baseAddress! + done, $0.count - done, off_t(offset) + off_t(done))
          }
        }
        switch read {
        case .success(0):
          throw .unavailable("\(quoted(device)) ended early at byte \(offset + UInt64(done)) of \(size); retry")
        case .success(let count): done += count
        case .failure(let error):
          throw NVMeCSIError(
            .unavailable,
            "cannot read \(quoted(device)) at byte \(offset) (\(error)) to check that mdadm's \"no superblock\""
              + " is true; retry once the path is healthy",
            cause: error)
        }
      }
      if magic == [0xfc, 0x4e, 0x2b, 0xa9] || magic == [0xa9, 0x2b, 0x4e, 0xfc] {
        throw .internalError(
          "mdadm found no md superblock on \(quoted(device)), yet md's magic number is at byte \(offset): a damaged"
            + " superblock or a read mdadm could not make; not taking the device for one without a superblock")
      }
    }
  }

  /// Where md superblocks live on a device of `size` bytes: 1.1 at the start, 1.2 at
  /// 4 KiB, 1.0 8 to 12 KiB before the end (4 KiB aligned), 0.90 64 to 128 KiB before the
  /// end (64 KiB aligned).
  static func superblockOffsets(size: UInt64) -> [UInt64] {
    let sectors = size / 512
    var offsets: [UInt64] = [0, 4096]
    if sectors >= 24 { offsets.append(((sectors - 16) & ~7) * 512) }
    if sectors >= 256 { offsets.append(((sectors & ~127) - 128) * 512) }
    return Set(offsets.filter { $0 + 4 <= size }).sorted()
  }

  /// The runner's wording for a tool that failed, for exit codes accepted to look at.
  static func failure(_ arguments: [String], _ result: CommandResult) -> String {
    let output = output(of: result)
    return "mdadm \(arguments.joined(separator: " ")) failed with exit code \(result.exitCode): "
      + (output.isEmpty ? "no output" : output)
  }

  /// mdadm's trimmed stderr, or its stdout when stderr is empty.
  static func output(of result: CommandResult) -> String {
    let error = result.standardError.trimmingCharacters(in: .whitespacesAndNewlines)
    return error.isEmpty ? result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) : error
  }

  /// Whether mdadm assembled the array but would not start it from these legs: "need all
  /// 2 to start it (use --run to insist)", "not enough to start the array".
  static func refusedToStart(_ standardError: String) -> Bool {
    let text = standardError.lowercased()
    return text.contains("use --run to insist") || text.contains("not enough to start")
      || text.contains("not enough devices to start")
  }
}

extension NVMeCSIError {
  /// The same error with `note` appended to its message (nothing when `note` is empty).
  fileprivate func adding(_ note: String) -> NVMeCSIError {
    guard !note.isEmpty else { return self }
    var copy = self
    copy.message += "; " + note
    return copy
  }
}
