import Foundation
import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// Volumes as sparse files, snapshots and clones as reflinks (full sparse copies where
/// the file system cannot reflink).
///
/// Layout under the root directory:
///
///     volumes/<uuid>.img    the data nvmet serves        volumes/<uuid>.json    its record
///     snapshots/<uuid>.img  a frozen copy                snapshots/<uuid>.json  its record
///     store.json            the store's identity (written at first use)
///     quarantine/           what reconcile() could not explain, moved aside
///
/// Crash safety: the record is the commit point, and every unfinished step lives under
/// a hidden name, so a visible data file without a record is never debris.
/// - Create: data is built under `.<uuid>.img.tmp` (a copy is fsynced, blank data need
///   not be: `buildData`), the record is written (atomically), then the data is renamed
///   into place. A crash before the record leaves a hidden temp file (removed); after
///   it, reconcile finishes the rename.
/// - Delete: the data is renamed to `.<uuid>.img.deleting`, the record removed, the
///   data unlinked. A crash before the record is removed is undone (renamed back);
///   after it, the hidden file is removed.
/// - Anything else reconcile cannot explain (data without a record, a corrupt record)
///   is moved to quarantine/ and reported: never deleted.
public final class FileStore: VolumeStore {
  public let kind = "file"
  public let root: String
  public let sharesBlocks: Bool
  public let isNew: Bool
  /// This store's identity, from store.json.
  public let identity: StoreMarker
  private let failpoints: Failpoints

  private var volumesDir: String { root + "/volumes" }
  private var snapshotsDir: String { root + "/snapshots" }
  private var quarantineDir: String { root + "/quarantine" }
  static let markerName = "store.json"

  /// Opens (creating if needed) a store in `root`, which must be on a local file
  /// system nvmet can serve files from (ext4, xfs, btrfs; not tmpfs or overlayfs).
  /// With a `target` name the store belongs to that target: its marker records the
  /// name at first use, and a store marked for another target is refused.
  public init(root: String, target: String? = nil, failpoints: Failpoints = .none) throws(NVMeCSIError) {
    guard root.hasPrefix("/") else {
      throw .invalidArgument("store directory \(quoted(root)) must be an absolute path")
    }
    self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
    self.failpoints = failpoints
    // A missing directory is a file system not mounted yet or a typo, never "start afresh".
    guard FileOperations.exists(self.root) else {
      throw .failedPrecondition(
        "store directory \(self.root) does not exist: its file system is probably not mounted yet, or --store names"
          + " the wrong place (create the directory to start a new store)")
    }
    let markerPath = self.root + "/" + Self.markerName
    if FileOperations.exists(markerPath) {
      var marker: StoreMarker
      do { marker = try Self.decode(StoreMarker.self, at: markerPath) } catch {
        throw .failedPrecondition(
          "\(markerPath) is not an nvme-csi store marker (\(error.message)): --store must name this driver's store")
      }
      if let target, let owner = marker.target, owner != target {
        throw .failedPrecondition(
          "the store in \(self.root) belongs to target \(quoted(owner)) (store \(marker.uuid)), not to \(quoted(target)):"
            + " --store names another target's store; refusing to touch it or nvmet")
      }
      if let target, marker.target == nil {
        marker.target = target  // a marker from before names: this target adopts it
        try Self.write(marker, to: markerPath)
      }
      self.identity = marker
      self.isNew = false
    } else {
      // A store from before markers holds volumes: adopt it. Otherwise it is new.
      let volumes = self.root + "/volumes"
      let existing = FileOperations.exists(volumes) ? try FileOperations.list(volumes) : []
      self.isNew = existing.isEmpty
      self.identity = StoreMarker(uuid: .random(), created: Date(), target: target)
      try Self.write(identity, to: markerPath)
    }
    try FileOperations.makeDirectory(self.root + "/volumes")
    try FileOperations.makeDirectory(self.root + "/snapshots")
    self.sharesBlocks = FileOperations.supportsReflink(in: self.root + "/volumes")
  }

  public func capacity() throws(NVMeCSIError) -> StoreCapacity {
    var fs = statvfs()
    guard statvfs(root, &fs) == 0 else { throw DurableFile.failure("cannot statvfs", root) }
    let unit = UInt64(fs.f_frsize)
    return StoreCapacity(totalBytes: UInt64(fs.f_blocks) * unit, availableBytes: UInt64(fs.f_bavail) * unit)
  }

