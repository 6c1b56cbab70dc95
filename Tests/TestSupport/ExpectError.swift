import NVMeCSICore
import Testing

/// Runs `body`, expecting it to fail with an `NVMeCSIError` of `kind` whose message
/// contains every one of `fragments`. Returns the error for further checks.
@discardableResult
public func expectError<R>(
  _ kind: NVMeCSIError.Kind, mentioning fragments: [String] = [],
  sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> R
) -> NVMeCSIError? {
  do {
    let result = try body()
    Issue.record("expected a \(kind.rawValue) error, got \(result)", sourceLocation: sourceLocation)
    return nil
  } catch {
    return check(error, kind, fragments, sourceLocation)
  }
}

/// The same for async code.
@discardableResult
public func expectError<R>(
  _ kind: NVMeCSIError.Kind, mentioning fragments: [String] = [],
  sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> R
) async -> NVMeCSIError? {
  do {
    let result = try await body()
    Issue.record("expected a \(kind.rawValue) error, got \(result)", sourceLocation: sourceLocation)
    return nil
  } catch {
    return check(error, kind, fragments, sourceLocation)
  }
}

private func check(
  _ error: any Error, _ kind: NVMeCSIError.Kind, _ fragments: [String], _ sourceLocation: SourceLocation
) -> NVMeCSIError? {
  guard let error = error as? NVMeCSIError else {
    Issue.record("expected an NVMeCSIError, got \(error)", sourceLocation: sourceLocation)
    return nil
  }
  #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
  for fragment in fragments {
    #expect(error.message.contains(fragment), "\(error) does not mention \(fragment)", sourceLocation: sourceLocation)
  }
  return error
}
