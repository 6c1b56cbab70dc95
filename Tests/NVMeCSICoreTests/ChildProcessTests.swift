import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The tests' own child processes (TestSupport.ChildProcess), which start every target
/// process the suites run: exit codes, stopping, output, and no descriptor leaked.
@Suite("Child processes of the tests")
struct ChildProcessTests {
  @Test("The exit code comes back, output goes to the log when asked, and a signal reads as 128 + its number")
  func exitCodesAndOutput() async throws {
    try await withTemporaryDirectory { directory in
      let log = directory + "/log"
      let child = try ChildProcess(
        path: "/bin/sh", arguments: ["-c", "echo out; echo err >&2; exit 3"], environment: [:], errorLog: log,
        outputToLog: true)
      #expect(child.waitForExit() == 3)
      #expect(!child.isRunning)
      #expect(try String(contentsOfFile: log, encoding: .utf8) == "out\nerr\n")
      let killed = try ChildProcess(path: "/bin/sh", arguments: ["-c", "kill -9 $$"], environment: [:], errorLog: log)
      #expect(killed.waitForExit() == 128 + SIGKILL)
    }
  }

  @Test("stop sends SIGTERM, then SIGKILL to a child that ignores it once the grace time passes")
  func stopEscalates() async throws {
    try await withTemporaryDirectory { directory in
      let stubborn = try ChildProcess(
        path: "/bin/sh", arguments: ["-c", "trap '' TERM; echo ready; while true; do sleep 1; done"],
        environment: [:], errorLog: directory + "/log", outputToLog: true)
      // The trap is set before it says so.
      let deadline = ContinuousClock.now + .seconds(30)
      while (try? String(contentsOfFile: directory + "/log", encoding: .utf8)) != "ready\n" {
        try #require(ContinuousClock.now < deadline, "the child never said it was ready")
        try await Task.sleep(for: .milliseconds(1))
      }
      stubborn.stop(grace: .milliseconds(200))
      #expect(stubborn.waitForExit() == 128 + SIGKILL)
    }
  }

  @Test("The child gets no descriptor of the test process but its standard streams")
  func noDescriptorLeaks() async throws {
    try await withTemporaryDirectory { directory in
      let open = Glibc.open("/dev/null", O_RDONLY)  // no O_CLOEXEC: inherited unless closed
      defer { close(open) }
      let log = directory + "/log"
      let child = try ChildProcess(
        path: "/bin/sh", arguments: ["-c", "test -e /proc/self/fd/\(open) && echo leaked || echo closed"],
        environment: [:], errorLog: log, outputToLog: true)
      #expect(child.waitForExit() == 0)
      #expect(try String(contentsOfFile: log, encoding: .utf8) == "closed\n")
    }
  }
}
