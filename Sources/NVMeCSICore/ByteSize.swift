/// Human sizes for flags and the `ctl` client: `1073741824`, `512Mi`, `10Gi`, `1Ti`
/// (binary units) or `1G` (decimal).
public enum ByteSize {
  public static func parse(_ text: String) throws(NVMeCSIError) -> UInt64 {
    let units: [(String, UInt64)] = [
      ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40),
      ("K", 1_000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000),
    ]
    for (suffix, factor) in units where text.hasSuffix(suffix) {
      if let n = UInt64(text.dropLast(suffix.count)) {
        let (product, overflow) = n.multipliedReportingOverflow(by: factor)
        if !overflow { return product }
      }
      throw .invalidArgument("size \(quoted(text)) is not a number with a unit such as 512Mi or 10Gi")
    }
    guard let n = UInt64(text) else {
      throw .invalidArgument("size \(quoted(text)) is not a number with a unit such as 512Mi or 10Gi")
    }
    return n
  }

  /// `1.5 GiB`, `512 MiB`, `100 B`.
  public static func format(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var value = Double(bytes)
    var index = 0
    while value >= 1024 && index < units.count - 1 {
      value /= 1024
      index += 1
    }
    if index == 0 { return "\(bytes) B" }
    var rounded = (value * 10).rounded() / 10
    if rounded >= 1024 && index < units.count - 1 {  // 1023.99 KiB reads better as 1 MiB
      rounded = 1
      index += 1
    }
    return rounded == rounded.rounded() ? "\(Int(rounded)) \(units[index])" : "\(rounded) \(units[index])"
  }
}
