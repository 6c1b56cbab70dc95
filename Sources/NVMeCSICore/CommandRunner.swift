import Foundation
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// What a finished tool left behind (only a `CommandRunner` makes one).
public struct CommandResult: Hashable, Sendable {
  /// The tool's name as given to `run` ("mkfs.ext4").
  public var tool: String
  public var exitCode: Int32
  /// Standard output, at most about `CommandRunner.outputLimit` bytes: its beginning and
  /// its end, with a marker where the middle was left out.
  public var standardOutput: String
  /// Standard error, bounded like `standardOutput`.
  public var standardError: String
}

/// Runs external tools (mkfs, blkid, resize, lvm) with an argument vector, never a shell.
///
/// - A tool is named by absolute path or by a bare name looked up in
///   `searchDirectories` only (never `$PATH`); a missing tool is `failedPrecondition`
///   naming the package that provides it.
/// - Every run has a timeout. When it expires the tool's whole process group gets
///   SIGKILL and the call throws `unavailable` saying which tool hung. A tool stuck in
///   the kernel (uninterruptible I/O on a dead device) cannot be killed at once; the call
///   then returns after a short grace period and the tool is reaped in the background.
/// - Cancelling the calling task kills the tool the same way and throws `aborted`.
/// - The child gets stdin from /dev/null, a fixed environment (`PATH` of the search
///   directories, `LC_ALL=C` so messages are stable), default signal dispositions and
///   its own process group; no other descriptors of this process leak into it.
/// - Waiting happens on a thread of the `BlockingPool`, never on the cooperative pool.
/// Runs are independent and may happen concurrently.
public struct CommandRunner: Sendable {
  public static let defaultSearchDirectories = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]

  /// The (Debian) package providing each tool the driver runs, named when it is missing.
  public static let packages: [String: String] = [
    "mkfs.ext4": "e2fsprogs", "resize2fs": "e2fsprogs", "e2fsck": "e2fsprogs", "fsck.ext4": "e2fsprogs",
    "tune2fs": "e2fsprogs", "dumpe2fs": "e2fsprogs",
    "mkfs.xfs": "xfsprogs", "xfs_growfs": "xfsprogs", "xfs_repair": "xfsprogs", "xfs_admin": "xfsprogs",
    "blkid": "util-linux", "mount": "util-linux", "umount": "util-linux", "wipefs": "util-linux",
    "blockdev": "util-linux",
    "nvme": "nvme-cli",
    "lvm": "lvm2",
    "mdadm": "mdadm",
  ]

  public let pool: BlockingPool
  public var searchDirectories: [String]
  /// Bytes kept of each of stdout and stderr (a quarter from the beginning, the rest from the end).
  public var outputLimit: Int

  public init(
    pool: BlockingPool, searchDirectories: [String] = CommandRunner.defaultSearchDirectories, outputLimit: Int = 4096
  ) {
    self.pool = pool
    self.searchDirectories = searchDirectories
    self.outputLimit = max(outputLimit, 64)
  }

  /// The absolute path `tool` runs from.
  public func executablePath(of tool: String) throws(NVMeCSIError) -> String {
    if tool.hasPrefix("/") {
      guard Self.isExecutableFile(tool) else { throw missing(tool, lookedIn: nil) }
      return tool
    }
    guard !tool.isEmpty, !tool.contains("/"), tool != ".", tool != "..", !tool.contains("\0") else {
      throw .invalidArgument("tool name \(quoted(tool)) is neither an absolute path nor a bare name")
    }
    for directory in searchDirectories {
      let candidate = directory + "/" + tool
      if Self.isExecutableFile(candidate) { return candidate }
    }
    throw missing(tool, lookedIn: searchDirectories)
  }

  /// Runs `tool` with `arguments` and waits for it, at most `timeout`.
  ///
  /// An exit code outside `acceptedExitCodes` throws `internalError` with the command
  /// line, the exit code and the tool's trimmed stderr (or stdout when stderr is empty).
  /// `environment` adds variables for tools steered by them (mdadm's `MDADM_NO_UDEV`);
  /// it cannot replace `PATH` or `LC_ALL`.
  public func run(
    _ tool: String, _ arguments: [String], timeout: Duration, acceptedExitCodes: Set<Int32> = [0],
    environment: [String: String] = [:]
  ) async throws(NVMeCSIError) -> CommandResult {
    let child = try child(tool, arguments, environment: environment)
    let control = ChildControl()
    let outcome: Result<ChildOutcome, NVMeCSIError> = await withTaskCancellationHandler {
      await withCheckedContinuation { continuation in
        let once = Once { continuation.resume(returning: $0) }
        pool.execute { active in
          guard active else {
            return once.call(.failure(.unavailable("cannot run \(child.name): the process is stopping")))
          }
          child.run(timeout: timeout, control: control, deliver: { once.call($0) })
        }
      }
    } onCancel: {
      control.cancel()
    }
    return try child.result(of: outcome, timeout: timeout, acceptedExitCodes: acceptedExitCodes)
  }

  /// `run` on the calling thread, for work already running on the `BlockingPool`
  /// (the stores' LVM calls): the same timeout and process-group kill.
  public func runHere(
    _ tool: String, _ arguments: [String], timeout: Duration, acceptedExitCodes: Set<Int32> = [0],
    environment: [String: String] = [:]
  ) throws(NVMeCSIError) -> CommandResult {
    let child = try child(tool, arguments, environment: environment)
    let delivered = Mutex<Result<ChildOutcome, NVMeCSIError>?>(nil)
    child.run(timeout: timeout, control: ChildControl(), deliver: { result in delivered.withLock { $0 = result } })
    let outcome =
      delivered.withLock { $0 } ?? .failure(.internalError("\(child.name) ended without an outcome"))
    return try child.result(of: outcome, timeout: timeout, acceptedExitCodes: acceptedExitCodes)
  }

  /// One command line, checked, ready to run.
  private struct Child {
    let tool: String
    let path: String
    let name: String
    let arguments: [String]
    let environment: [String]
    let outputLimit: Int

    func run(
      timeout: Duration, control: ChildControl, deliver: @Sendable (Result<ChildOutcome, NVMeCSIError>) -> Void
    ) {
      ChildProcess.run(
        path: path, name: name, arguments: arguments, environment: environment,
        timeout: timeout, outputLimit: outputLimit, control: control, deliver: deliver)
    }

    func result(
      of outcome: Result<ChildOutcome, NVMeCSIError>, timeout: Duration, acceptedExitCodes: Set<Int32>
    ) throws(NVMeCSIError) -> CommandResult {
      try CommandRunner.result(
        of: outcome, tool: tool, name: name, arguments: arguments, timeout: timeout,
        acceptedExitCodes: acceptedExitCodes)
    }
  }

  private func child(_ tool: String, _ arguments: [String], environment extra: [String: String])
    throws(NVMeCSIError) -> Child
  {
    let path = try executablePath(of: tool)
    if let bad = arguments.first(where: { $0.contains("\0") }) {
      throw .invalidArgument("argument \(quoted(bad)) for \(tool) contains a NUL byte")
    }
    var environment = ["PATH=" + searchDirectories.joined(separator: ":"), "LC_ALL=C"]
    for (name, value) in extra.sorted(by: { $0.key < $1.key }) {
      guard !name.isEmpty, !name.contains("="), !name.contains("\0"), !value.contains("\0"),
        name != "PATH", name != "LC_ALL"
      else { throw .invalidArgument("environment variable \(quoted(name)) for \(tool) cannot be set") }
      environment.append(name + "=" + value)
    }
    return Child(
      tool: tool, path: path, name: tool.hasPrefix("/") ? (tool as NSString).lastPathComponent : tool,
      arguments: arguments, environment: environment, outputLimit: outputLimit)
  }

  private static func result(
    of outcome: Result<ChildOutcome, NVMeCSIError>, tool: String, name: String, arguments: [String],
    timeout: Duration, acceptedExitCodes: Set<Int32>
  ) throws(NVMeCSIError) -> CommandResult {
    let commandLine = ([name] + arguments).joined(separator: " ")
    let child = try outcome.get()
    let output = Self.summary(stdout: child.stdout, stderr: child.stderr)
    switch child.ending {
    case .timedOut:
      throw .unavailable(
        "\(name) did not finish within \(formatSeconds(timeout)) and was killed (\(commandLine))"
          + "; the device or file system it works on may be unresponsive: check dmesg"
          + (output.isEmpty ? "" : ". Its last output: \(output)"))
    case .cancelled:
      throw .aborted("\(name) was killed because the request was cancelled (\(commandLine))")
    case .lost:
      throw .internalError("the exit status of \(commandLine) was lost: something else in this process reaped it")
    case .signaled(let signal):
      throw .internalError(
        "\(commandLine) was killed by signal \(signal)" + (output.isEmpty ? "" : ": \(output)"))
    case .exited(let code):
      guard acceptedExitCodes.contains(code) else {
        throw .internalError("\(commandLine) failed with exit code \(code): \(output.isEmpty ? "no output" : output)")
      }
      return CommandResult(tool: tool, exitCode: code, standardOutput: child.stdout, standardError: child.stderr)
    }
  }

  private func missing(_ tool: String, lookedIn directories: [String]?) -> NVMeCSIError {
    let name = (tool as NSString).lastPathComponent
    let searched = directories.map { " (looked in \($0.joined(separator: ", ")))" } ?? ""
    let install = Self.packages[name].map { "install \($0) in the node plugin's image" } ?? "install it"
    return .failedPrecondition("\(quoted(tool)) is not installed\(searched): \(install)")
  }

  static func isExecutableFile(_ path: String) -> Bool {
    var st = stat()
    guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return false }
    return access(path, X_OK) == 0
  }

  static func summary(stdout: String, stderr: String) -> String {
    let error = stderr.trimmingCharacters(in: .whitespacesAndNewlines)
    return error.isEmpty ? stdout.trimmingCharacters(in: .whitespacesAndNewlines) : error
  }
}

