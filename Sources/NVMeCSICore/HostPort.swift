/// A network address and port, `host:port` or `[v6]:port`: the one parser and printer
/// for every listen address, portal and publish_context path.
public struct HostPort: Hashable, Sendable, CustomStringConvertible {
  public var host: String
  public var port: UInt16

  public init(host: String, port: UInt16) {
    self.host = host
    self.port = port
  }

  /// Parses `host:port` or `[ipv6]:port` strictly: nothing may follow the port, an
  /// IPv6 address must be bracketed, the host must not be empty.
  public init(parsing s: some StringProtocol) throws(NVMeCSIError) {
    let text = Substring(s)
    let host: Substring
    let portText: Substring
    if text.hasPrefix("[") {
      guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
        throw .invalidArgument("address \(quoted(String(text))) is not [ipv6]:port")
      }
      host = text[text.index(after: text.startIndex)..<close]
      portText = text[text.index(close, offsetBy: 2)...]
      guard host.contains(":") else {
        throw .invalidArgument("address \(quoted(String(text))): brackets are for IPv6 only")
      }
    } else {
      guard let colon = text.lastIndex(of: ":") else {
        throw .invalidArgument("address \(quoted(String(text))) is not host:port")
      }
      host = text[..<colon]
      portText = text[text.index(after: colon)...]
      guard !host.contains(":") else {
        throw .invalidArgument("address \(quoted(String(text))): write IPv6 addresses as [address]:port")
      }
    }
    guard !host.isEmpty else { throw .invalidArgument("address \(quoted(String(text))) has no host") }
    guard portText.allSatisfy({ $0.isASCII && $0.isNumber }), let port = UInt16(portText) else {
      throw .invalidArgument("address \(quoted(String(text))) has no valid port (0-65535)")
    }
    self.init(host: String(host), port: port)
  }

  public var isIPv6: Bool { host.contains(":") }

  /// Whether the host is a numeric IPv4 or IPv6 address (not a DNS name).
  public var isNumeric: Bool {
    let octets = host.split(separator: ".", omittingEmptySubsequences: false)
    let isIPv4 = octets.count == 4 && octets.allSatisfy { !$0.isEmpty && $0.count <= 3 && UInt8($0) != nil }
    return isIPv4 || (isIPv6 && host.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." })
  }

  /// Whether only this machine can reach the address: 127.0.0.0/8 or ::1. Numeric only:
  /// what `localhost` resolves to is up to /etc/hosts and DNS.
  public var isLoopback: Bool {
    host == "::1" || (isNumeric && !isIPv6 && host.hasPrefix("127."))
  }

  /// `[host]` for IPv6, the host as it is otherwise.
  public var bracketedHost: String { isIPv6 ? "[\(host)]" : host }

  public var description: String { "\(bracketedHost):\(port)" }
}
