import Foundation
import Logging
import NVMeCSICore

/// What the node did for one staged volume, so that Unstage, Publish and a restarted
/// plugin know it without guessing. Written before the first side effect (state
/// `staging`) and completed at the end (`staged`), so a crash in between leaves a
/// record that the next Stage or Unstage finishes or undoes.
public struct StagingRecord: Codable, Hashable, Sendable {
  public enum State: String, Codable, Sendable { case staging, staged }

  public var volumeID: String
  public var stagingPath: String
  public var subsystemNQN: String
  public var namespaceUUID: String
  public var accessType: AccessType
  public var fsType: String
  public var state: State
  /// Kernel device name when last seen; informational only, identity is always re-checked.
  public var device: String?
  /// Publish targets that hold a bind of this volume.
  public var targets: [String]
  /// A replicated volume's legs and how to reconnect them (nil for one copy, whose
  /// subsystem and namespace are the fields above, as are leg 0's here).
  public var mirror: MirrorRecord?

  public init(
    volumeID: String, stagingPath: String, subsystemNQN: String, namespaceUUID: String, accessType: AccessType,
    fsType: String, state: State = .staging, device: String? = nil, targets: [String] = []
  ) {
    self.volumeID = volumeID
    self.stagingPath = stagingPath
    self.subsystemNQN = subsystemNQN
    self.namespaceUUID = namespaceUUID
    self.accessType = accessType
    self.fsType = fsType
    self.state = state
    self.device = device
    self.targets = targets
  }
}

/// What the node keeps of a replicated volume: every leg, and the connection settings
/// to reconnect one that was lost (the mirror reconciler does).
public struct MirrorRecord: Codable, Hashable, Sendable {
  public struct Leg: Codable, Hashable, Sendable {
    public var subsystemNQN: String
    public var namespaceUUID: String
    /// `address:port` of each path.
    public var paths: [String]

    public init(_ leg: PublishContext.Leg) {
      subsystemNQN = leg.subsystemNQN
      namespaceUUID = leg.namespaceUUID
      paths = leg.paths.map(\.description)
    }

    public init(subsystemNQN: String, namespaceUUID: String, paths: [String]) {
      self.subsystemNQN = subsystemNQN
      self.namespaceUUID = namespaceUUID
      self.paths = paths
    }
  }

  public var legs: [Leg]
  public var connection: [String: String]
  /// The version of the leg map (`LegMap`) `legs` follow; absent in records written
  /// before legs could be replaced, meaning 0 (the legs the volume ID names).
  public var mapVersion: UInt64?
  /// Legs a newer leg map replaced while md still used them: kept connected (md decides
  /// when it stops using them), disconnected by the reconciler once md no longer does,
  /// or at unstage. Absent when there are none.
  public var droppedLegs: [Leg]?

  public init(legs: [Leg], connection: [String: String], mapVersion: UInt64 = 0) {
    self.legs = legs
    self.connection = connection
    self.mapVersion = mapVersion > 0 ? mapVersion : nil
  }

  /// Every leg the node may still have connected: the current ones, then the dropped.
  public var connectedLegs: [Leg] { legs + (droppedLegs ?? []) }
}

/// One JSON file per volume under `<state>/volumes/`, written atomically. File names
/// are parsed volume IDs (charset [a-z0-9.-]), never raw input.
public struct StagingRecords: Sendable {
  public let directory: String

  public init(stateDirectory: String) throws(NVMeCSIError) {
    directory = stateDirectory + "/volumes"
    for dir in [stateDirectory, directory] {
      do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
        throw .internalError("cannot create state directory \(dir): \(error)")
      }
    }
  }

  public func load(_ volume: VolumeID) throws(NVMeCSIError) -> StagingRecord? {
    let path = self.path(volume)
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    do { return try JSONDecoder().decode(StagingRecord.self, from: data) } catch {
      throw .internalError("staging record \(path) is corrupt (\(error)): move it aside and unstage by hand")
    }
  }

  public func save(_ record: StagingRecord) throws(NVMeCSIError) {
    let volume = try VolumeID(parsing: record.volumeID)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    let data: Data
    do { data = try encoder.encode(record) } catch { throw .internalError("cannot encode staging record: \(error)") }
    try DurableFile.write(data, to: path(volume))
  }

  public func remove(_ volume: VolumeID) throws(NVMeCSIError) { try DurableFile.remove(path(volume)) }

  /// Every record that can be read. One that cannot (a corrupt file, a name that is no
  /// volume ID) is skipped and logged with its path and the reason, so the others are
  /// still checked; Stage and Unstage of that volume report it again. Hidden files are
  /// DurableFile's temporaries.
  public func loadAll(logger: Logger) -> [StagingRecord] {
    let names: [String]
    do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
      logger.error("cannot list staging records", metadata: ["directory": "\(directory)", "error": "\(error)"])
      return []
    }
    return names.sorted().compactMap { (name) -> StagingRecord? in
      guard name.hasSuffix(".json"), !name.hasPrefix(".") else { return nil }
      let path = "\(directory)/\(name)"
      do throws(NVMeCSIError) {
        return try load(try VolumeID(parsing: String(name.dropLast(5))))
      } catch {
        logger.warning("skipping staging record", metadata: ["path": "\(path)", "reason": "\(error.message)"])
        return nil
      }
    }
  }

  private func path(_ volume: VolumeID) -> String { "\(directory)/\(volume).json" }
}

/// Paths from kubelet: absolute, normalized, no `..`, no control characters.
enum PathCheck {
  static func validate(_ path: String, field: String) throws(NVMeCSIError) {
    guard !path.isEmpty else { throw .invalidArgument("\(field) is required") }
    guard path.hasPrefix("/") else { throw .invalidArgument("\(field) \(quoted(path)) is not an absolute path") }
    guard path.utf8.count <= 4096 else { throw .invalidArgument("\(field) is longer than 4096 bytes") }
    guard !path.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
      throw .invalidArgument("\(field) \(quoted(path)) contains control characters")
    }
    let components = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
    guard !components.contains(".."), !components.contains(".") else {
      throw .invalidArgument("\(field) \(quoted(path)) contains '.' or '..' components")
    }
  }
}