/// Calls `body` the first time only.
private final class Once<T: Sendable>: Sendable {
  private let body: Mutex<(@Sendable (T) -> Void)?>
  init(_ body: @escaping @Sendable (T) -> Void) { self.body = Mutex(body) }
  func call(_ value: T) {
    let body = self.body.withLock { body in
      defer { body = nil }
      return body
    }
    body?(value)
  }
}

struct ChildOutcome: Sendable {
  enum Ending: Sendable, Equatable {
    case exited(Int32)
    case signaled(Int32)
    case timedOut, cancelled, lost
  }
  var ending: Ending
  var stdout: String
  var stderr: String
}

/// The pid of a running child, shared between the thread that waits for it and a task
/// cancellation handler. A signal is only ever sent before the child is reaped (so never
/// to a recycled pid), and only once.
final class ChildControl: Sendable {
  private struct State {
    var pid: pid_t = 0
    var reaped = false
    var killed = false
    var cancelled = false
  }
  private let state = Mutex(State())

  /// Records the child; kills it at once when the run was cancelled before it started.
  func started(_ pid: pid_t) {
    state.withLock { state in
      state.pid = pid
      if state.cancelled { Self.kill(&state) }
    }
  }

  func cancel() {
    state.withLock { state in
      state.cancelled = true
      Self.kill(&state)
    }
  }

