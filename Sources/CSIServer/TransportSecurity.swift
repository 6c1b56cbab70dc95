import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NIOCertificateReloading
import NVMeCSICore
import ServiceLifecycle
import X509

#if canImport(Glibc)
  import Glibc
#endif

/// PEM files for one side of a mutual-TLS connection (cert-manager's Secret keys).
public struct TLSFiles: Sendable, Hashable {
  /// The CA every peer's certificate must chain to. Read at start: a new CA needs a restart.
  public var ca: String
  /// This side's certificate chain and its key: re-read while running, so a renewed
  /// certificate is used for new connections without a restart.
  public var certificate: String
  public var key: String

  public init(ca: String, certificate: String, key: String) {
    self.ca = ca
    self.certificate = certificate
    self.key = key
  }

  /// Where the manifests mount the Secret.
  public static let kubernetesDefault = TLSFiles(
    ca: "/etc/nvme-csi/tls/ca.crt", certificate: "/etc/nvme-csi/tls/tls.crt", key: "/etc/nvme-csi/tls/tls.key")
}

/// How a gRPC endpoint is secured. Plaintext is for unix sockets and loopback only
/// (`GRPCService` and `makeClient` refuse it elsewhere).
public enum TransportSecurity: Sendable {
  case plaintext
  case mutualTLS(MutualTLS)

  /// What must run beside the servers and clients (the certificate reloader).
  public var services: [any Service] {
    if case .mutualTLS(let tls) = self { [tls.reloader] } else { [] }
  }

  /// Plaintext is acceptable where no other machine can connect.
  static func plaintextAllowed(on endpoint: Endpoint) -> Bool {
    switch endpoint {
    case .unix: true
    case .tcp(let address): address.isLoopback
    }
  }

  /// Refuses plaintext on an endpoint other machines can reach.
  public func check(serving endpoint: Endpoint) throws(NVMeCSIError) {
    if case .plaintext = self, !Self.plaintextAllowed(on: endpoint) {
      throw .invalidArgument(
        "refusing to serve plaintext on \(endpoint): only a unix socket or a loopback address may go without TLS")
    }
  }
}

/// Mutual TLS from files: both sides present a certificate from the same CA.
public struct MutualTLS: Sendable {
  public let files: TLSFiles
  let reloader: TimedCertificateReloader

  /// Loads the certificate and key now, so a missing or mismatched file fails at start
  /// with its path instead of at the first handshake.
  public init(files: TLSFiles, reloadInterval: Duration = .seconds(60), logger: Logger) throws(NVMeCSIError) {
    for path in [files.ca, files.certificate, files.key] where access(path, R_OK) != 0 {
      throw .failedPrecondition("TLS file \(path) cannot be read: \(Errno.current)")
    }
    try Self.checkCA(files.ca)
    let configuration = TimedCertificateReloader.Configuration(
      refreshInterval: reloadInterval,
      certificateSource: .init(location: .file(path: files.certificate), format: .pem),
      privateKeySource: .init(location: .file(path: files.key), format: .pem)
    ) {
      // Called after every successful read; logged only when the certificate changed.
      $0.onCertificateLoaded = { diff in
        if let previous = diff.previousX509CertificateChain, previous != diff.currentX509CertificateChain {
          logger.notice(
            "TLS certificate reloaded",
            metadata: [
              "file": "\(files.certificate)",
              "names": "\(diff.currentX509CertificateChain.first.map(PeerIdentity.names) ?? [])",
            ])
        }
      }
      $0.onCertificateLoadFailed = { failure in
        logger.warning(
          "TLS certificate not reloaded; the previous one stays in use",
          metadata: ["file": "\(files.certificate)", "error": "\(failure.error)"])
      }
    }
    do {
      reloader = try TimedCertificateReloader.makeReloaderValidatingSources(configuration: configuration)
    } catch {
      throw .failedPrecondition(
        "TLS certificate \(files.certificate) with key \(files.key) cannot be used: \(error)")
    }
    self.files = files
  }

  /// The CA file must hold certificates only (several for a CA change-over), each
  /// parseable: found now rather than when the server first listens.
  static func checkCA(_ path: String) throws(NVMeCSIError) {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
      throw .failedPrecondition("TLS CA file \(path) cannot be read: \(error)")
    }
    let end = "-----END CERTIFICATE-----"
    let blocks = text.components(separatedBy: end).dropLast().map { $0 + end }
    guard !blocks.isEmpty else { throw .failedPrecondition("TLS CA file \(path) holds no PEM certificate") }
    for block in blocks {
      do { _ = try Certificate(pemEncoded: block.trimmingCharacters(in: .whitespacesAndNewlines)) } catch {
        throw .failedPrecondition("TLS CA file \(path) holds a certificate that cannot be parsed: \(error)")
      }
    }
  }

  var trustRoots: TLSConfig.TrustRootsSource { .certificates([.file(path: files.ca, format: .pem)]) }

  /// Server side: a client certificate is required and must chain to the CA.
  func server() throws -> HTTP2ServerTransport.Posix.TransportSecurity {
    try .mTLS(certificateReloader: reloader) { config in
      config.trustRoots = trustRoots
      config.clientCertificateVerification = .noHostnameVerification
      config.requireALPN = true
    }
  }

  /// Client side: the server's certificate must chain to the CA and name the server
  /// (`makeClient` sets the name it checks).
  func client() throws -> HTTP2ClientTransport.Posix.TransportSecurity {
    try .mTLS(certificateReloader: reloader) { config in
      config.trustRoots = trustRoots
      config.serverCertificateVerification = .fullVerification
    }
  }
}

/// The names a peer's certificate proves: its DNS and URI subject alternative names and
/// its subject's common names. Authorization compares these exactly.
public enum PeerIdentity {
  public static func names(_ certificate: Certificate) -> [String] {
    var names: [String] = []
    if let alternatives = try? certificate.extensions.subjectAlternativeNames {
      for name in alternatives {
        switch name {
        case .dnsName(let dns): names.append(dns)
        case .uniformResourceIdentifier(let uri): names.append(uri)
        default: break
        }
      }
    }
    for rdn in certificate.subject {
      for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
        if let cn = String(attribute.value) { names.append(cn) }
      }
    }
    return names
  }

  /// The names of the client certificate of this call; nil on a plaintext connection.
  public static func names(of context: ServerContext) -> [String]? {
    guard let posix = context.transportSpecific as? HTTP2ServerTransport.Posix.Context,
      let certificate = posix.peerCertificate
    else { return nil }
    return names(certificate)
  }
}
