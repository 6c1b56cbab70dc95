import NVMeCSICore
import TestSupport
import Testing

@Suite("Publish context")
struct PublishContextTests {
  static let nqn = SubsystemNaming.nqn(for: try! ObjectUUID(Sample.uuid))

  static var good: [String: String] {
    ["transport": "tcp", "paths": "10.0.0.1:4420", "subsystemNQN": nqn, "namespaceUUID": Sample.uuid]
  }

  @Test("Encoding and decoding keeps every path, IPv4 and IPv6")
  func roundTrip() throws {
    let context = PublishContext(
      paths: [
        .init(host: "10.0.0.1", port: 4420), .init(host: "fd00::1", port: 4421), .init(host: "10.0.0.2", port: 8009),
      ],
      subsystemNQN: Self.nqn, namespaceUUID: Sample.uuid)
    let encoded = context.encoded
    #expect(encoded["transport"] == "tcp")
    #expect(encoded["paths"] == "10.0.0.1:4420,[fd00::1]:4421,10.0.0.2:8009")
    #expect(encoded["subsystemNQN"] == Self.nqn)
    #expect(encoded["namespaceUUID"] == Sample.uuid)
    #expect(encoded.count == 4)
    #expect(try PublishContext(decoding: encoded) == context)
  }

  @Test("The leg map version is kept when above 0, and absent (0) otherwise")
  func legMapVersion() throws {
    var context = try PublishContext(decoding: Self.good)
    #expect(context.legMapVersion == 0)
    #expect(context.encoded["legMapVersion"] == nil)
    for version in [UInt64(1), 42, .max] {
      context.legMapVersion = version
      #expect(context.encoded["legMapVersion"] == String(version))
      #expect(try PublishContext(decoding: context.encoded) == context)
    }
  }

  @Test(
    "A leg map version that is not a decimal number up to 2^64-1 is an invalid argument",
    arguments: ["", "x", "-1", "+1", " 1", "1.0", "0x10", "18446744073709551616"])
  func rejectsLegMapVersion(_ text: String) {
    var values = Self.good
    values["legMapVersion"] = text
    expectError(.invalidArgument, mentioning: ["legMapVersion", quoted(text)]) { try PublishContext(decoding: values) }
  }

  @Test("Extra keys in the publish context are ignored")
  func extraKeys() throws {
    var values = Self.good
    values["somethingElse"] = "x"
    #expect(try PublishContext(decoding: values).paths == [.init(host: "10.0.0.1", port: 4420)])
  }

  static let bad: [(String, [String: String?], String)] = [
    ("no transport", ["transport": nil], "transport"),
    ("empty transport", ["transport": ""], "transport"),
    ("rdma transport", ["transport": "rdma"], quoted("rdma")),
    ("no paths", ["paths": nil], "paths"),
    ("empty paths", ["paths": ""], "paths"),
    ("path without port", ["paths": "10.0.0.1"], quoted("10.0.0.1")),
    ("path with empty port", ["paths": "10.0.0.1:"], quoted("10.0.0.1:")),
    ("port too large", ["paths": "10.0.0.1:65536"], quoted("10.0.0.1:65536")),
    ("port not a number", ["paths": "10.0.0.1:nvme"], quoted("10.0.0.1:nvme")),
    ("one bad path among good ones", ["paths": "10.0.0.1:4420,10.0.0.2"], quoted("10.0.0.2")),
    ("no NQN", ["subsystemNQN": nil], "subsystemNQN"),
    ("foreign NQN", ["subsystemNQN": Sample.hostNQN], quoted(Sample.hostNQN)),
    ("no namespace UUID", ["namespaceUUID": nil], "namespaceUUID"),
    ("uppercase namespace UUID", ["namespaceUUID": Sample.uuid.uppercased()], quoted(Sample.uuid.uppercased())),
    ("garbage namespace UUID", ["namespaceUUID": "1"], quoted("1")),
  ]

  @Test("A publish context this driver did not write is an invalid argument", arguments: bad)
  func rejects(_ why: String, _ changes: [String: String?], _ mention: String) {
    var values = Self.good
    for (key, value) in changes { values[key] = value }
    expectError(.invalidArgument, mentioning: [mention]) { try PublishContext(decoding: values) }
  }

  @Test("A paths value that lists no path is rejected")
  func noPathListed() {
    var values = Self.good
    values["paths"] = ","
    expectError(.invalidArgument, mentioning: ["paths"]) { try PublishContext(decoding: values) }
  }
}
