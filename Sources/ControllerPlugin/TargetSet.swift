import Logging
import NVMeCSICore
import TargetContract

/// The configured storage targets, in the targets file's order, with the fan-out
/// queries the controller needs.
public struct TargetSet: Sendable {
  public let all: [StorageTarget]

  public init(_ targets: [StorageTarget]) { self.all = targets }

  public subscript(name: TargetName) -> StorageTarget? { all.first { $0.name == name } }

  /// A volume name's home: the target that records where the name lives (see
  /// docs/architecture.md, "Placement"). Rendezvous hashing: each target scores the
  /// name, the highest wins. It depends on the name and the set of target names only,
  /// so every controller agrees, and adding or removing a target moves the homes of
  /// about 1/N of the names.
  public func home(of name: String) -> StorageTarget? {
    all.max { Self.score(name, $0.name) < Self.score(name, $1.name) }
  }

  /// The same choice among target names alone.
  public static func home(of name: String, among targets: [TargetName]) -> TargetName? {
    targets.max { score(name, $0) < score(name, $1) }
  }

  /// FNV-1a over the target's name, a separator and the volume name, then a 64-bit
  /// finalizer (splitmix64) so that near-equal inputs score far apart. Fixed forever:
  /// changing it moves every home.
  static func score(_ name: String, _ target: TargetName) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in target.value.utf8 + [0] + name.utf8 {
      hash ^= UInt64(byte)
      hash &*= 0x100_0000_01b3
    }
    hash ^= hash >> 30
    hash &*= 0xbf58_476d_1ce4_e5b9
    hash ^= hash >> 27
    hash &*= 0x94d0_49bb_1331_11eb
    hash ^= hash >> 31
    return hash
  }

  /// The target holding an object; a target that is not configured cannot hold
  /// anything we know of (`notFound`).
  func holding(_ id: ObjectID) throws(NVMeCSIError) -> StorageTarget {
    guard let target = self[id.target] else {
      let what = id.kind == .volume ? "volume" : "snapshot"
      throw .notFound("\(what) \(id) does not exist: target \(id.target) is not in the targets file")
    }
    return target
  }

  /// Runs `body` on every target concurrently; results keep the targets' order. Any
  /// failure fails the whole call (a partial answer could hide a volume).
  func askEvery<T: Sendable>(
    _ targets: [StorageTarget]? = nil,
    _ body: @escaping @Sendable (StorageTarget) async throws -> T
  ) async throws -> [(target: StorageTarget, value: T)] {
    let chosen = targets ?? all
    return try await withThrowingTaskGroup(of: (Int, T).self) { group in
      for (index, target) in chosen.enumerated() {
        group.addTask { (index, try await body(target)) }
      }
      var results: [(Int, T)] = []
      for try await result in group { results.append(result) }
      return results.sorted { $0.0 < $1.0 }.map { (chosen[$0.0], $0.1) }
    }
  }

  /// Free space of each target that answers; unreachable targets are logged and skipped.
  func reachableInfo(_ targets: [StorageTarget], logger: Logger) async -> [(target: StorageTarget, info: TargetInfo)] {
    await askReachable(targets, logger: logger) { try await $0.api.info() }.map { ($0.target, $0.value) }
  }

  /// Asks the targets at once; one that fails is logged and left out of the answers.
  func askReachable<T: Sendable>(
    _ targets: [StorageTarget], logger: Logger, _ body: @escaping @Sendable (StorageTarget) async throws -> T
  ) async -> [(target: StorageTarget, value: T)] {
    await withTaskGroup(of: (Int, T?).self) { group in
      for (index, target) in targets.enumerated() {
        group.addTask {
          do { return (index, try await body(target)) } catch {
            logger.warning("target does not answer", metadata: ["target": "\(target.name)", "error": "\(error)"])
            return (index, nil)
          }
        }
      }
      var results: [(Int, T)] = []
      for await (index, value) in group { if let value { results.append((index, value)) } }
      return results.sorted { $0.0 < $1.0 }.map { (targets[$0.0], $0.1) }
    }
  }
}
