#if canImport(Glibc)
  import Glibc
#endif

/// Reading directories without Foundation (the stores' record directories, sysfs).
public enum Directory {
  /// The names in `path` (without "." and ".."), sorted; the errno when it cannot be opened.
  public static func names(in path: String) -> Result<[String], Errno> {
    guard let dir = opendir(path) else { return .failure(.current) }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
      }
      if name != "." && name != ".." { names.append(name) }
    }
    return .success(names.sorted())
  }
}
