import NVMeCSICore

extension BlockingPool {
  /// One pool for the whole test run (each role's command makes its own in production).
  public static let forTests = BlockingPool(threads: 8)
}
