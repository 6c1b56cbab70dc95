import Foundation
import NVMeCSICore

/// Volumes as LVM thin volumes in one thin pool; snapshots and clones as thin
/// snapshots (they share blocks with their source).
///
/// The record of each object lives in its LV's tags, so data and record are one LVM
/// object: every create, update and delete is a single LVM command, and LVM commits
/// each command's metadata atomically. The only two-step operation is a clone larger
/// than its source (snapshot, then extend); its wanted size is in the tags, and
/// `reconcile()` finishes the extension after a crash.
///
/// Tags (LVM allows `[A-Za-z0-9_+.-/=!:&#]`, so free text is hex-encoded):
///
///     nvmecsi.owner=<owner>  nvmecsi.kind=volume|snapshot  nvmecsi.name=<hex>
///     nvmecsi.created=<ms>   nvmecsi.size=<bytes>          nvmecsi.source=snapshot:<uuid>|volume:<uuid>
///     nvmecsi.pub=<hex node id>:<hex host nqn>:<0|1>       nvmecsi.attr=<hex key>:<hex value>
///     nvmecsi.sharing=single-node|multi-node
///
/// Snapshots carry the same tags but publications and sharing (their source is always
/// `volume:<uuid>`), attributes included.
///
/// LVs are named `nvmecsi-v-<uuid>` and `nvmecsi-s-<uuid>`. Sizes are whole extents:
/// give the volume group 1 MiB extents (`vgcreate -s 1M`) to match the driver's MiB
/// alignment.
public final class LVMThinStore: VolumeStore {
  public let kind = "lvm"
  public let sharesBlocks = true
  /// Records live in the LVs' own tags, so an empty store is one with no LV of ours.
  public let isNew: Bool
  public let volumeGroup: String
  public let thinPool: String
  /// Which LVs of the volume group belong to this store.
  public let owner: String
  private let lvm: LVMCommand
  private let failpoints: Failpoints

  /// `spec` is `<vg>/<thinpool>` (from `--store lvm:<vg>/<thinpool>`).
  public init(spec: String, lvm: LVMCommand, owner: String = "nvme-csi", failpoints: Failpoints = .none)
    throws(NVMeCSIError)
  {
    let parts = spec.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    guard parts.count == 2, parts.allSatisfy(Self.isLVMName), Self.isTagValue(owner) else {
      throw .invalidArgument("LVM store \(quoted(spec)) is not <volume-group>/<thin-pool>")
    }
    self.volumeGroup = parts[0]
    self.thinPool = parts[1]
    self.owner = owner
    self.failpoints = failpoints
    self.lvm = lvm
    let poolName = parts[1]
    let pool = try lvm.report(parts[0], fields: "lv_name,lv_attr").first { $0["lv_name"] == poolName }
    guard let pool, pool["lv_attr"]?.hasPrefix("t") == true else {
      throw .failedPrecondition(
        "\(spec) is not an LVM thin pool: "
          + "create one, e.g. `lvcreate -T \(spec) -L <size>` on a volume group with 1 MiB extents"
      )
    }
    let ownerTag = "nvmecsi.owner=\(owner)"
    let rows = try lvm.report(parts[0], fields: "lv_tags")
    self.isNew = !rows.contains { ($0["lv_tags"] ?? "").split(separator: ",").contains(Substring(ownerTag)) }
  }

  public func capacity() throws(NVMeCSIError) -> StoreCapacity {
    guard
      let pool = try lvm.report(volumeGroup, fields: "lv_name,lv_size,data_percent").first(where: {
        $0["lv_name"] == thinPool
      }),
      let size = pool["lv_size"].flatMap(UInt64.init)
    else { throw .internalError("thin pool \(volumeGroup)/\(thinPool) vanished") }
    let used = Double(pool["data_percent"] ?? "0") ?? 0
    return StoreCapacity(totalBytes: size, availableBytes: UInt64(Double(size) * max(0, 100 - used) / 100))
  }

  // MARK: volumes

  public func volumes() throws(NVMeCSIError) -> [VolumeRecord] {
    try objects().compactMap(\.volume)
  }

  public func volume(_ uuid: ObjectUUID) throws(NVMeCSIError) -> VolumeRecord? {
    try objects().first { $0.lvName == Self.volumeLV(uuid) }?.volume
  }

