import CSIProto
import NVMeCSICore

/// Pagination for ListVolumes and ListSnapshots across targets.
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
