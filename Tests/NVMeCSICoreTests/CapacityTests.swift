import NVMeCSICore
import TestSupport
import Testing

@Suite("Capacity resolution")
struct CapacityTests {
  struct Case: Sendable, CustomTestStringConvertible {
    var required: UInt64
    var limit: UInt64
    var minimum: UInt64 = 0
    var expected: UInt64
    var testDescription: String { "required \(required), limit \(limit), minimum \(minimum) → \(expected)" }
  }

  static let satisfiable: [Case] = [
    Case(required: 0, limit: 0, expected: GiB),  // nothing asked: the default
    Case(required: 0, limit: 2 * GiB, expected: GiB),  // limit above the default
    Case(required: 0, limit: GiB, expected: GiB),
    Case(required: 0, limit: 512 * MiB, expected: 512 * MiB),  // limit below the default
    Case(required: 0, limit: 512 * MiB + 100, expected: 512 * MiB),  // ... aligned down
    Case(required: 1, limit: 0, expected: MiB),  // aligned up
    Case(required: MiB, limit: 0, expected: MiB),
    Case(required: MiB + 1, limit: 0, expected: 2 * MiB),
    Case(required: 5 * GiB - 1, limit: 0, expected: 5 * GiB),
    Case(required: 1, limit: MiB, expected: MiB),
    Case(required: 10 * MiB, limit: 10 * MiB, expected: 10 * MiB),
    Case(required: MiB + 1, limit: 3 * MiB, expected: 2 * MiB),
    Case(required: 0, limit: 0, minimum: 3 * MiB, expected: 3 * MiB),  // minimum beats the default
    Case(required: MiB, limit: 0, minimum: 3 * MiB, expected: 3 * MiB),
    Case(required: 5 * MiB, limit: 0, minimum: 3 * MiB, expected: 5 * MiB),
    Case(required: 0, limit: 8 * MiB, minimum: 3 * MiB + 1, expected: 4 * MiB),
  ]

  @Test("A satisfiable range resolves to a whole number of MiB within it", arguments: satisfiable)
  func resolves(_ c: Case) throws {
    let size = try Capacity.resolve(required: c.required, limit: c.limit, minimum: c.minimum)
    #expect(size == c.expected)
    #expect(size % Capacity.alignment == 0)
    #expect(size >= c.required && size >= c.minimum)
    #expect(c.limit == 0 || size <= c.limit)
  }

  @Test("Required bytes above the limit are out of range, naming both")
  func requiredAboveLimit() {
    expectError(.outOfRange, mentioning: ["\(2 * MiB)", "\(MiB)"]) {
      try Capacity.resolve(required: 2 * MiB, limit: MiB)
    }
  }

  struct Unsatisfiable: Sendable, CustomTestStringConvertible {
    var required: UInt64
    var limit: UInt64
    var minimum: UInt64 = 0
    var testDescription: String { "required \(required), limit \(limit), minimum \(minimum)" }
  }

  @Test(
    "A range with no whole MiB in it is out of range",
    arguments: [
      Unsatisfiable(required: 1, limit: 1000),
      Unsatisfiable(required: 0, limit: 1000),  // limit below one MiB, no default fits
      Unsatisfiable(required: 0, limit: MiB - 1),
      Unsatisfiable(required: MiB + 1, limit: 2 * MiB - 1),
      Unsatisfiable(required: UInt64.max, limit: 0),  // aligning up would overflow
      Unsatisfiable(required: UInt64.max - 1, limit: UInt64.max),
      Unsatisfiable(required: UInt64(Int64.max), limit: 0),  // rounds up to 2^63: no file offset holds it
      Unsatisfiable(required: Capacity.maximumSize + 1, limit: 0),
      Unsatisfiable(required: 0, limit: 5 * MiB, minimum: 10 * MiB),  // the store's minimum exceeds the limit
    ])
  func unsatisfiable(_ c: Unsatisfiable) {
    expectError(.outOfRange, mentioning: ["capacity_range"]) {
      try Capacity.resolve(required: c.required, limit: c.limit, minimum: c.minimum)
    }
  }

  @Test("Alignment rounds to whole MiB and reports overflow")
  func alignment() {
    #expect(Capacity.alignUp(0) == 0)
    #expect(Capacity.alignUp(1) == MiB)
    #expect(Capacity.alignUp(MiB) == MiB)
    #expect(Capacity.alignUp(UInt64.max) == nil)
    #expect(Capacity.alignDown(MiB - 1) == 0)
    #expect(Capacity.alignDown(3 * MiB + 7) == 3 * MiB)
  }
}
