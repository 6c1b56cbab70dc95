import Logging
import ServiceLifecycle

/// Runs `services` in a service group for `running` (long enough to be inside their
/// loops), then shuts the group down gracefully and returns when every service has
/// ended. A service that waits out its interval instead holds this call that long:
/// pair it with a suite time limit far below the intervals the caller passes.
public func runThenShutDown(_ services: [any Service], running: Duration = .milliseconds(300)) async throws {
  let logger = Logger(label: "test.services") { _ in SwiftLogNoOpLogHandler() }
  let group = ServiceGroup(services: services, gracefulShutdownSignals: [], logger: logger)
  try await withThrowingTaskGroup(of: Void.self) { tasks in
    tasks.addTask { try await group.run() }
    try await Task.sleep(for: running)
    await group.triggerGracefulShutdown()
    try await tasks.waitForAll()
  }
}
