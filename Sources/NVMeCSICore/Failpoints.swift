#if canImport(Glibc)
  import Glibc
#endif

/// Named points in multi-step operations where a test can make the process die, to
/// prove that a crash at any point leaves a consistent state (old or new, never half).
///
/// Off unless `NVME_CSI_FAILPOINTS` lists `point=crash` pairs (comma separated), e.g.
/// `NVME_CSI_FAILPOINTS=store.create-volume.after-image=crash`. A crash is `_exit(86)`:
/// no cleanup, no buffered writes flushed, like a kill -9.
public struct Failpoints: Sendable {
  private let crashAt: Set<String>

  public static let none = Failpoints(crashAt: [])
  public static let environmentVariable = "NVME_CSI_FAILPOINTS"
  public static let crashExitCode: Int32 = 86

  public init(crashAt: Set<String>) { self.crashAt = crashAt }

  public init(environment: [String: String]) {
    let spec = environment[Self.environmentVariable] ?? ""
    self.crashAt = Set(KeyValueList.items(spec).filter { !$0.key.isEmpty && $0.value == "crash" }.map(\.key))
  }

  public func reach(_ point: String) {
    if crashAt.contains(point) { _exit(Self.crashExitCode) }
  }
}
