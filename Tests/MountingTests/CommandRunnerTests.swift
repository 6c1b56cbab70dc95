import Foundation
import Mounting
import NVMeCSICore
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite("CommandRunner")
struct CommandRunnerTests {
  let runner = CommandRunner(pool: .forTests)

  @Test("A tool that succeeds returns its exit code and output")
  func success() async throws {
    let result = try await runner.run("sh", ["-c", "echo out; echo err >&2"], timeout: .seconds(30))
    #expect(result.tool == "sh")
    #expect(result.exitCode == 0)
    #expect(result.standardOutput == "out\n")
    #expect(result.standardError == "err\n")
  }

  @Test("Arguments reach the tool verbatim, with no shell in between")
  func noShell() async throws {
    let result = try await runner.run(
      "printf", ["%s|", "a b", "$HOME", "*", "`id`", "; rm -rf /"], timeout: .seconds(30))
    #expect(result.standardOutput == "a b|$HOME|*|`id`|; rm -rf /|")
  }

  @Test("A tool can be named by absolute path")
  func absolutePath() async throws {
    let sh = try runner.executablePath(of: "sh")
    #expect(sh.hasPrefix("/"))
    let result = try await runner.run(sh, ["-c", "printf %s \"$0\""], timeout: .seconds(30))
    #expect(result.standardOutput == "sh")
  }

  @Test("The tool gets a fixed environment and stdin from /dev/null")
  func environment() async throws {
    let result = try await runner.run("sh", ["-c", "echo \"$PATH|$LC_ALL|$HOME\"; cat"], timeout: .seconds(30))
    #expect(result.standardOutput == "/usr/sbin:/sbin:/usr/bin:/bin|C|\n")
  }

  @Test("A non-zero exit is an error with the command, the exit code and the trimmed stderr")
  func failure() async {
    let error = await expectError(.internalError, mentioning: ["sh -c", "exit code 3", "mkfs: no space"]) {
      try await runner.run("sh", ["-c", "echo ignored; echo '  mkfs: no space  ' >&2; exit 3"], timeout: .seconds(30))
    }
    #expect(error?.message.hasSuffix(": mkfs: no space") == true, "\(String(describing: error))")
  }

  @Test("Without stderr the error carries stdout")
  func failureWithStdoutOnly() async {
    await expectError(.internalError, mentioning: ["exit code 1", "only stdout"]) {
      try await runner.run("sh", ["-c", "echo only stdout; exit 1"], timeout: .seconds(30))
    }
  }

  @Test("Accepted exit codes other than 0 are results, not errors")
  func acceptedExitCode() async throws {
    let result = try await runner.run("sh", ["-c", "exit 2"], timeout: .seconds(30), acceptedExitCodes: [0, 2])
    #expect(result.exitCode == 2)
  }

  @Test("A tool killed by a signal is an error naming the signal")
  func signaled() async {
    await expectError(.internalError, mentioning: ["signal 9"]) {
      try await runner.run("sh", ["-c", "kill -9 $$"], timeout: .seconds(30))
    }
  }

  @Test("A tool that runs past its timeout is killed and reported unavailable")
  func timeout() async throws {
    try await withTemporaryDirectory { directory throws in
      let pidFile = directory + "/pid"
      let started = ContinuousClock.now
      await expectError(.unavailable, mentioning: ["sh did not finish within 1.5 s", "killed"]) {
        try await runner.run(
          "sh", ["-c", "echo $$ > \"$1\"; exec sleep 30", "sh", pidFile], timeout: .milliseconds(1500))
      }
      // Not a timing assertion: a tool that was not killed would take the full 30 s.
      #expect(ContinuousClock.now - started < .seconds(25))
      // On a very busy machine the shell may be killed before it writes its pid.
      if let pid = Self.pid(in: pidFile) {
        #expect(kill(pid, 0) == -1 && errno == ESRCH, "the timed-out tool \(pid) is still there")
      }
    }
  }

  @Test("A timeout kills the tool's helpers too (its whole process group)")
  func timeoutKillsGroup() async throws {
    try await withTemporaryDirectory { directory throws in
      let pidFile = directory + "/pid"
      await expectError(.unavailable, mentioning: ["did not finish"]) {
        try await runner.run(
          "sh", ["-c", "sleep 30 & echo $! > \"$1\"; wait", "sh", pidFile], timeout: .milliseconds(1500))
      }
      guard let pid = Self.pid(in: pidFile) else { return }  // killed before it started the helper
      // The helper got SIGKILL before the call returned; wait for the kernel to finish it off.
      var dead = false
      for _ in 0..<1000 {
        dead = Self.isDeadOrZombie(pid)
        if dead { break }
        try await Task.sleep(for: .milliseconds(10))
      }
      #expect(dead, "helper \(pid) survived the timeout")
    }
  }

