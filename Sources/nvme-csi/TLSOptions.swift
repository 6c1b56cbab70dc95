import ArgumentParser
import CSIServer
import Logging

/// Mutual TLS on the target API, for the target (server) and the controller (client).
/// The defaults are where the manifests mount the Secret.
struct TLSOptions: ParsableArguments {
  @Option(name: .customLong("tls-ca"), help: "CA certificate (PEM) every peer's certificate must chain to.")
  var ca: String = TLSFiles.kubernetesDefault.ca

  @Option(
    name: .customLong("tls-cert"),
    help: "This process's certificate chain (PEM). Re-read while running: a renewed certificate needs no restart.")
  var certificate: String = TLSFiles.kubernetesDefault.certificate

  @Option(name: .customLong("tls-key"), help: "The private key (PEM) of --tls-cert.")
  var key: String = TLSFiles.kubernetesDefault.key

  @Option(
    name: .customLong("tls-reload-seconds"), help: "How often --tls-cert and --tls-key are checked for a renewal.")
  var reloadSeconds: Int = 60

  @Flag(
    help: ArgumentHelp(
      "Development only: the target API without TLS or authorization."
        + " Refused unless the address is a loopback address or a unix socket."))
  var insecurePlaintext = false

  func validate() throws {
    guard (1...86_400).contains(reloadSeconds) else {
      throw ValidationError("--tls-reload-seconds \(reloadSeconds) is not between 1 and 86400")
    }
  }

  func makeSecurity(logger: Logger) throws -> TransportSecurity {
    if insecurePlaintext {
      logger.critical("INSECURE: the target API runs without TLS or authorization (--insecure-plaintext)")
      return .plaintext
    }
    let files = TLSFiles(ca: ca, certificate: certificate, key: key)
    return .mutualTLS(try MutualTLS(files: files, reloadInterval: .seconds(reloadSeconds), logger: logger))
  }
}
