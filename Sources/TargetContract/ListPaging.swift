import NVMeCSICore
import SwiftProtobuf

/// Target list calls come in pages in UUID order, each far below gRPC's 4 MiB message
/// limit however much the records hold: a page ends after `maximumEntries` records or
/// once it holds `maximumBytes` of them encoded (a record is bounded well below that).
public enum ListPaging {
  public static let maximumEntries = 1000
  public static let maximumBytes = 2 << 20

  /// Entries in a page a caller asking for `maxEntries` gets (0: as many as allowed).
  public static func limit(_ maxEntries: UInt32) -> Int {
    maxEntries == 0 ? maximumEntries : min(Int(maxEntries), maximumEntries)
  }

  /// The page of `items` after the UUID `startingAfter` (empty: from the start), with
  /// the UUID the next page starts after (empty on the last page).
  public static func page<Item: SwiftProtobuf.Message>(
    _ items: [Item], uuid: (Item) -> String, maxEntries: UInt32, startingAfter: String
  ) throws(NVMeCSIError) -> (items: [Item], next: String) {
    if !startingAfter.isEmpty { _ = try ObjectUUID(startingAfter) }
    let remaining = items.sorted { uuid($0) < uuid($1) }.drop { !startingAfter.isEmpty && uuid($0) <= startingAfter }
    let page = Array(remaining.prefix(limit(maxEntries)))
    return capped(page, more: page.count < remaining.count, uuid: uuid)
  }

  /// A page (in UUID order) cut to `maximumBytes` encoded, with the UUID the next page
  /// starts after (empty when nothing follows).
  public static func capped<Item: SwiftProtobuf.Message>(_ items: [Item], more: Bool, uuid: (Item) -> String)
    -> (items: [Item], next: String)
  {
    var page: [Item] = []
    var bytes = 0
    for item in items {
      let size = (try? item.serializedBytes() as [UInt8])?.count ?? 0
      if !page.isEmpty && bytes + size > maximumBytes { break }
      page.append(item)
      bytes += size
    }
    let next = page.count < items.count || more ? page.last.map(uuid) ?? "" : ""
    return (page, next)
  }

  /// Fetches every page: `fetch` gets the UUID to start after and returns a page and
  /// the next one's start. A server whose pages do not advance is an error, not a loop.
  public static func all<Item>(_ fetch: (String) async throws -> (items: [Item], next: String)) async throws -> [Item] {
    var all: [Item] = []
    var after = ""
    while true {
      let page = try await fetch(after)
      all.append(contentsOf: page.items)
      if page.next.isEmpty { return all }
      guard page.next > after else {
        throw NVMeCSIError.internalError("the target's list page after \(quoted(after)) does not advance")
      }
      after = page.next
    }
  }
}
