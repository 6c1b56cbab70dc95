import NVMeCSICore

/// UUIDs kept in order, so that a page after any UUID is a binary search away: what
/// the target's list calls read instead of sorting everything at every page.
///
/// A sorted array: an insert or removal moves the tail (a memmove of 16-byte-sized
/// entries, far below the cost of the store write it follows); a lookup or a page is
/// O(log n) plus what it returns.
struct SortedUUIDs: Sendable {
  private(set) var elements: [ObjectUUID] = []

  init() {}

  init(_ uuids: some Sequence<ObjectUUID>) { elements = Set(uuids).sorted() }

  var count: Int { elements.count }

  mutating func insert(_ uuid: ObjectUUID) {
    let index = firstIndex(notBelow: uuid)
    if index == elements.count || elements[index] != uuid { elements.insert(uuid, at: index) }
  }

  mutating func remove(_ uuid: ObjectUUID) {
    let index = firstIndex(notBelow: uuid)
    if index < elements.count && elements[index] == uuid { elements.remove(at: index) }
  }

  /// At most `limit` UUIDs after `startingAfter` (nil: from the start), in order, and
  /// whether more follow.
  func page(after startingAfter: ObjectUUID?, limit: Int) -> (uuids: ArraySlice<ObjectUUID>, more: Bool) {
    var start = 0
    if let startingAfter {
      start = firstIndex(notBelow: startingAfter)
      if start < elements.count && elements[start] == startingAfter { start += 1 }
    }
    let end = start + min(max(limit, 0), elements.count - start)
    return (elements[start..<end], end < elements.count)
  }

  /// The index of the first UUID not below `uuid` (the count if none).
  private func firstIndex(notBelow uuid: ObjectUUID) -> Int {
    var low = 0
    var high = elements.count
    while low < high {
      let middle = (low + high) / 2
      if elements[middle] < uuid { low = middle + 1 } else { high = middle }
    }
    return low
  }
}
