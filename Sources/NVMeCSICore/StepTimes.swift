/// Where a multi-step operation's time went, for its log line: `record:0.4,connect:73.1,
/// device:3.2` (milliseconds per step, in order; no spaces, so a text log's `key=value`
/// stays one field). A slow attach then says which step was slow, and the VM bench
/// reads the same line.
public struct StepTimes: Sendable, CustomStringConvertible {
  private var last: ContinuousClock.Instant
  private var laps: [(step: String, time: Duration)] = []

  /// The first step begins at `start`.
  public init(since start: ContinuousClock.Instant = .now) { last = start }

  /// Ends the step that began at the previous lap (or at init).
  public mutating func lap(_ step: String) {
    let now = ContinuousClock.now
    laps.append((step, now - last))
    last = now
  }

  public var description: String {
    laps.map { lap in
      let (seconds, attoseconds) = lap.time.components
      let tenthsOfMilliseconds = seconds * 10_000 + attoseconds / 100_000_000_000_000
      return "\(lap.step):\(tenthsOfMilliseconds / 10).\(tenthsOfMilliseconds % 10)"
    }.joined(separator: ",")
  }
}
