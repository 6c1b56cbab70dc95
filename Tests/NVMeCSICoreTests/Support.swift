import NVMeCSICore
import TestSupport
import Testing

/// Well-formed inputs shared by the suites.
enum Sample {
  static let uuid = "0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b"
  static let otherUUID = "11111111-2222-4333-8444-555555555555"
  static let hostNQN = "nqn.2014-08.org.nvmexpress:uuid:6b1c6d5e-0e7e-4a39-9d8f-0a1b2c3d4e5f"
}
