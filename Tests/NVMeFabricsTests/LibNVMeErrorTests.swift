import CNVMe
import Foundation
import NVMeCSICore
import Testing

@testable import NVMeFabrics

#if canImport(Glibc)
  import Glibc
#endif

/// How libnvme's connect failures read to a user: libnvme's own text (its codes are
/// ≥ 1000, strerror knows nothing of them), what was being connected, and the status.
@Suite("libnvme connect errors")
struct LibNVMeErrorTests {
  static func connection(host: String = "127.0.0.1", port: UInt16 = 4420) -> LibNVMe.Connection {
    .init(subsystemNQN: Sample.nqnA, portal: HostPort(host: host, port: port), host: Sample.host, parameters: .init())
  }

  static func libnvmeText(_ code: Int32) -> String { String(cString: nvme_errno_to_string(code)) }

  static let connectCodes: [nvme_connect_err] = [
    ENVME_CONNECT_RESOLVE, ENVME_CONNECT_ADDRFAM, ENVME_CONNECT_TRADDR, ENVME_CONNECT_TARG, ENVME_CONNECT_AARG,
    ENVME_CONNECT_OPEN, ENVME_CONNECT_WRITE, ENVME_CONNECT_READ, ENVME_CONNECT_PARSE, ENVME_CONNECT_INVAL_TR,
    ENVME_CONNECT_LOOKUP_SUBSYS_NAME, ENVME_CONNECT_LOOKUP_SUBSYS, ENVME_CONNECT_ALREADY, ENVME_CONNECT_INVAL,
    ENVME_CONNECT_ADDRINUSE, ENVME_CONNECT_NODEV, ENVME_CONNECT_OPNOTSUPP, ENVME_CONNECT_CONNREFUSED,
  ]

  @Test("The libnvme constants are the numbers util.h documents")
  func constants() {
    #expect(Self.connectCodes.map(\.rawValue) == Array(1000...1017).map { UInt32($0) })
  }

  @Test(
    "Every ENVME_CONNECT_* failure carries libnvme's text, the subsystem, the address and the code",
    arguments: connectCodes)
  func libnvmeText(code: nvme_connect_err) {
    let number = Int32(code.rawValue)
    let text = Self.libnvmeText(number)
    #expect(!text.isEmpty && !text.hasPrefix("Unknown error"), "libnvme has a text for \(number): \(text)")
    let error = LibNVMe.connectError(number, Self.connection())
    for fragment in [text, Sample.nqnA, "127.0.0.1:4420", "(\(number))", Sample.host.nqn.value] {
      #expect(error.message.contains(fragment), "\(error) does not mention \(fragment)")
    }
    #expect(error.kind != .internalError)
  }

  @Test(
    "A refused connection is Unavailable, whichever way it is reported",
    arguments: [Int32(ENVME_CONNECT_CONNREFUSED.rawValue), ECONNREFUSED])
  func refused(code: Int32) {
    let error = LibNVMe.connectError(code, Self.connection())
    #expect(error.kind == .unavailable)
    #expect(error.message.contains(Self.libnvmeText(code)))
    #expect(error.message.contains("target serving this portal"))
  }

  @Test(
    "Invalid arguments mean the target refused this host: FailedPrecondition pointing at ControllerPublishVolume",
    arguments: [Int32(ENVME_CONNECT_INVAL.rawValue), EINVAL])
  func refusedHost(code: Int32) {
    let error = LibNVMe.connectError(code, Self.connection())
    #expect(error.kind == .failedPrecondition)
    #expect(error.message.contains("ControllerPublishVolume"))
    #expect(error.message.contains(Self.libnvmeText(code)))
  }

  @Test("Failing to open the fabrics device without one is FailedPrecondition telling what to load")
  func openWithoutFabrics() throws {
    try #require(
      !FileManager.default.fileExists(atPath: NVMeTCPAttacher.fabricsDevice), "this machine has NVMe over Fabrics")
    let error = LibNVMe.connectError(Int32(ENVME_CONNECT_OPEN.rawValue), Self.connection())
    #expect(error.kind == .failedPrecondition)
    #expect(error.message.contains("load nvme-tcp"))
    #expect(error.message.contains("Talos"))
  }

  @Test(
    "Other failures are Unavailable: the target may come back",
    arguments: [
      Int32(ENVME_CONNECT_RESOLVE.rawValue), Int32(ENVME_CONNECT_WRITE.rawValue),
      Int32(ENVME_CONNECT_ADDRINUSE.rawValue),
      ETIMEDOUT, EHOSTUNREACH,
    ])
  func otherFailures(code: Int32) {
    let error = LibNVMe.connectError(code, Self.connection())
    #expect(error.kind == .unavailable)
    #expect(error.message.contains(Self.libnvmeText(code)))
  }

  @Test("An IPv6 portal is written with brackets so the port is not read as part of the address")
  func ipv6Address() {
    let error = LibNVMe.connectError(Int32(ENVME_CONNECT_CONNREFUSED.rawValue), Self.connection(host: "fd00::1"))
    #expect(error.message.contains("[fd00::1]:4420"))
    #expect(!error.message.contains("fd00::1:4420"))
  }

  @Test("A connect command the kernel could not write is Unavailable, pointing at the host grant and the portal")
  func writeRefused() {
    let code = Int32(ENVME_CONNECT_WRITE.rawValue)
    let error = LibNVMe.connectError(code, Self.connection())
    #expect(error.kind == .unavailable)
    #expect(error.message.contains(Self.libnvmeText(code)))
    #expect(error.message.contains("ControllerPublishVolume"))
  }
}
