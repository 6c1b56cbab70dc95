/// `key=value` items separated by a character, as in mount options, sysfs
/// `address` files, failpoint and label lists. One parser for all of them.
public enum KeyValueList {
  /// The pairs in order; an item without `=` is returned with a nil value. Empty
  /// items are skipped. Only the first `=` splits (values may contain `=`).
  public static func items(_ text: some StringProtocol, separator: Character = ",") -> [(key: String, value: String?)] {
    text.split(separator: separator).map { item in
      guard let equals = item.firstIndex(of: "=") else { return (String(item), nil) }
      return (String(item[..<equals]), String(item[item.index(after: equals)...]))
    }
  }

  /// The pairs that have a value, as a dictionary (a later key wins).
  public static func dictionary(_ text: some StringProtocol, separator: Character = ",") -> [String: String] {
    var out: [String: String] = [:]
    for (key, value) in items(text, separator: separator) { if let value { out[key] = value } }
    return out
  }
}
