import NVMeCSICore
import Testing

/// Runs `body`, expecting it to fail with an `NVMeCSIError` of `kind` whose message
/// contains every one of `fragments`. Returns the error for further checks.
@discardableResult
func expectError<R>(
  _ kind: NVMeCSIError.Kind, mentioning fragments: [String] = [],
  sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> R
) -> NVMeCSIError? {
  do {
    let result = try body()
    Issue.record("expected a \(kind.rawValue) error, got \(result)", sourceLocation: sourceLocation)
    return nil
  } catch let error as NVMeCSIError {
    #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
    for fragment in fragments {
      #expect(error.message.contains(fragment), "\(error) does not mention \(fragment)", sourceLocation: sourceLocation)
    }
    return error
  } catch {
    Issue.record("expected an NVMeCSIError, got \(error)", sourceLocation: sourceLocation)
    return nil
  }
}

/// Well-formed inputs shared by the suites.
enum Sample {
  static let uuid = "0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b"
  static let otherUUID = "11111111-2222-4333-8444-555555555555"
  static let hostNQN = "nqn.2014-08.org.nvmexpress:uuid:6b1c6d5e-0e7e-4a39-9d8f-0a1b2c3d4e5f"
}