  /// Kills the child for running past its deadline.
  func expire() { state.withLock { Self.kill(&$0) } }

  var wasCancelled: Bool { state.withLock { $0.cancelled } }
  var wasKilled: Bool { state.withLock { $0.killed } }

  private static func kill(_ state: inout State) {
    guard state.pid > 0, !state.reaped, !state.killed else { return }
    state.killed = true
    // The child leads its own process group: take its helpers down with it.
    if Glibc.kill(-state.pid, SIGKILL) != 0 { _ = Glibc.kill(state.pid, SIGKILL) }
  }

  /// The wait status when the child has exited (and is now reaped), else nil; -1 when
  /// something else reaped it.
  func reapIfExited() -> Int32? {
    state.withLock { state in
      var status: Int32 = 0
      let pid = state.pid
      switch valueOrErrno({ waitpid(pid, &status, WNOHANG) }) {
      case .success(pid):
        state.reaped = true
        return status
      case .failure(let error) where error.code == ECHILD:
        state.reaped = true
        return -1
      case .success, .failure:
        return nil  // still running (0); any other error is not an exit, so keep waiting
      }
    }
  }

  /// Waits for a killed child for as long as it takes; only after the caller has its answer.
  func reapEventually() {
    let pid = state.withLock { state in
      state.killed = true  // nothing signals it any more, so waiting without the lock is safe
      return state.pid
    }
    var status: Int32 = 0
    // The only other failure, ECHILD, means something else reaped it: reaped all the same.
    _ = valueOrErrno { waitpid(pid, &status, 0) }
    state.withLock { $0.reaped = true }
  }
}

/// Spawning and supervising one child; everything here runs on one pool thread.
enum ChildProcess {
  static func pipeError(_ name: String, _ error: Errno) -> NVMeCSIError {
    NVMeCSIError(.internalError, "cannot create a pipe for \(name): \(error)", cause: error)
  }

