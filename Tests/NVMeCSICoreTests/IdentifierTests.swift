import Foundation
import NVMeCSICore
import TestSupport
import Testing

@Suite("Volume and snapshot IDs")
struct ObjectIDTests {
  static let goodVolumeIDs = [
    "v1.store-a.\(Sample.uuid)",
    "v1.a.\(Sample.uuid)",
    "v1.0.\(Sample.uuid)",
    "v1.rack-1-store-2.\(Sample.otherUUID)",
    "v1.\(String(repeating: "x", count: 63)).\(Sample.uuid)",
  ]

  @Test("A well-formed volume ID parses into its target and UUID and prints back unchanged", arguments: goodVolumeIDs)
  func parsesGoodVolumeID(_ text: String) throws {
    let id = try ObjectID(parsing: text, as: .volume)
    let parts = text.split(separator: ".").map(String.init)
    #expect(id.kind == .volume)
    #expect(id.target.value == parts[1])
    #expect(id.uuid.value == parts[2])
    #expect(id.description == text)
    #expect(try ObjectID(parsing: id.description, as: .volume) == id)
  }

  @Test("A snapshot ID round-trips through its description")
  func snapshotRoundTrip() throws {
    let id = ObjectID(kind: .snapshot, target: try TargetName("store-b"), uuid: try ObjectUUID(Sample.uuid))
    #expect(id.description == "s1.store-b.\(Sample.uuid)")
    #expect(try ObjectID(parsing: id.description, as: .snapshot) == id)
  }

  @Test("An empty ID is an invalid argument, not a missing object", arguments: [ObjectID.Kind.volume, .snapshot])
  func emptyIsInvalid(_ kind: ObjectID.Kind) {
    expectError(.invalidArgument, mentioning: [kind == .volume ? "volume ID" : "snapshot ID"]) {
      try ObjectID(parsing: "", as: kind)
    }
  }

  static let badVolumeIDs: [(String, String)] = [
    ("wrong kind prefix", "s1.store-a.\(Sample.uuid)"),
    ("unknown version", "v2.store-a.\(Sample.uuid)"),
    ("no prefix", "store-a.\(Sample.uuid)"),
    ("uppercase UUID", "v1.store-a.\(Sample.uuid.uppercased())"),
    ("UUID without dashes", "v1.store-a.\(Sample.uuid.replacingOccurrences(of: "-", with: ""))"),
    ("non-hex UUID", "v1.store-a.0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2g"),
    ("short UUID", "v1.store-a.0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2"),
    ("path traversal in target", "v1.../../etc/passwd.\(Sample.uuid)"),
    ("path traversal in UUID", "v1.store-a.../\(Sample.uuid)"),
    ("slash in target", "v1.store/a.\(Sample.uuid)"),
    ("NUL byte in target", "v1.store\u{0}a.\(Sample.uuid)"),
    ("NUL byte at the end", "v1.store-a.\(Sample.uuid)\u{0}"),
    ("newline at the end", "v1.store-a.\(Sample.uuid)\n"),
    ("uppercase target", "v1.Store-A.\(Sample.uuid)"),
    ("underscore in target", "v1.store_a.\(Sample.uuid)"),
    ("target starting with a dash", "v1.-store.\(Sample.uuid)"),
    ("target ending with a dash", "v1.store-.\(Sample.uuid)"),
    ("empty target", "v1..\(Sample.uuid)"),
    ("non-ASCII target", "v1.störe.\(Sample.uuid)"),
    ("target of 64 characters", "v1.\(String(repeating: "a", count: 64)).\(Sample.uuid)"),
    ("longer than 128 bytes", "v1.\(String(repeating: "a", count: 90)).\(Sample.uuid)"),
    ("extra component", "v1.store-a.\(Sample.uuid).x"),
    ("missing UUID", "v1.store-a"),
    ("missing UUID after dot", "v1.store-a."),
    ("leading space", " v1.store-a.\(Sample.uuid)"),
  ]

