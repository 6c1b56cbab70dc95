import GRPCCore
import GRPCNIOTransportHTTP2
import NVMeCSICore

/// Where a gRPC service listens or a client connects: `unix:///csi/csi.sock` (CSI
/// endpoints, kubelet's convention) or `host:port` / `tcp://host:port` (the target API).
public enum Endpoint: Hashable, Sendable, CustomStringConvertible {
  case unix(path: String)
  case tcp(HostPort)

  public init(parsing s: String) throws(NVMeCSIError) {
    if s.hasPrefix("unix://") || s.hasPrefix("unix:") || s.hasPrefix("/") {
      var path = s
      if path.hasPrefix("unix://") { path.removeFirst(7) } else if path.hasPrefix("unix:") { path.removeFirst(5) }
      guard path.hasPrefix("/"), !path.split(separator: "/").contains("..") else {
        throw .invalidArgument(
          "endpoint \(quoted(s)): a unix socket needs an absolute path without '..' (unix:///csi/csi.sock)")
      }
      self = .unix(path: path)
      return
    }
    do { self = .tcp(try HostPort(parsing: s.hasPrefix("tcp://") ? s.dropFirst(6) : Substring(s))) } catch {
      throw .invalidArgument("endpoint \(quoted(s)) is neither unix:///path nor host:port: \(error.message)")
    }
  }

  public var description: String {
    switch self {
    case .unix(let path): "unix://\(path)"
    case .tcp(let address): address.description
    }
  }

  var serverAddress: GRPCNIOTransportCore.SocketAddress {
    switch self {
    case .unix(let path): .unixDomainSocket(path: path)
    case .tcp(let address):
      address.isIPv6
        ? .ipv6(host: address.host, port: Int(address.port)) : .ipv4(host: address.host, port: Int(address.port))
    }
  }

  var clientTarget: any ResolvableTarget {
    switch self {
    case .unix(let path): .unixDomainSocket(path: path)
    case .tcp(let address):
      address.isIPv6
        ? .ipv6(address: address.host, port: Int(address.port))
        : address.isNumeric
          ? .ipv4(address: address.host, port: Int(address.port))
          : .dns(host: address.host, port: Int(address.port))
    }
  }
}
