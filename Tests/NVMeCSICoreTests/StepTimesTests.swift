import NVMeCSICore
import Testing

@Suite("StepTimes")
struct StepTimesTests {
  @Test("Steps are listed in order with their milliseconds, to a tenth")
  func listsStepsInOrder() {
    let start = ContinuousClock.now - .milliseconds(1234) - .microseconds(560)
    var steps = StepTimes(since: start)
    steps.lap("connect")
    steps.lap("mount")
    let parts = steps.description.split(separator: ",")
    #expect(parts.count == 2)
    // The first step began at `start`: at least 1234.5 ms ago (the rest is this test's own time).
    let connect = Double(parts[0].dropFirst("connect:".count)) ?? 0
    #expect(parts[0].hasPrefix("connect:") && connect >= 1234.5 && connect < 60_000)
    #expect(parts[1].hasPrefix("mount:"))
    #expect(parts.allSatisfy { $0.split(separator: ":")[1].split(separator: ".").last?.count == 1 })
  }

  @Test("No step, no text")
  func empty() {
    #expect(StepTimes().description.isEmpty)
  }
}