  @Test("An ID this driver cannot have made is a volume that does not exist", arguments: badVolumeIDs)
  func rejectsBadVolumeID(_ why: String, _ text: String) {
    let error = expectError(.notFound, mentioning: ["volume", quoted(text)]) {
      try ObjectID(parsing: text, as: .volume)
    }
    // The message quotes hostile input without raw control characters.
    #expect(error?.message.contains("\u{0}") != true, "\(why)")
    #expect(error?.message.contains("\n") != true, "\(why)")
  }

  @Test("A volume ID is not a snapshot ID")
  func volumeIsNotSnapshot() {
    expectError(.notFound, mentioning: ["snapshot"]) {
      try ObjectID(parsing: "v1.store-a.\(Sample.uuid)", as: .snapshot)
    }
  }

  @Test("IDs order by their text")
  func ordering() throws {
    let a = try ObjectID(parsing: "v1.a.\(Sample.otherUUID)", as: .volume)
    let b = try ObjectID(parsing: "v1.b.\(Sample.uuid)", as: .volume)
    #expect(a < b)
    #expect([b, a].sorted() == [a, b])
  }
}

@Suite("Target names")
struct TargetNameTests {
  @Test(
    "A DNS label is a target name",
    arguments: ["a", "0", "store-a", "a-b-c", "store-01", String(repeating: "z", count: 63)])
  func accepts(_ text: String) throws {
    #expect(try TargetName(text).description == text)
  }

  @Test(
    "Anything else is an invalid argument quoting the name",
    arguments: [
      "", "-a", "a-", "-", "A", "Store", "a_b", "a.b", "a b", "a/b", "..", "ä", "a\u{0}",
      String(repeating: "z", count: 64),
    ])
  func rejects(_ text: String) {
    expectError(.invalidArgument, mentioning: [quoted(text), "DNS label"]) { try TargetName(text) }
  }
}

@Suite("Object UUIDs")
struct ObjectUUIDTests {
  @Test("A random UUID is a valid, lowercase version 4 UUID")
  func randomIsVersion4() throws {
    var seen: Set<String> = []
    for _ in 0..<200 {
      let uuid = ObjectUUID.random()
      let chars = Array(uuid.value)
      #expect(chars.count == 36)
      #expect(chars[14] == "4", "version nibble of \(uuid)")
      #expect("89ab".contains(chars[19]), "variant nibble of \(uuid)")
      #expect(uuid.value == uuid.value.lowercased())
      #expect(try ObjectUUID(uuid.value) == uuid)
      #expect(uuid.hexDigits.count == 32)
      #expect(uuid.hexDigits.allSatisfy { $0.isHexDigit })
      seen.insert(uuid.value)
    }
    #expect(seen.count == 200, "random UUIDs repeat")
  }

  @Test(
    "Malformed UUIDs are rejected",
    arguments: [
      "", Sample.uuid.uppercased(), String(Sample.uuid.dropLast()), Sample.uuid + "0",
      "0f8e2c3a1b4d-4e5f-8a6b-7c8d9e0f1a2b-", "0f8e2c3a-1b4d-4e5f-8a6b_7c8d9e0f1a2b",
      "{0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b}", "zf8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b",
    ])
  func rejectsMalformed(_ text: String) {
    expectError(.invalidArgument, mentioning: [quoted(text)]) { try ObjectUUID(text) }
  }

  @Test("The hex digits are the UUID without dashes")
  func hexDigits() throws {
    #expect(try ObjectUUID(Sample.uuid).hexDigits == "0f8e2c3a1b4d4e5f8a6b7c8d9e0f1a2b")
  }
}

@Suite("Quoting user input in messages")
struct QuotedTests {
  @Test("Control characters are escaped and long input is shortened")
  func escapes() {
    #expect(quoted("abc") == "\"abc\"")
    #expect(quoted("a\nb\u{0}c\u{7f}") == "\"a\\u{a}b\\u{0}c\\u{7f}\"")
    let long = quoted(String(repeating: "x", count: 200))
    #expect(long == "\"" + String(repeating: "x", count: 80) + "…\"")
  }
}
