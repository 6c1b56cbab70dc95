import NVMeCSICore
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite("errno as a typed error")
struct ErrnoTests {
  @Test("An errno reads as strerror's text", arguments: [ENOENT, EEXIST, EBUSY, ENOSPC, EINTR])
  func text(code: Int32) {
    #expect(Errno(code).description == String(cString: strerror(code)))
  }

  @Test("The named errno values are the C constants")
  func names() {
    #expect(Errno.noEntry.description == "No such file or directory")
    #expect(
      [Errno.noEntry, .exists, .busy, .interrupted, .noSpace, .quotaExceeded, .notDirectory, .noDevice].map(\.code)
        == [ENOENT, EEXIST, EBUSY, EINTR, ENOSPC, EDQUOT, ENOTDIR, ENXIO])
  }

  /// A call that fails with each of `failures` in turn (-1 and errno), then returns `value`.
  final class ScriptedCall: Sendable {
    let failures: [Int32]
    let value: Int32
    private let calls = Mutex(0)

    init(failing failures: [Int32], then value: Int32) {
      self.failures = failures
      self.value = value
    }

    var count: Int { calls.withLock { $0 } }

    func callAsFunction() -> Int32 {
      let call = calls.withLock { count in
        count += 1
        return count - 1
      }
      guard call < failures.count else { return value }
      errno = failures[call]
      return -1
    }
  }

  @Test("An interrupted call is repeated until it gives an answer")
  func retriesInterrupted() {
    let call = ScriptedCall(failing: [EINTR, EINTR], then: 7)
    #expect(valueOrErrno { call() } == .success(7))
    #expect(call.count == 3)
  }

  @Test("Without retryOnInterrupt an interrupted call is the error EINTR")
  func noRetry() {
    let call = ScriptedCall(failing: [EINTR], then: 7)
    #expect(valueOrErrno(retryOnInterrupt: false) { call() } == .failure(.interrupted))
    #expect(call.count == 1)
  }

  @Test("Any other errno is returned at once, after retrying interruptions")
  func otherErrors() {
    let call = ScriptedCall(failing: [EINTR, ENOENT], then: 7)
    #expect(valueOrErrno { call() } == .failure(.noEntry))
    #expect(call.count == 2)
  }

  @Test("A real failing call reports its errno")
  func realCall() {
    let result = valueOrErrno { open("/nonexistent-nvme-csi-test/file", O_RDONLY) }
    #expect(result == .failure(.noEntry))
  }

  @Test("systemCall names what failed and on what, and keeps the errno as the cause")
  func systemCallFailure() {
    let error = expectError(.internalError, mentioning: ["cannot open /x: No such file or directory"]) {
      try systemCall("cannot open", "/x") { () -> Int32 in
        errno = ENOENT
        return -1
      }
    }
    #expect(error?.cause == .noEntry)
    #expect(error?.message == "cannot open /x: No such file or directory")
  }

  @Test("systemCall returns the value of a call that succeeds")
  func systemCallSuccess() throws {
    #expect(try systemCall("cannot do", "it") { Int32(3) } == 3)
  }

  @Test("Out of space or quota is resourceExhausted, with the errno kept", arguments: [Errno.noSpace, .quotaExceeded])
  func outOfSpace(error: Errno) {
    let domainError = NVMeCSIError(systemCall: "cannot write", "/data/v", error)
    #expect(domainError.kind == .resourceExhausted)
    #expect(domainError.cause == error)
    #expect(domainError.message.contains("cannot write /data/v: \(error)"))
  }
}