  static func pid(in file: String) -> pid_t? {
    (try? String(contentsOfFile: file, encoding: .utf8)).flatMap {
      pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines))
    }
  }

  static func isDeadOrZombie(_ pid: pid_t) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
    guard let close = stat.lastIndex(of: ")") else { return false }
    return stat[stat.index(close, offsetBy: 2)...].hasPrefix("Z")
  }

  @Test("Cancelling the calling task kills the tool and reports aborted", arguments: [0, 200])
  func cancellation(afterMilliseconds delay: Int) async throws {
    let started = ContinuousClock.now
    let task = Task { try await runner.run("sleep", ["30"], timeout: .seconds(60)) }
    try await Task.sleep(for: .milliseconds(delay))
    task.cancel()
    await expectError(.aborted, mentioning: ["sleep", "cancelled"]) { try await task.value }
    #expect(ContinuousClock.now - started < .seconds(25))
  }

  @Test("Output far beyond the limit does not block the tool and is kept bounded, both ends")
  func boundedOutput() async throws {
    let script = "echo FIRST; head -c 1000000 /dev/zero | tr '\\0' x; echo; echo LAST"
    let result = try await runner.run("sh", ["-c", script], timeout: .seconds(60))
    #expect(result.standardOutput.hasPrefix("FIRST\n"))
    #expect(result.standardOutput.hasSuffix("LAST\n"))
    #expect(result.standardOutput.utf8.count < 4096 + 100)
    #expect(result.standardOutput.contains("bytes left out"))
    await expectError(.internalError, mentioning: ["exit code 1", "LAST"]) {
      try await runner.run("sh", ["-c", script + " >&2; exit 1"], timeout: .seconds(60))
    }
  }

  struct MissingTool: Sendable, CustomTestStringConvertible {
    var tool: String
    var package: String
    var testDescription: String { tool }
  }

  @Test(
    "A missing tool is a failed precondition naming the package to install",
    arguments: [
      MissingTool(tool: "mkfs.ext4", package: "e2fsprogs"), MissingTool(tool: "resize2fs", package: "e2fsprogs"),
      MissingTool(tool: "mkfs.xfs", package: "xfsprogs"), MissingTool(tool: "xfs_growfs", package: "xfsprogs"),
      MissingTool(tool: "blkid", package: "util-linux"),
      MissingTool(tool: "/nonexistent/sbin/mkfs.xfs", package: "xfsprogs"),
    ])
  func missingTool(_ missing: MissingTool) async throws {
    try await withTemporaryDirectory { empty throws in
      let runner = CommandRunner(pool: .forTests, searchDirectories: [empty])
      await expectError(.failedPrecondition, mentioning: [missing.tool, "not installed", "install \(missing.package)"])
      {
        try await runner.run(missing.tool, ["--version"], timeout: .seconds(5))
      }
    }
  }

  @Test("A tool is only looked up in the search directories, never in PATH")
  func searchDirectoriesOnly() async throws {
    try await withTemporaryDirectory { directory throws in
      let runner = CommandRunner(pool: .forTests, searchDirectories: [directory])
      await expectError(.failedPrecondition, mentioning: ["\"sh\"", directory, "install it"]) {
        try runner.executablePath(of: "sh")
      }
      let tool = directory + "/hello"
      try writeFile(tool, "#!/bin/sh\necho hello from $0\n")
      #expect(chmod(tool, 0o755) == 0)
      #expect(try runner.executablePath(of: "hello") == tool)
      #expect(try await runner.run("hello", [], timeout: .seconds(30)).standardOutput == "hello from \(tool)\n")
    }
  }

  @Test("A file that is not executable does not count as installed")
  func notExecutable() async throws {
    try await withTemporaryDirectory { directory throws in
      try writeFile(directory + "/mkfs.ext4", "#!/bin/sh\n")
      await expectError(.failedPrecondition, mentioning: ["e2fsprogs"]) {
        try CommandRunner(pool: .forTests, searchDirectories: [directory]).executablePath(of: "mkfs.ext4")
      }
    }
  }

  @Test("A tool name that is a relative path is rejected", arguments: ["", "bin/sh", "../sh", "./sh", ".", ".."])
  func relativeToolName(_ tool: String) async {
    await expectError(.invalidArgument, mentioning: [quoted(tool)]) {
      try await runner.run(tool, [], timeout: .seconds(5))
    }
  }

  @Test("An argument with a NUL byte is rejected before anything runs")
  func nulArgument() async {
    await expectError(.invalidArgument, mentioning: ["NUL"]) {
      try await runner.run("echo", ["a\0b"], timeout: .seconds(5))
    }
  }

  @Test("Concurrent runs each get their own output")
  func concurrent() async throws {
    let outputs = try await withThrowingTaskGroup(of: String.self) { group in
      for index in 0..<8 {
        group.addTask {
          try await runner.run("sh", ["-c", "sleep 0.2; echo \(index)"], timeout: .seconds(60)).standardOutput
        }
      }
      return try await group.reduce(into: [String]()) { $0.append($1) }
    }
    #expect(outputs.sorted() == (0..<8).map { "\($0)\n" })
  }
}
