import Foundation
import NVMeCSICore
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// A child process of a test (a `nvme-csi target`, a script), reaped with waitpid.
///
/// Not Foundation's `Process`, for two faults of it on Linux:
/// - before each spawn it lists /proc/self/fd, copying every entry's full 256-byte name,
///   and an entry at the end of the kernel's buffer can sit at the end of a mapped page:
///   the test process crashed in Process.run now and then (SIGSEGV, seen with ~1,300
///   descriptors open);
/// - it learns of an exit when the last copy of a socket it gives the child closes, and
///   a child spawned at the same moment can inherit that socket (it closes only the
///   descriptors open when it listed them): a test could wait for its target's exit
///   until another test's target exited, blocking a thread of the concurrency pool
///   (this 2-core machine has two).
/// Here the child gets standard input from /dev/null, output and error as asked, and
/// every other descriptor is closed in it.
public final class ChildProcess: Sendable {
  public let pid: pid_t
  /// The wait status once reaped.
  private let reaped = Mutex<Int32?>(nil)

  /// - Parameters:
  ///   - errorLog: the file its standard error is appended to.
  ///   - outputToLog: its standard output goes there too (else to /dev/null).
  public init(
    path: String, arguments: [String], environment: [String: String], errorLog: String, outputToLog: Bool = false
  ) throws {
    let log = open(errorLog, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
    guard log >= 0 else { throw ChildProcessError("cannot open \(errorLog): \(String(cString: strerror(errno)))") }
    defer { close(log) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    if outputToLog {
      posix_spawn_file_actions_adddup2(&actions, log, 1)
    } else {
      posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    }
    posix_spawn_file_actions_adddup2(&actions, log, 2)
    guard closeDescriptors(from: 3, in: &actions) else {
      throw ChildProcessError("posix_spawn_file_actions_addclosefrom_np is missing (glibc 2.34 or later is needed)")
    }
    let cArguments = ([path] + arguments).map { strdup($0) } + [nil]
    let cEnvironment = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
      for argument in cArguments { free(argument) }
      for variable in cEnvironment { free(variable) }
    }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, path, &actions, nil, cArguments, cEnvironment)
    guard result == 0 else { throw ChildProcessError("cannot start \(path): \(String(cString: strerror(result)))") }
    self.pid = pid
  }

  /// Whether it has not exited yet (reaping it if it has).
  public var isRunning: Bool { reap(blocking: false) == nil }

  public func signal(_ signal: Int32) {
    if isRunning { kill(pid, signal) }
  }

  /// Waits for the exit; the exit code, or 128 + the signal that ended it. Depends on
  /// nothing but the child itself.
  @discardableResult
  public func waitForExit() -> Int32 {
    let status = reap(blocking: true)!
    return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + status & 0x7f
  }

  /// SIGTERM, then SIGKILL if it is still there after `grace`; waits for the exit.
  public func stop(grace: Duration = .seconds(5)) {
    signal(SIGTERM)
    let deadline = ContinuousClock.now + grace
    while isRunning && ContinuousClock.now < deadline { usleep(2_000) }
    signal(SIGKILL)
    waitForExit()
  }

  private func reap(blocking: Bool) -> Int32? {
    if let status = reaped.withLock({ $0 }) { return status }
    var status: Int32 = 0
    while true {
      let result = waitpid(pid, &status, blocking ? 0 : WNOHANG)
      if result == pid {
        reaped.withLock { $0 = status }
        return status
      }
      if result == 0 { return nil }
      if errno == EINTR { continue }
      // ECHILD: another caller reaped it just now and is storing the status.
      while true {
        if let status = reaped.withLock({ $0 }) { return status }
        usleep(100)
      }
    }
  }
}

public struct ChildProcessError: Error, CustomStringConvertible {
  public let description: String
  init(_ description: String) { self.description = description }
}