  public func createVolume(_ record: VolumeRecord) throws(NVMeCSIError) -> VolumeRecord {
    let uuid = record.uuid
    if let existing = try volume(uuid) { return existing }
    let name = Self.volumeLV(uuid)
    let tags = Self.tags(of: record, owner: owner)
    switch record.source {
    case nil:
      try lvm.run(
        ["lvcreate", "-y", "-T", "\(volumeGroup)/\(thinPool)", "-V", "\(record.sizeBytes)B", "-n", name] + addTags(tags)
      )
    case let source?:
      let sourceLV =
        switch source {
        case .snapshot(let s): Self.snapshotLV(s)
        case .volume(let v): Self.volumeLV(v)
        }
      guard try objects().contains(where: { $0.lvName == sourceLV }) else {
        throw .notFound("the source \(sourceLV) is missing on this target")
      }
      try lvm.run(["lvcreate", "-y", "-s", "\(volumeGroup)/\(sourceLV)", "-n", name, "-kn", "-ay"] + addTags(tags))
      failpoints.reach("store.create-volume.after-data")
      try growIfNeeded(name, to: record.sizeBytes)
    }
    guard let created = try volume(uuid) else {
      throw .internalError("LV \(volumeGroup)/\(name) vanished after lvcreate")
    }
    return created
  }

  public func updateVolume(_ record: VolumeRecord) throws(NVMeCSIError) {
    let uuid = record.uuid
    guard let object = try objects().first(where: { $0.lvName == Self.volumeLV(uuid) }) else {
      throw .notFound("volume \(uuid) does not exist on this target")
    }
    let wanted = Set(Self.tags(of: record, owner: owner))
    let current = Set(object.tags)
    let remove = current.subtracting(wanted).sorted()
    let add = wanted.subtracting(current).sorted()
    guard !remove.isEmpty || !add.isEmpty else { return }
    // One lvchange: LVM commits all tag changes together.
    try lvm.run(
      ["lvchange"] + remove.flatMap { ["--deltag", $0] } + addTags(add) + ["\(volumeGroup)/\(object.lvName)"])
  }

