import GRPCCore
import GRPCNIOTransportHTTP2
import NVMeCSICore

/// Where a gRPC service listens or a client connects: `unix:///csi/csi.sock` (CSI
/// endpoints, kubelet's convention) or `host:port` / `tcp://host:port` (the target API).
public enum Endpoint: Hashable, Sendable, CustomStringConvertible {
  case unix(path: String)
  case tcp(host: String, port: Int)

  public init(parsing s: String) throws(NVMeCSIError) {
    if s.hasPrefix("unix://") || s.hasPrefix("unix:") || s.hasPrefix("/") {
      var path = s
      if path.hasPrefix("unix://") { path.removeFirst(7) } else if path.hasPrefix("unix:") { path.removeFirst(5) }
      guard path.hasPrefix("/"), !path.split(separator: "/").contains("..") else {
        throw .invalidArgument("endpoint \(quoted(s)): a unix socket needs an absolute path without '..' (unix:///csi/csi.sock)")
      }
      self = .unix(path: path)
      return
    }
    var rest = Substring(s)
    if rest.hasPrefix("tcp://") { rest = rest.dropFirst(6) }
    let host: Substring
    let portText: Substring
    if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
      host = rest[rest.index(after: rest.startIndex)..<close]
      portText = rest[close...].dropFirst(2)
    } else if let colon = rest.lastIndex(of: ":") {
      host = rest[..<colon]
      portText = rest[rest.index(after: colon)...]
    } else {
      throw .invalidArgument("endpoint \(quoted(s)) is neither unix:///path nor host:port")
    }
    guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else {
      throw .invalidArgument("endpoint \(quoted(s)) is neither unix:///path nor host:port")
    }
    self = .tcp(host: String(host), port: port)
  }

  public var description: String {
    switch self {
    case .unix(let path): "unix://\(path)"
    case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
  }

  var serverAddress: GRPCNIOTransportCore.SocketAddress {
    switch self {
    case .unix(let path): .unixDomainSocket(path: path)
    case .tcp(let host, let port): host.contains(":") ? .ipv6(host: host, port: port) : .ipv4(host: host, port: port)
    }
  }

  var clientTarget: any ResolvableTarget {
    switch self {
    case .unix(let path): .unixDomainSocket(path: path)
    case .tcp(let host, let port):
      host.contains(":") ? .ipv6(host: host, port: port)
        : host.allSatisfy({ $0.isNumber || $0 == "." }) ? .ipv4(host: host, port: port) : .dns(host: host, port: port)
    }
  }
}
