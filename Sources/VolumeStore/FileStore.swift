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
///
/// Crash safety: data is built under a hidden temp name, fsynced and renamed into
/// place; the record is written last (atomically) and is the commit point. Deletion
/// removes the record first. So a crash leaves at most a hidden temp file or a data
/// file without a record: debris nobody sees, which `reconcile()` removes.
public final class FileStore: VolumeStore {
  public let kind = "file"
  public let root: String
  public let sharesBlocks: Bool
  private let failpoints: Failpoints

  private var volumesDir: String { root + "/volumes" }
  private var snapshotsDir: String { root + "/snapshots" }

  /// Opens (creating if needed) a store in `root`, which must be on a local file
  /// system nvmet can serve files from (ext4, xfs, btrfs; not tmpfs or overlayfs).
  public init(root: String, failpoints: Failpoints = .none) throws(NVMeCSIError) {
    guard root.hasPrefix("/") else {
      throw .invalidArgument("store directory \(quoted(root)) must be an absolute path")
    }
    self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
    self.failpoints = failpoints
    try FileOperations.makeDirectory(self.root)
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
    if let existing = try volume(uuid) { return existing }
    let sourcePath: String?
    switch record.source {
    case .snapshot(let s)?: sourcePath = dataPath(snapshotsDir, s)
    case .volume(let v)?: sourcePath = dataPath(volumesDir, v)
    case nil: sourcePath = nil
    }
    try buildData(at: dataPath(volumesDir, uuid), size: record.sizeBytes, copying: sourcePath)
    failpoints.reach("store.create-volume.after-data")
    try writeRecord(record, to: recordPath(volumesDir, uuid))
    return try readBack(volume(uuid), path: recordPath(volumesDir, uuid))
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
    if sizeBytes > current {
      let fd = open(path, O_RDWR | O_CLOEXEC)
      guard fd >= 0 else { throw DurableFile.failure("cannot open", path) }
      defer { close(fd) }
      guard ftruncate(fd, off_t(sizeBytes)) == 0 else { throw DurableFile.failure("cannot grow", path) }
      guard fsync(fd) == 0 else { throw DurableFile.failure("cannot fsync", path) }
    }
    failpoints.reach("store.expand-volume.after-data")
    let newSize = max(sizeBytes, current)
    if newSize > record.sizeBytes {
      record.sizeBytes = newSize
      try writeRecord(record, to: recordPath(volumesDir, uuid))
    }
    return record
  }

  public func deleteVolume(_ uuid: ObjectUUID) throws(NVMeCSIError) {
    try DurableFile.remove(recordPath(volumesDir, uuid))
    failpoints.reach("store.delete-volume.after-record")
    try DurableFile.remove(dataPath(volumesDir, uuid))
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
    if let existing: SnapshotRecord = try self.record(at: path) { return existing }
    let source = dataPath(volumesDir, record.sourceVolume)
    try buildData(at: dataPath(snapshotsDir, uuid), size: record.sizeBytes, copying: source)
    failpoints.reach("store.create-snapshot.after-data")
    try writeRecord(record, to: path)
    return try readBack(self.record(at: path), path: path)
  }

  public func deleteSnapshot(_ uuid: ObjectUUID) throws(NVMeCSIError) {
    try DurableFile.remove(recordPath(snapshotsDir, uuid))
    failpoints.reach("store.delete-snapshot.after-record")
    try DurableFile.remove(dataPath(snapshotsDir, uuid))
  }

  // MARK: startup

  public func reconcile() throws(NVMeCSIError) -> StoreRepairs {
    var repairs = StoreRepairs()
    for directory in [volumesDir, snapshotsDir] {
      let names = try FileOperations.list(directory)
      let recorded = Set(names.filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.map { String($0.dropLast(5)) })
      for name in names {
        let path = directory + "/" + name
        let isDebris =
          name.hasPrefix(".")  // unfinished temp file
          || (name.hasSuffix(".img") && !recorded.contains(String(name.dropLast(4))))  // data never committed
        if isDebris {
          try DurableFile.remove(path)
          repairs.removedDebris.append(path)
        }
      }
      for base in recorded.sorted() where !FileOperations.exists(directory + "/" + base + ".img") {
        repairs.missingData.append(directory + "/" + base + ".img")
      }
    }
    // Finish an expansion whose data grew before its record did.
    for var record in try volumes() {
      let uuid = record.uuid
      guard hasData(uuid) else { continue }
      let size = try FileOperations.size(of: dataPath(volumesDir, uuid))
      if size > record.sizeBytes {
        record.sizeBytes = size
        try writeRecord(record, to: recordPath(volumesDir, uuid))
      }
    }
    return repairs
  }

  // MARK: internals

  private func dataPath(_ directory: String, _ uuid: ObjectUUID) -> String { "\(directory)/\(uuid.value).img" }
  private func recordPath(_ directory: String, _ uuid: ObjectUUID) -> String { "\(directory)/\(uuid.value).json" }

  /// Builds a data file under a hidden temp name and renames it into place, so the
  /// final name only ever holds complete data.
  private func buildData(at path: String, size: UInt64, copying source: String?) throws(NVMeCSIError) {
    let directory = (path as NSString).deletingLastPathComponent
    let temp = directory + "/." + (path as NSString).lastPathComponent + ".tmp"
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
        guard ftruncate(fd, off_t(size)) == 0 else { throw DurableFile.failure("cannot size", temp) }
      }
      guard fsync(fd) == 0 else { throw DurableFile.failure("cannot fsync", temp) }
    } catch {
      unlink(temp)
      throw error
    }
    guard rename(temp, path) == 0 else {
      let error = DurableFile.failure("cannot rename into place", path)
      unlink(temp)
      throw error
    }
    try DurableFile.syncDirectory(directory)
  }

  /// What was just written, as every later read will see it (dates round to ms).
  private func readBack<R>(_ record: R?, path: String) throws(NVMeCSIError) -> R {
    guard let record else { throw .internalError("record \(path) vanished right after it was written") }
    return record
  }

  private func writeRecord<R: Encodable>(_ record: R, to path: String) throws(NVMeCSIError) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    encoder.dateEncodingStrategy = .millisecondsSince1970
    let data: Data
    do { data = try encoder.encode(record) } catch {
      throw .internalError("cannot encode record for \(path): \(error)")
    }
    try DurableFile.write(data, to: path)
  }

  private func record<R: Decodable>(at path: String) throws(NVMeCSIError) -> R? {
    guard let data = FileManager.default.contents(atPath: path) else {
      if FileOperations.exists(path) { throw .internalError("cannot read record \(path)") }
      return nil
    }
    let decoder = JSONDecoder()
    decoder.dateDecodingStrategy = .millisecondsSince1970
    do { return try decoder.decode(R.self, from: data) } catch {
      throw .internalError("record \(path) is corrupt (\(error)); move it aside to recover")
    }
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
