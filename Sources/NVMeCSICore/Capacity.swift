/// Volume sizes: what a request asks for and what we allocate.
public enum Capacity {
  public static let mebibyte: UInt64 = 1 << 20
  public static let gibibyte: UInt64 = 1 << 30
  /// Sizes are multiples of this (whole MiB: every file system and sector size fits).
  public static let alignment: UInt64 = mebibyte
  /// The size of a volume whose request names none.
  public static let defaultSize: UInt64 = gibibyte
  /// The largest volume: the largest aligned size a file offset (off_t, Int64) can hold.
  public static let maximumSize: UInt64 = alignDown(UInt64(Int64.max))

  /// Picks the size for a CSI capacity range (0 means "not set" for either bound):
  /// the required size rounded up to the alignment, or the default, never above the
  /// limit. Throws `outOfRange` when no aligned size fits.
  public static func resolve(required: UInt64, limit: UInt64, minimum: UInt64 = 0) throws(NVMeCSIError) -> UInt64 {
    if limit != 0 && required > limit {
      throw .outOfRange("capacity_range is unsatisfiable: required_bytes \(required) exceeds limit_bytes \(limit)")
    }
    let floor = max(required, minimum)
    var size: UInt64
    if floor == 0 {
      size = defaultSize
      if limit != 0 && limit < size { size = alignDown(limit) }
    } else {
      guard let up = alignUp(floor), up <= maximumSize else {
        throw .outOfRange("capacity_range is unsatisfiable: \(floor) bytes is too large")
      }
      size = up
    }
    if size == 0 || (limit != 0 && size > limit) {
      throw .outOfRange(
        "capacity_range is unsatisfiable: sizes are whole MiB and no multiple of \(alignment) bytes lies "
          + "between \(max(required, minimum)) and \(limit) bytes"
      )
    }
    return size
  }

  /// The most that may be provisioned on `total` bytes with an overcommit ratio
  /// (1 or more), saturating instead of trapping.
  public static func provisioningLimit(total: UInt64, overcommitRatio: Double) -> UInt64 {
    let limit = Double(total) * max(1, overcommitRatio)
    return limit >= Double(UInt64.max) ? .max : UInt64(limit)
  }

  public static func alignUp(_ n: UInt64) -> UInt64? {
    let (sum, overflow) = n.addingReportingOverflow(alignment - 1)
    return overflow ? nil : sum / alignment * alignment
  }

  public static func alignDown(_ n: UInt64) -> UInt64 { n / alignment * alignment }
}