  // MARK: volumes

  public func volumes() throws(NVMeCSIError) -> [VolumeRecord] {
    try records(in: volumesDir)
  }

  public func volume(_ uuid: ObjectUUID) throws(NVMeCSIError) -> VolumeRecord? {
    try record(at: recordPath(volumesDir, uuid))
  }

  public func createVolume(_ record: VolumeRecord) throws(NVMeCSIError) -> VolumeRecord {
    let uuid = record.uuid
    if let existing = try volume(uuid) {
      try finishCreate(dataPath(volumesDir, uuid))
      return existing
    }
    let sourcePath: String?
    switch record.source {
    case .snapshot(let s)?: sourcePath = dataPath(snapshotsDir, s)
    case .volume(let v)?: sourcePath = dataPath(volumesDir, v)
    case nil: sourcePath = nil
    }
    let data = dataPath(volumesDir, uuid)
    try buildData(at: Self.building(data), size: record.sizeBytes, copying: sourcePath)
    failpoints.reach("store.create-volume.after-data")
    let written = try writeRecord(record, to: recordPath(volumesDir, uuid))
    try finishCreate(data)
    return try Self.decode(VolumeRecord.self, from: written, path: recordPath(volumesDir, uuid))
  }

  public func updateVolume(_ record: VolumeRecord) throws(NVMeCSIError) {
    let uuid = record.uuid
    guard try volume(uuid) != nil else { throw .notFound("volume \(uuid) does not exist on this target") }
    try writeRecord(record, to: recordPath(volumesDir, uuid))
  }

