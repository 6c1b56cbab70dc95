import CSIProto
import NVMeCSICore
import SwiftProtobuf

/// Pagination of a list gathered whole (ListSnapshots with a filter: a few entries).
///
/// Entries are ordered by ID; `starting_token` is the last ID of the previous page and
/// the next page starts after it. This needs no server state and stays correct when
/// entries are added or removed between pages. A token that is not an ID of the
/// right kind is `aborted` (the CSI answer: the caller restarts the listing).
struct Page<Entry> {
  var entries: [Entry]
  var nextToken: String

  init(all: [(id: ObjectID, entry: Entry)], startingToken: String, maxEntries: Int32, kind: ObjectID.Kind)
    throws(NVMeCSIError)
  {
    guard maxEntries >= 0 else { throw .invalidArgument("max_entries must not be negative (got \(maxEntries))") }
    var remaining = all.sorted { $0.id < $1.id }[...]
    if !startingToken.isEmpty {
      guard let after = try? ObjectID(parsing: startingToken, as: kind) else {
        throw .aborted("starting_token \(quoted(startingToken)) is not valid: restart the listing without a token")
      }
      remaining = remaining.drop { $0.id <= after }
    }
    let page = maxEntries == 0 ? remaining : remaining.prefix(Int(maxEntries))
    entries = page.map(\.entry)
    nextToken = page.count < remaining.count ? page.last!.id.description : ""
  }
}

/// The CSI list responses, built from a page.
protocol PagedListResponse {
  associatedtype Entry
  init()
  var entries: [Entry] { get set }
  var nextToken: String { get set }
}

extension Csi_V1_ListVolumesResponse: PagedListResponse {}
extension Csi_V1_ListSnapshotsResponse: PagedListResponse {}

extension PagedListResponse {
  /// The page of `all` that `starting_token` and `max_entries` ask for.
  init(paging all: [(id: ObjectID, entry: Entry)], startingToken: String, maxEntries: Int32, kind: ObjectID.Kind)
    throws(NVMeCSIError)
  {
    let page = try Page(all: all, startingToken: startingToken, maxEntries: maxEntries, kind: kind)
    self.init()
    entries = page.entries
    nextToken = page.nextToken
  }
}

/// One CSI ListVolumes or ListSnapshots page, gathered target by target in ID order.
///
/// The token is the last ID of the previous page, as in `Page`. A page holds at most
/// `max_entries` (0: as many as fit) and at most `maximumBytes` encoded, below gRPC's
/// 4 MiB message limit; one entry more than fits is fetched to know whether a next
/// page exists, so the last page never carries a token. Each target is asked only for
/// what the page still needs, from where the page stands on it: a page costs what it
/// returns, however many entries the targets hold.
struct ListCursor<Entry: SwiftProtobuf.Message> {
  static var maximumBytes: Int { 2 << 20 }
  /// Entries one target call returns at most.
  static var targetPage: Int { 1000 }

  private let token: ObjectID?
  private let maxEntries: Int
  private(set) var entries: [Entry] = []
  private var lastID: ObjectID?
  private var bytes = 0
  private var full = false

  /// - Parameter kind: the kind of ID the token must be (a volume's for ListVolumes).
  init(token: String, maxEntries: Int32, kind: ObjectID.Kind) throws(NVMeCSIError) {
    guard maxEntries >= 0 else { throw .invalidArgument("max_entries must not be negative (got \(maxEntries))") }
    self.maxEntries = maxEntries == 0 ? Int.max : Int(maxEntries)
    if token.isEmpty {
      self.token = nil
    } else {
      guard let id = try? ObjectID(parsing: token, as: kind) else {
        throw .aborted("starting_token \(quoted(token)) is not valid: restart the listing without a token")
      }
      self.token = id
    }
  }

  /// The order of IDs ("v1.<target>.<uuid>", "s1.<target>.<uuid>") by target: every ID
  /// on one target sorts between those of the targets before and after it.
  static func idOrder(_ a: StorageTarget, _ b: StorageTarget) -> Bool { a.name.value + "." < b.name.value + "." }

  /// Whether this target's entries may still belong on the page.
  func wants(_ target: TargetName) -> Bool {
    guard let token else { return true }
    return target.value + "." >= token.target.value + "."
  }

  /// Where to start on this target: after the token on its own target.
  func after(on target: TargetName) -> ObjectUUID? {
    if let lastID, lastID.target == target { return lastID.uuid }
    return token?.target == target ? token?.uuid : nil
  }

  var wantsMore: Bool { !full }

  /// One more than the page still needs (to learn whether a next page exists).
  var fetchLimit: Int { min(Self.targetPage, maxEntries == Int.max ? Self.targetPage : maxEntries - entries.count + 1) }

  /// Adds the entry at `id`, or only moves past it when `skip` (a replicated volume's
  /// leg other than leg 0: the volume is listed once).
  mutating func add(_ id: ObjectID, skip: Bool = false, _ entry: @autoclosure () -> Entry) {
    guard !full else { return }
    guard !skip else {
      lastID = id
      return
    }
    let entry = entry()
    let size = (try? entry.serializedBytes() as [UInt8])?.count ?? 0
    if entries.count == maxEntries || (!entries.isEmpty && bytes + size > Self.maximumBytes) {
      full = true  // this entry starts the next page
      return
    }
    entries.append(entry)
    bytes += size
    lastID = id
  }

  /// Fills the page: the targets in ID order from the token's, each asked by `fetch`
  /// for at most `limit` items after a UUID (in UUID order, with whether more follow)
  /// until the page is full; `add` adds each item with `add(_:skip:_:)`.
  mutating func fill<Item>(
    from targets: [StorageTarget],
    fetch: (_ target: StorageTarget, _ after: ObjectUUID?, _ limit: Int) async throws -> (items: [Item], more: Bool),
    add: (inout Self, StorageTarget, Item) -> Void
  ) async throws {
    for target in targets.sorted(by: Self.idOrder) where wants(target.name) {
      while wantsMore {
        let page = try await fetch(target, after(on: target.name), fetchLimit)
        for item in page.items { add(&self, target, item) }
        if !page.more || page.items.isEmpty { break }
      }
      if !wantsMore { break }
    }
  }

  /// The token of the next page; empty when this is the last.
  var nextToken: String { full ? lastID?.description ?? "" : "" }
}
