import NVMeCSICore
import TestSupport
import Testing

@Suite("host:port addresses")
struct HostPortTests {
  static let good: [(String, String, UInt16)] = [
    ("127.0.0.1:4420", "127.0.0.1", 4420),
    ("10.0.0.7:0", "10.0.0.7", 0),
    ("[fd00::1]:4420", "fd00::1", 4420),
    ("[::1]:7600", "::1", 7600),
    ("[::ffff:10.0.0.1]:8009", "::ffff:10.0.0.1", 8009),
    ("storage-a.example.com:4420", "storage-a.example.com", 4420),
    ("localhost:65535", "localhost", 65535),
  ]

  @Test("A well-formed address parses into its host and port and prints back unchanged", arguments: good)
  func parsesGood(text: String, host: String, port: UInt16) throws {
    let address = try HostPort(parsing: text)
    #expect(address == HostPort(host: host, port: port))
    #expect(address.description == text)
    #expect(try HostPort(parsing: address.description) == address)
  }

  static let bad: [(String, String)] = [
    ("[::1]x7600", "not [ipv6]:port"),
    ("[::1]", "not [ipv6]:port"),
    ("[::1", "not [ipv6]:port"),
    ("::1:80", "write IPv6 addresses as [address]:port"),
    ("fd00::1", "write IPv6 addresses as [address]:port"),
    ("[10.0.0.1]:80", "brackets are for IPv6 only"),
    ("[]:80", "brackets are for IPv6 only"),
    ("host:", "no valid port"),
    ("host:65536", "no valid port"),
    ("h:+1", "no valid port"),
    ("h:-1", "no valid port"),
    ("h: 80", "no valid port"),
    ("h:80 ", "no valid port"),
    ("h:\u{0663}", "no valid port"),
    ("[::1]:", "no valid port"),
    (":4420", "has no host"),
    ("host", "is not host:port"),
    ("", "is not host:port"),
  ]

  @Test("A malformed address is an invalid argument that says what is wrong", arguments: bad)
  func refusesBad(text: String, reason: String) {
    expectError(.invalidArgument, mentioning: [reason]) { try HostPort(parsing: text) }
  }

  @Test("Only an IPv6 host is written in brackets")
  func brackets() {
    #expect(HostPort(host: "fd00::1", port: 1).bracketedHost == "[fd00::1]")
    #expect(HostPort(host: "fd00::1", port: 1).isIPv6)
    #expect(HostPort(host: "10.0.0.1", port: 1).bracketedHost == "10.0.0.1")
    #expect(!HostPort(host: "10.0.0.1", port: 1).isIPv6)
    #expect(HostPort(host: "storage.example", port: 4420).description == "storage.example:4420")
  }

  @Test(
    "A numeric host is an IPv4 or IPv6 address, not a DNS name",
    arguments: [
      ("10.0.0.1", true), ("255.255.255.255", true), ("fd00::1", true), ("::ffff:10.0.0.1", true), ("::", true),
      ("storage.example", false), ("1.2.3", false), ("1.2.3.4.5", false), ("256.1.1.1", false), ("1..2.3", false),
      ("1234.1.1.1", false), ("fd00::g", false), ("localhost", false),
    ])
  func numericHost(host: String, isNumeric: Bool) {
    #expect(HostPort(host: host, port: 4420).isNumeric == isNumeric)
  }

  @Test(
    "Plaintext is allowed only on a numeric loopback address (a name may resolve anywhere)",
    arguments: [
      ("127.0.0.1", true), ("127.1.2.3", true), ("::1", true), ("localhost", false), ("127.example", false),
      ("10.0.0.1", false), ("0.0.0.0", false), ("::", false), ("fd00::1", false),
    ])
  func loopback(host: String, isLoopback: Bool) {
    #expect(HostPort(host: host, port: 7600).isLoopback == isLoopback)
  }
}