  public func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) throws(NVMeCSIError) -> VolumeRecord {
    guard var record = try volume(uuid) else { throw .notFound("volume \(uuid) does not exist on this target") }
    let path = dataPath(volumesDir, uuid)
    // The data may already be larger than the record after a crash mid-expansion.
    let current = try FileOperations.size(of: path)
    if sizeBytes > current { try grow(path, to: sizeBytes) }
    failpoints.reach("store.expand-volume.after-data")
    let newSize = max(sizeBytes, current)
    if newSize > record.sizeBytes {
      record.sizeBytes = newSize
      try writeRecord(record, to: recordPath(volumesDir, uuid))
    }
    return record
  }

  public func deleteVolume(_ uuid: ObjectUUID) throws(NVMeCSIError) {
    try delete(uuid, in: volumesDir, failpoint: "store.delete-volume.after-record")
  }

  public func devicePath(of uuid: ObjectUUID) -> String { dataPath(volumesDir, uuid) }

  public func hasData(_ uuid: ObjectUUID) -> Bool { FileOperations.exists(dataPath(volumesDir, uuid)) }

  // MARK: snapshots

  public func snapshots() throws(NVMeCSIError) -> [SnapshotRecord] {
    try records(in: snapshotsDir)
  }

  public func createSnapshot(_ record: SnapshotRecord) throws(NVMeCSIError) -> SnapshotRecord {
    let uuid = record.uuid
    let path = recordPath(snapshotsDir, uuid)
    let data = dataPath(snapshotsDir, uuid)
    if let existing: SnapshotRecord = try self.record(at: path) {
      try finishCreate(data)
      return existing
    }
    let source = dataPath(volumesDir, record.sourceVolume)
    try buildData(at: Self.building(data), size: record.sizeBytes, copying: source)
    failpoints.reach("store.create-snapshot.after-data")
    let written = try writeRecord(record, to: path)
    try finishCreate(data)
    return try Self.decode(SnapshotRecord.self, from: written, path: path)
  }

  public func deleteSnapshot(_ uuid: ObjectUUID) throws(NVMeCSIError) {
    try delete(uuid, in: snapshotsDir, failpoint: "store.delete-snapshot.after-record")
  }

  /// Data aside under its hidden name, record removed (the commit), data unlinked.
  /// The unlink is not synced: if a crash loses it, `reconcile` removes the hidden data.
  private func delete(_ uuid: ObjectUUID, in directory: String, failpoint: String) throws(NVMeCSIError) {
    let data = dataPath(directory, uuid)
    try moveAside(data, to: Self.deleting(data))
    try DurableFile.remove(recordPath(directory, uuid))
    failpoints.reach(failpoint)
    try DurableFile.remove(Self.deleting(data), durably: false)
  }

  // MARK: startup

  public func quarantinedVolumes() throws(NVMeCSIError) -> [ObjectUUID: String] {
    guard FileOperations.exists(quarantineDir) else { return [:] }
    var volumes: [ObjectUUID: String] = [:]
    for name in try FileOperations.list(quarantineDir) where name.hasPrefix("volume-") {
      let base = name.dropFirst("volume-".count).split(separator: ".").first.map(String.init) ?? ""
      if let uuid = try? ObjectUUID(base) {
        volumes[uuid] = "its files were moved to \(quarantineDir) (\(name), …): restore or remove them"
      }
    }
    return volumes
  }

  public func reconcile() throws(NVMeCSIError) -> StoreRepairs {
    var repairs = StoreRepairs()
    var volumeRecords: [VolumeRecord] = []  // decoded once here, for the expansions below
    for directory in [volumesDir, snapshotsDir] {
      let names = try FileOperations.list(directory)
      // Records that decode; a corrupt one is moved aside with its data.
      var recorded: Set<String> = []
      let recordNames = names.filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }
      let paths = recordNames.map { directory + "/" + $0 }
      let failures: [NVMeCSIError?]
      if directory == volumesDir {
        let decoded = Self.decodeAll(VolumeRecord.self, at: paths)
        volumeRecords += decoded.compactMap { try? $0.get() }
        failures = decoded.map(\.failure)
      } else {
        failures = Self.decodeAll(SnapshotRecord.self, at: paths).map(\.failure)
      }
      for (name, failure) in zip(recordNames, failures) {
        let base = String(name.dropLast(5))
        guard let failure else {
          recorded.insert(base)
          continue
        }
        for file in [name, base + ".img"] where FileOperations.exists(directory + "/" + file) {
          repairs.quarantined.append(try quarantine(directory + "/" + file, reason: failure.message))
        }
      }
      for name in names where name.hasPrefix(".") {
        let path = directory + "/" + name
        // Only what this store's own steps leave behind is finished or removed.
        if let data = Self.unhidden(name, suffix: ".tmp") ?? Self.unhidden(name, suffix: ".deleting"),
          data.hasSuffix(".img")
        {
          let base = String(data.dropLast(4))
          if recorded.contains(base) && !FileOperations.exists(directory + "/" + data) {
            try moveAside(path, to: directory + "/" + data)
            repairs.completed.append("\(path) → \(directory)/\(data)")
          } else {
            try DurableFile.remove(path)
            repairs.removedDebris.append(path)
          }
        } else if name.hasSuffix(".json.tmp") || name.hasPrefix(".reflink-probe-") {
          try DurableFile.remove(path)
          repairs.removedDebris.append(path)
        }
      }
      for name in names where name.hasSuffix(".img") && !name.hasPrefix(".") {
        // (A corrupt record's data was moved aside with it above.)
        guard !recorded.contains(String(name.dropLast(4))), FileOperations.exists(directory + "/" + name) else {
          continue
        }
        repairs.quarantined.append(
          try quarantine(directory + "/" + name, reason: "data without a record (its record is lost or corrupt)"))
      }
      for base in recorded.sorted() where !FileOperations.exists(directory + "/" + base + ".img") {
        repairs.missingData.append(directory + "/" + base + ".img")
      }
    }
    for index in volumeRecords.indices {
      let uuid = volumeRecords[index].uuid
      guard hasData(uuid) else { continue }
      let path = dataPath(volumesDir, uuid)
      let size = try FileOperations.size(of: path)
      if size > volumeRecords[index].sizeBytes {
        // Finish an expansion whose data grew before its record did.
        volumeRecords[index].sizeBytes = size
        try writeRecord(volumeRecords[index], to: recordPath(volumesDir, uuid))
      } else if size < volumeRecords[index].sizeBytes {
        // A new blank volume whose size a crash lost before its first sync (buildData).
        try grow(path, to: volumeRecords[index].sizeBytes)
        repairs.completed.append(
          "\(path) grown from \(size) to its recorded \(volumeRecords[index].sizeBytes) bytes"
            + " (a crash lost its size before its first sync)")
      }
    }
    repairs.volumes = volumeRecords
    return repairs
  }

  // MARK: internals

  private func dataPath(_ directory: String, _ uuid: ObjectUUID) -> String { "\(directory)/\(uuid.value).img" }
  private func recordPath(_ directory: String, _ uuid: ObjectUUID) -> String { "\(directory)/\(uuid.value).json" }

  /// Grows the file at `path` to `size` bytes, durably.
  private func grow(_ path: String, to size: UInt64) throws(NVMeCSIError) {
    guard let length = off_t(exactly: size) else {
      throw .outOfRange("size \(size) bytes is larger than a file can be (\(off_t.max) bytes)")
    }
    let fd = open(path, O_RDWR | O_CLOEXEC)
    guard fd >= 0 else { throw DurableFile.failure("cannot open", path) }
    defer { close(fd) }
    guard ftruncate(fd, length) == 0 else { throw DurableFile.failure("cannot grow", path) }
    guard fsync(fd) == 0 else { throw DurableFile.failure("cannot fsync", path) }
  }

  /// Builds complete data at `temp` (a hidden name) for `finishCreate` to rename into
  /// place once the record is written.
  ///
  /// A copy is fsynced. Blank data is not: zeros are zeros whatever a crash keeps, its
  /// name is made durable by the record's directory sync (same directory, later), and
  /// a size lost in a crash before the first sync is restored by `reconcile`, which
  /// grows data shorter than its record (never legitimately so: an expansion grows the
  /// data, durably, before the record). One fsync fewer per create: 4 device flushes
  /// instead of 6 on a loop-mounted XFS.
  private func buildData(at temp: String, size: UInt64, copying source: String?) throws(NVMeCSIError) {
    guard let length = off_t(exactly: size) else {
      throw .outOfRange("size \(size) bytes is larger than a file can be (\(off_t.max) bytes)")
    }
    unlink(temp)
    let fd = open(temp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw DurableFile.failure("cannot create", temp) }
    do throws(NVMeCSIError) {
      defer { close(fd) }
      if let source {
        let src = open(source, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else {
          throw errno == ENOENT
            ? .notFound("the source's data \(source) is missing on this target")
            : DurableFile.failure("cannot open", source)
        }
        defer { close(src) }
        try FileOperations.copyContents(from: src, to: fd, srcPath: source, dstPath: temp)
      }
      if try FileOperations.size(ofDescriptor: fd, path: temp) < size {
        guard ftruncate(fd, length) == 0 else { throw DurableFile.failure("cannot size", temp) }
      }
      if source != nil {
        guard fsync(fd) == 0 else { throw DurableFile.failure("cannot fsync", temp) }
      }
    } catch {
      unlink(temp)
      throw error
    }
  }

  /// Renames the data built for a committed record into place (nothing to do when it
  /// is there already).
  ///
  /// Not synced: the record, already durable, is the commit. A rename lost in a crash
  /// leaves the record and the hidden data, and `reconcile` finishes it; the one
  /// directory fsync saved is a quarter of a create's syncs.
  private func finishCreate(_ data: String) throws(NVMeCSIError) {
    guard !FileOperations.exists(data) else { return }
    try moveAside(Self.building(data), to: data, durably: false)
  }

  /// Renames, durably unless asked not to (the directory is fsynced); a missing source
  /// is success.
  private func moveAside(_ path: String, to destination: String, durably: Bool = true) throws(NVMeCSIError) {
    if rename(path, destination) != 0 {
      if errno == ENOENT { return }
      throw DurableFile.failure("cannot rename \(path) to", destination)
    }
    if durably { try DurableFile.syncDirectory((destination as NSString).deletingLastPathComponent) }
  }

  /// Moves an unexplained file into quarantine/ (never over an earlier one).
  private func quarantine(_ path: String, reason: String) throws(NVMeCSIError) -> Quarantined {
    try FileOperations.makeDirectory(quarantineDir)
    let name = (path as NSString).lastPathComponent
    let kind = (path as NSString).deletingLastPathComponent.hasSuffix("/snapshots") ? "snapshot-" : "volume-"
    var destination = quarantineDir + "/" + kind + name
    var attempt = 1
    while FileOperations.exists(destination) {
      attempt += 1
      destination = quarantineDir + "/" + kind + name + ".\(attempt)"
    }
    try moveAside(path, to: destination)
    try DurableFile.syncDirectory((path as NSString).deletingLastPathComponent)
    let base = name.split(separator: ".").first.map(String.init) ?? ""
    let volume = kind == "volume-" ? try? ObjectUUID(base) : nil
    return Quarantined(volume: volume, originalPath: path, movedTo: destination, reason: reason)
  }

  /// Where data is built before its record exists, and kept while it is being deleted.
  static func building(_ data: String) -> String { hidden(data, suffix: ".tmp") }
  static func deleting(_ data: String) -> String { hidden(data, suffix: ".deleting") }

  private static func hidden(_ path: String, suffix: String) -> String {
    let directory = (path as NSString).deletingLastPathComponent
    return directory + "/." + (path as NSString).lastPathComponent + suffix
  }

  /// "x.img" for ".x.img<suffix>"; nil for a name that is not hidden or lacks the suffix.
  static func unhidden(_ name: String, suffix: String) -> String? {
    guard name.hasPrefix("."), name.hasSuffix(suffix), name.count > suffix.count + 1 else { return nil }
    return String(name.dropFirst().dropLast(suffix.count))
  }

  /// What was just written, as every later read will see it (dates round to ms).
  /// Writes the record durably; answers the bytes written, which decode to exactly what
  /// a later read returns (dates are stored in milliseconds), without reading it back.
  @discardableResult
  private func writeRecord<R: Encodable>(_ record: R, to path: String) throws(NVMeCSIError) -> Data {
    try Self.write(record, to: path)
  }

  @discardableResult
  static func write<R: Encodable>(_ record: R, to path: String) throws(NVMeCSIError) -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    encoder.dateEncodingStrategy = .millisecondsSince1970
    let data: Data
    do { data = try encoder.encode(record) } catch {
      throw .internalError("cannot encode record for \(path): \(error)")
    }
    try DurableFile.write(data, to: path)
    return data
  }

  private func record<R: Decodable>(at path: String) throws(NVMeCSIError) -> R? {
    guard FileOperations.exists(path) else { return nil }
    return try Self.decode(R.self, at: path)
  }

  /// A record file's content; a corrupt one is `internalError` naming the file (the
  /// target quarantines it at its next start).
  static func decode<R: Decodable>(_ type: R.Type, at path: String) throws(NVMeCSIError) -> R {
    guard let data = FileManager.default.contents(atPath: path) else {
      throw .internalError("cannot read record \(path)")
    }
    return try decode(type, from: data, path: path)
  }

  /// A record from the bytes of its file at `path`.
  static func decode<R: Decodable>(_ type: R.Type, from data: Data, path: String) throws(NVMeCSIError) -> R {
    let decoder = JSONDecoder()
    decoder.dateDecodingStrategy = .millisecondsSince1970
    do { return try decoder.decode(R.self, from: data) } catch {
      throw .internalError("record \(path) is corrupt (\(error)); a target restart moves it to quarantine/")
    }
  }

  /// The records at `paths`, in their order, decoded on every core: at a target's
  /// start with 100,000 volumes, decoding their records is most of the wait.
  static func decodeAll<R: Decodable & Sendable>(_ type: R.Type, at paths: [String]) -> [Result<R, NVMeCSIError>] {
    paths.mapOnEveryCore { path in Result { () throws(NVMeCSIError) in try decode(type, at: path) } }
  }

  private func records<R: Decodable>(in directory: String) throws(NVMeCSIError) -> [R] {
    var out: [R] = []
    for name in try FileOperations.list(directory) where name.hasSuffix(".json") && !name.hasPrefix(".") {
      // A record may vanish between listing and reading (concurrent delete).
      if let r: R = try record(at: directory + "/" + name) { out.append(r) }
    }
    return out
  }
}

/// What store.json says: which store this is, written once at first use.
public struct StoreMarker: Codable, Sendable, Equatable {
  public var format = 1
  public var uuid: ObjectUUID
  public var created: Date
  /// The target (`--name`) that owns the store; nil in markers written before names.
  public var target: String?

  public init(uuid: ObjectUUID, created: Date, target: String? = nil) {
    self.uuid = uuid
    self.created = created
    self.target = target
  }
}

extension Result {
  fileprivate var failure: Failure? {
    if case .failure(let error) = self { error } else { nil }
  }
}