  /// `pipe2(fds, O_CLOEXEC)`: both ends close on exec, set atomically where glibc allows
  /// (Swift does not import pipe2, it needs _GNU_SOURCE).
  static func makePipe() -> Result<(read: Int32, write: Int32), Errno> {
    var fds: [Int32] = [-1, -1]
    let made: Result<Int32, Errno>
    if let pipe2 = Self.pipe2 {
      made = valueOrErrno { fds.withUnsafeMutableBufferPointer { pipe2($0.baseAddress, O_CLOEXEC) } }
    } else {
      made = valueOrErrno { pipe(&fds) }
      // F_SETFD on a descriptor just made cannot fail.
      if case .success = made { for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) } }
    }
    return made.map { _ in (fds[0], fds[1]) }
  }

  private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32
  private static let pipe2: Pipe2? = {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pipe2") else { return nil }
    return unsafeBitCast(symbol, to: Pipe2.self)
  }()

  /// How long a killed child gets to die before the caller is answered anyway.
  static let killGrace: Duration = .seconds(5)

  static func run(
    path: String, name: String, arguments: [String], environment: [String], timeout: Duration,
    outputLimit: Int, control: ChildControl, deliver: @Sendable (Result<ChildOutcome, NVMeCSIError>) -> Void
  ) {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    let stdoutPipe: (read: Int32, write: Int32)
    let stderrPipe: (read: Int32, write: Int32)
    switch makePipe() {
    case .success(let pipe): stdoutPipe = pipe
    case .failure(let error): return deliver(.failure(pipeError(name, error)))
    }
    switch makePipe() {
    case .success(let pipe): stderrPipe = pipe
    case .failure(let error):
      close(stdoutPipe.read)
      close(stdoutPipe.write)
      return deliver(.failure(pipeError(name, error)))
    }
    var spawned = spawn(
      path: path, argv: [name] + arguments, environment: environment, stdout: stdoutPipe.write, stderr: stderrPipe.write
    )
    // ETXTBSY: the executable is open for writing at this instant, for example a file
    // just written whose descriptor a process spawned elsewhere holds between its fork
    // and exec. It passes within moments: try again for up to half a second.
    for _ in 0..<50 {
      guard case .failure(let error) = spawned, error.code == ETXTBSY else { break }
      usleep(10_000)
      spawned = spawn(
        path: path, argv: [name] + arguments, environment: environment, stdout: stdoutPipe.write,
        stderr: stderrPipe.write)
    }
    close(stdoutPipe.write)
    close(stderrPipe.write)
    let pid: pid_t
    switch spawned {
    case .success(let child): pid = child
    case .failure(let error):
      close(stdoutPipe.read)
      close(stderrPipe.read)
      let hint = error == .noEntry || error.code == EACCES ? ": check that \(path) is installed and executable" : ""
      return deliver(
        .failure(NVMeCSIError(.failedPrecondition, "cannot start \(path): \(error)\(hint)", cause: error)))
    }
    control.started(pid)

    var outputs = [BoundedOutput(limit: outputLimit), BoundedOutput(limit: outputLimit)]
    var buffer = [UInt8](repeating: 0, count: 16384)
    var fds = [stdoutPipe.read, stderrPipe.read].map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    for fd in fds { _ = fcntl(fd.fd, F_SETFL, fcntl(fd.fd, F_GETFL) | O_NONBLOCK) }
    defer {
      close(stdoutPipe.read)
      close(stderrPipe.read)
    }
    var graceDeadline: ContinuousClock.Instant?
    var timedOut = false
    var pause = 1  // milliseconds, when there is nothing to poll
    var status: Int32

    while true {
      if let exited = control.reapIfExited() {
        status = exited
        break
      }
      let now = clock.now
      if !timedOut && !control.wasCancelled && now >= deadline {
        timedOut = true
        control.expire()
      }
      if graceDeadline == nil && control.wasKilled { graceDeadline = now.advanced(by: killGrace) }
      if let graceDeadline, now >= graceDeadline {
        // Stuck in the kernel: answer now, reap whenever it finally dies.
        let ending: ChildOutcome.Ending = control.wasCancelled && !timedOut ? .cancelled : .timedOut
        deliver(.success(ChildOutcome(ending: ending, stdout: outputs[0].text, stderr: outputs[1].text)))
        // On a thread of its own: a child stuck in the kernel may never die, and must
        // not keep a pool thread (or a runHere caller) waiting for it.
        Thread { control.reapEventually() }.start()
        return
      }
      let wakeBy = graceDeadline ?? deadline
      let remaining = max(0, Int((wakeBy - now) / .milliseconds(1)) + 1)
      if fds.contains(where: { $0.fd >= 0 }) {
        // Wake up now and then even while pipes stay open: a helper may hold them after the child exited.
        let ready = poll(&fds, nfds_t(fds.count), Int32(min(remaining, 100)))
        if ready > 0 {
          for index in fds.indices where fds[index].fd >= 0 && fds[index].revents != 0 {
            if !drain(fds[index].fd, into: &outputs[index], buffer: &buffer) { fds[index].fd = -1 }
          }
        }
      } else {
        usleep(useconds_t(min(pause, remaining) * 1000))
        pause = min(pause * 2, 50)
      }
    }

    for index in fds.indices where fds[index].fd >= 0 {
      _ = drain(fds[index].fd, into: &outputs[index], buffer: &buffer)
    }
    let ending: ChildOutcome.Ending
    if timedOut {
      ending = .timedOut
    } else if control.wasCancelled && control.wasKilled {
      ending = .cancelled
    } else if status == -1 {
      ending = .lost
    } else if status & 0x7f == 0 {
      ending = .exited((status >> 8) & 0xff)
    } else {
      ending = .signaled(status & 0x7f)
    }
    deliver(.success(ChildOutcome(ending: ending, stdout: outputs[0].text, stderr: outputs[1].text)))
  }

  /// Reads what is available; false at end of file (or on an error that ends reading).
  private static func drain(_ fd: Int32, into output: inout BoundedOutput, buffer: inout [UInt8]) -> Bool {
    while true {
      switch valueOrErrno({ buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }) {
      case .success(0): return false
      case .success(let count): buffer.withUnsafeBytes { output.append(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
      case .failure(let error): return error.code == EAGAIN || error.code == EWOULDBLOCK
      }
    }
  }

  private static func spawn(
    path: String, argv: [String], environment: [String], stdout: Int32, stderr: Int32
  ) -> Result<pid_t, Errno> {
    var actions = posix_spawn_file_actions_t()
    var attributes = posix_spawnattr_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawnattr_init(&attributes)
    defer {
      posix_spawn_file_actions_destroy(&actions)
      posix_spawnattr_destroy(&attributes)
    }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, stdout, 1)
    posix_spawn_file_actions_adddup2(&actions, stderr, 2)
    _ = closeDescriptors(from: 3, in: &actions)

    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    var allSignals = sigset_t()
    sigfillset(&allSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    posix_spawnattr_setsigdefault(&attributes, &allSignals)
    posix_spawnattr_setpgroup(&attributes, 0)
    posix_spawnattr_setflags(
      &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    let cArguments = argv.map { strdup($0) } + [nil]
    let cEnvironment = environment.map { strdup($0) } + [nil]
    defer {
      for argument in cArguments { free(argument) }
      for variable in cEnvironment { free(variable) }
    }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, path, &actions, &attributes, cArguments, cEnvironment)
    return result == 0 ? .success(pid) : .failure(Errno(result))
  }
}

/// Keeps the first quarter and the last three quarters of `limit` bytes of a stream.
struct BoundedOutput {
  let headLimit: Int
  let tailLimit: Int
  private var head: [UInt8] = []
  private var tail: [UInt8] = []
  private var dropped = 0

  init(limit: Int) {
    headLimit = limit / 4
    tailLimit = limit - limit / 4
  }

  mutating func append(_ bytes: UnsafeRawBufferPointer) {
    var rest = bytes[...]
    if head.count < headLimit {
      let taken = rest.prefix(headLimit - head.count)
      head.append(contentsOf: taken)
      rest = rest.dropFirst(taken.count)
    }
    tail.append(contentsOf: rest)
    if tail.count > 2 * tailLimit { trim() }
  }

  private mutating func trim() {
    guard tail.count > tailLimit else { return }
    let excess = tail.count - tailLimit
    tail.removeFirst(excess)
    dropped += excess
  }

  var text: String {
    var copy = self
    copy.trim()
    let marker = copy.dropped > 0 ? "\n[… \(copy.dropped) bytes left out …]\n" : ""
    return String(decoding: copy.head, as: UTF8.self) + marker + String(decoding: copy.tail, as: UTF8.self)
  }
}

/// "30 s", "0.5 s".
func formatSeconds(_ duration: Duration) -> String {
  let (seconds, attoseconds) = duration.components
  if attoseconds == 0 { return "\(seconds) s" }
  let value = Double(seconds) + Double(attoseconds) / 1e18
  return String(format: "%g s", value)
}