  public func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) throws(NVMeCSIError) -> VolumeRecord {
    guard var record = try volume(uuid) else { throw .notFound("volume \(uuid) does not exist on this target") }
    if sizeBytes > record.sizeBytes {
      record.sizeBytes = sizeBytes
      try updateVolume(record)  // wanted size first: reconcile finishes a crashed extension
      try growIfNeeded(Self.volumeLV(uuid), to: sizeBytes)
      failpoints.reach("store.expand-volume.after-data")
    }
    return try volume(uuid) ?? record
  }

  public func deleteVolume(_ uuid: ObjectUUID) throws(NVMeCSIError) {
    try remove(Self.volumeLV(uuid))
  }

  public func devicePath(of uuid: ObjectUUID) -> String { "/dev/\(volumeGroup)/\(Self.volumeLV(uuid))" }

  public func hasData(_ uuid: ObjectUUID) -> Bool { FileManager.default.fileExists(atPath: devicePath(of: uuid)) }

  // MARK: snapshots

  public func snapshots() throws(NVMeCSIError) -> [SnapshotRecord] {
    try objects().compactMap(\.snapshot)
  }

  public func createSnapshot(_ record: SnapshotRecord) throws(NVMeCSIError) -> SnapshotRecord {
    let uuid = record.uuid
    let name = Self.snapshotLV(uuid)
    if let existing = try objects().first(where: { $0.lvName == name })?.snapshot { return existing }
    let source = Self.volumeLV(record.sourceVolume)
    guard try objects().contains(where: { $0.lvName == source }) else {
      throw .notFound("the source volume \(record.sourceVolume) is missing on this target")
    }
    // Thin snapshots are created with the activation-skip flag: they need no device.
    try lvm.run(
      ["lvcreate", "-y", "-s", "\(volumeGroup)/\(source)", "-n", name] + addTags(Self.tags(of: record, owner: owner)))
    guard let created = try objects().first(where: { $0.lvName == name })?.snapshot else {
      throw .internalError("LV \(volumeGroup)/\(name) vanished after lvcreate")
    }
    return created
  }

  public func deleteSnapshot(_ uuid: ObjectUUID) throws(NVMeCSIError) {
    try remove(Self.snapshotLV(uuid))
  }

  // MARK: startup

  /// Nothing is ever moved aside: every LVM step is one atomic command.
  public func quarantinedVolumes() throws(NVMeCSIError) -> [ObjectUUID: String] { [:] }

  /// Finishes interrupted extensions and activates volumes (after a reboot LVs may be
  /// inactive). There is no other debris: every other step is one LVM command.
  public func reconcile() throws(NVMeCSIError) -> StoreRepairs {
    var repairs = StoreRepairs()
    for object in try objects() {
      guard let volume = object.volume else { continue }
      if object.lvSize < volume.sizeBytes {
        try growIfNeeded(object.lvName, to: volume.sizeBytes)
        repairs.removedDebris.append("\(volumeGroup)/\(object.lvName): finished growing to \(volume.sizeBytes) bytes")
      }
      let device = "/dev/\(volumeGroup)/\(object.lvName)"
      if !FileManager.default.fileExists(atPath: device) {
        // Activation failing is reported with the volume, not fatal: the others still serve.
        do { try lvm.run(["lvchange", "-ay", "-K", "\(volumeGroup)/\(object.lvName)"]) } catch {
          repairs.missingData.append("\(device) (activation failed: \(error.message))")
          continue
        }
        if !FileManager.default.fileExists(atPath: device) { repairs.missingData.append(device) }
      }
    }
    return repairs
  }

  // MARK: internals

  struct Object {
    var lvName: String
    var lvSize: UInt64
    var tags: [String]
    var volume: VolumeRecord?
    var snapshot: SnapshotRecord?
  }

  /// This store's LVs with their records decoded from tags.
  private func objects() throws(NVMeCSIError) -> [Object] {
    try lvm.report(volumeGroup, fields: "lv_name,lv_size,lv_tags").compactMap { row -> Object? in
      let tags = (row["lv_tags"] ?? "").split(separator: ",").map(String.init)
      guard tags.contains("nvmecsi.owner=\(owner)"), let name = row["lv_name"] else { return nil }
      var object = Object(lvName: name, lvSize: UInt64(row["lv_size"] ?? "") ?? 0, tags: tags)
      Self.decode(&object)
      return object
    }
  }

  private func growIfNeeded(_ lv: String, to sizeBytes: UInt64) throws(NVMeCSIError) {
    guard let row = try lvm.report(volumeGroup, fields: "lv_name,lv_size").first(where: { $0["lv_name"] == lv }),
      let size = row["lv_size"].flatMap(UInt64.init)
    else { throw .notFound("LV \(volumeGroup)/\(lv) does not exist") }
    if size < sizeBytes { try lvm.run(["lvextend", "-L", "\(sizeBytes)B", "\(volumeGroup)/\(lv)"]) }
  }

  private func remove(_ lv: String) throws(NVMeCSIError) {
    guard try objects().contains(where: { $0.lvName == lv }) else { return }
    try lvm.run(["lvremove", "-y", "\(volumeGroup)/\(lv)"])
  }

  private func addTags(_ tags: [String]) -> [String] { tags.flatMap { ["--addtag", $0] } }

  static func volumeLV(_ uuid: ObjectUUID) -> String { "nvmecsi-v-" + uuid.value }
  static func snapshotLV(_ uuid: ObjectUUID) -> String { "nvmecsi-s-" + uuid.value }

  static func isLVMName(_ s: String) -> Bool {
    !s.isEmpty && s.count <= 127 && !s.hasPrefix("-")
      && s.unicodeScalars.allSatisfy {
        CharacterSet.alphanumerics.contains($0) && $0.isASCII || "+_.-".unicodeScalars.contains($0)
      }
  }

  static func isTagValue(_ s: String) -> Bool {
    !s.isEmpty
      && s.unicodeScalars.allSatisfy {
        ($0.isASCII && CharacterSet.alphanumerics.contains($0)) || "_+.-".unicodeScalars.contains($0)
      }
  }

  // MARK: tag encoding

  static func hex(_ s: String) -> String { s.utf8.map { String(format: "%02x", $0) }.joined() }

  static func unhex(_ s: Substring) -> String? {
    var bytes: [UInt8] = []
    var index = s.startIndex
    while index < s.endIndex {
      let next = s.index(index, offsetBy: 2, limitedBy: s.endIndex) ?? s.endIndex
      guard let byte = UInt8(s[index..<next], radix: 16) else { return nil }
      bytes.append(byte)
      index = next
    }
    return String(bytes: bytes, encoding: .utf8)
  }

  static func milliseconds(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded(.down)) }

  static func tags(of r: VolumeRecord, owner: String) -> [String] {
    var tags = [
      "nvmecsi.owner=\(owner)", "nvmecsi.kind=volume", "nvmecsi.name=\(hex(r.name))",
      "nvmecsi.created=\(milliseconds(r.created))", "nvmecsi.size=\(r.sizeBytes)",
    ]
    switch r.source {
    case .snapshot(let s)?: tags.append("nvmecsi.source=snapshot:\(s)")
    case .volume(let v)?: tags.append("nvmecsi.source=volume:\(v)")
    case nil: break
    }
    tags += r.publications.map {
      "nvmecsi.pub=\(hex($0.nodeID.description)):\(hex($0.hostNQN.value)):\($0.readonly ? 1 : 0)"
    }
    tags += attributeTags(r.attributes)
    if let sharing = r.sharing { tags.append("nvmecsi.sharing=\(sharing.rawValue)") }
    return tags
  }

  static func tags(of r: SnapshotRecord, owner: String) -> [String] {
    [
      "nvmecsi.owner=\(owner)", "nvmecsi.kind=snapshot", "nvmecsi.name=\(hex(r.name))",
      "nvmecsi.created=\(milliseconds(r.created))", "nvmecsi.size=\(r.sizeBytes)",
      "nvmecsi.source=volume:\(r.sourceVolume)",
    ] + attributeTags(r.attributes)
  }

  static func attributeTags(_ attributes: [String: String]) -> [String] {
    attributes.sorted { $0.key < $1.key }.map { "nvmecsi.attr=\(hex($0.key)):\(hex($0.value))" }
  }

  static func attributes(from tags: [Substring]) -> [String: String] {
    var attributes: [String: String] = [:]
    for a in tags {
      let f = a.split(separator: ":", omittingEmptySubsequences: false)
      if f.count == 2, let k = unhex(f[0]), let v = unhex(f[1]) { attributes[k] = v }
    }
    return attributes
  }

  static func decode(_ object: inout Object) {
    var values: [String: [Substring]] = [:]
    for tag in object.tags where tag.hasPrefix("nvmecsi.") {
      guard let eq = tag.firstIndex(of: "=") else { continue }
      values[String(tag[tag.index(tag.startIndex, offsetBy: 8)..<eq]), default: []].append(tag[tag.index(after: eq)...])
    }
    func one(_ key: String) -> Substring? { values[key]?.first }
    guard let name = one("name").flatMap(unhex), let createdMS = one("created").flatMap({ Int64($0) }),
      let wantedSize = one("size").flatMap({ UInt64($0) })
    else { return }
    let created = Date(timeIntervalSince1970: Double(createdMS) / 1000)
    let prefix =
      object.lvName.hasPrefix("nvmecsi-v-") ? "nvmecsi-v-" : object.lvName.hasPrefix("nvmecsi-s-") ? "nvmecsi-s-" : nil
    guard let prefix, let uuid = try? ObjectUUID(String(object.lvName.dropFirst(prefix.count))) else { return }
    let source = one("source")
    switch one("kind") {
    case "volume"?:
      // The LV's size is the truth; a larger wanted size is an extension reconcile() finishes.
      var record = VolumeRecord(uuid: uuid, name: name, sizeBytes: object.lvSize, created: created)
      if let source, let colon = source.firstIndex(of: ":"),
        let id = try? ObjectUUID(String(source[source.index(after: colon)...]))
      {
        record.source = source.hasPrefix("snapshot:") ? .snapshot(id) : .volume(id)
      }
      record.publications = (values["pub"] ?? []).compactMap { p in
        let f = p.split(separator: ":", omittingEmptySubsequences: false)
        guard f.count == 3, let node = unhex(f[0]).flatMap({ try? NodeID(parsing: $0) }) else { return nil }
        return Publication(nodeID: node, readonly: f[2] == "1")
      }
      record.sharing = one("sharing").flatMap { VolumeSharing(rawValue: String($0)) }
      record.attributes = attributes(from: values["attr"] ?? [])
      object.volume = record
    case "snapshot"?:
      guard let source, source.hasPrefix("volume:"), let of = try? ObjectUUID(String(source.dropFirst(7))) else {
        return
      }
      object.snapshot = SnapshotRecord(
        uuid: uuid, name: name, sourceVolume: of, sizeBytes: wantedSize, created: created,
        attributes: attributes(from: values["attr"] ?? []))
    default: return
    }
  }
}
