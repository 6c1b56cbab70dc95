/// The driver's version, reported by GetPluginInfo and `--version`.
public enum BuildInfo {
  public static let version = "0.1.0"
}
