import CNVMe
import Dispatch
import Foundation
import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// The one safe type over libnvme. libnvme handles are not thread-safe and its calls
/// block (a connect waits for the kernel), so every call runs on one serial queue off
/// Swift's cooperative pool; each operation builds a fresh topology tree (so no stale
/// handle outlives it) and frees it before returning.
public final class LibNVMe: Sendable {
  private let queue = DispatchQueue(label: "nvme-csi.libnvme")

  public init() {}

  /// One path to connect: which subsystem, at which portal, as which host.
  public struct Connection: Sendable {
    public var subsystemNQN: String
    public var portal: HostPort
    public var host: HostIdentity
    public var parameters: ConnectionParameters
  }

  /// Connects one NVMe/TCP path. `already` is true when the kernel says this host is
  /// already connected to it (not an error). Returns the controller's name.
  public func connect(_ connection: Connection) async throws(NVMeCSIError) -> (controller: String, already: Bool) {
    try await onQueue { () throws(NVMeCSIError) in
      // Not scanned: a connect needs no picture of the other connections (the kernel
      // refuses a duplicate with EALREADY, which libnvme reports as ENVME_CONNECT_ALREADY),
      // and scanning reads every attached subsystem's sysfs, so its cost grew with them.
      let root = try Self.root()
      defer { nvme_free_tree(root) }
      guard let host = nvme_lookup_host(root, connection.host.nqn.value, connection.host.id.value) else {
        throw .internalError("libnvme could not set up host \(connection.host.nqn)")
      }
      let portal = connection.portal
      guard
        let ctrl = nvme_create_ctrl(root, connection.subsystemNQN, "tcp", portal.host, nil, nil, String(portal.port))
      else {
        throw .internalError("libnvme could not describe controller \(connection.subsystemNQN) at \(portal)")
      }
      var fabricsConfig = nvme_fabrics_config()
      nvmf_default_config(&fabricsConfig)
      let parameters = connection.parameters
      fabricsConfig.ctrl_loss_tmo = Int32(parameters.ctrlLossTmo)
      fabricsConfig.reconnect_delay = Int32(parameters.reconnectDelay)
      fabricsConfig.fast_io_fail_tmo = Int32(parameters.fastIoFailTmo)
      fabricsConfig.keep_alive_tmo = Int32(parameters.keepAliveTmo)
      fabricsConfig.nr_io_queues = Int32(parameters.nrIoQueues)
      fabricsConfig.duplicate_connect = false
      // libnvme's own codes (ENVME_CONNECT_*) come back in errno too, so no valueOrErrno here.
      let result = nvmf_add_ctrl(host, ctrl, &fabricsConfig)
      let code = errno
      if result != 0 {
        nvme_free_ctrl(ctrl)
        if code == Int32(ENVME_CONNECT_ALREADY.rawValue) { return ("", true) }
        throw Self.connectError(code, connection)
      }
      // nvme_ctrl_get_name's string belongs to the tree: copy it before freeing.
      let name = nvme_ctrl_get_name(ctrl).map { String(cString: $0) } ?? ""
      return (name, false)
    }
  }

  /// Disconnects every controller of the subsystem; none left is success.
  public func disconnect(subsystemNQN: String) async throws(NVMeCSIError) {
    try await onQueue { () throws(NVMeCSIError) in
      let root = try Self.scannedRoot()
      defer { nvme_free_tree(root) }
      var failures: [String] = []
      for ctrl in Self.controllers(in: root, subsystemNQN: subsystemNQN) {
        // nvme_disconnect_ctrl frees the controller's strings: copy the name first.
        let name = nvme_ctrl_get_name(ctrl).map { String(cString: $0) } ?? "?"
        // libnvme reports failure as any non-zero value (not only -1), with errno set.
        if nvme_disconnect_ctrl(ctrl) != 0 { failures.append("\(name): \(Errno.current)") }
      }
      guard failures.isEmpty else {
        throw .internalError("cannot disconnect \(subsystemNQN): \(failures.joined(separator: "; "))")
      }
    }
  }

  /// A libnvme connect failure as the user should read it. libnvme returns its own
  /// codes (≥ 1000, ENVME_CONNECT_*) besides errno values.
  static func connectError(_ code: Int32, _ connection: Connection) -> NVMeCSIError {
    let text = String(cString: nvme_errno_to_string(code))
    let what =
      "connecting \(connection.subsystemNQN) at \(connection.portal) as \(connection.host.nqn) "
      + "failed: \(text) (\(code))"
    let fabricsDevice = NVMeTCPAttacher.fabricsDevice
    switch code {
    case Int32(ENVME_CONNECT_OPEN.rawValue) where !FileManager.default.fileExists(atPath: fabricsDevice):
      return .failedPrecondition(what + ": " + NVMeTCPAttacher.noFabricsHint)
    case Int32(ENVME_CONNECT_CONNREFUSED.rawValue), Int32(ECONNREFUSED):
      return .unavailable(what + ": is the target serving this portal?")
    case Int32(ENVME_CONNECT_INVAL.rawValue), Int32(EINVAL):
      return .failedPrecondition(
        what + ": the target refused this host or the parameters (was ControllerPublishVolume called for this node?)")
    case Int32(ENVME_CONNECT_WRITE.rawValue):
      // The kernel refused the connect command: most often the target does not allow
      // this host NQN, or nothing serves that subsystem on that portal.
      return .unavailable(
        what
          + ": the target refused the connection; check that ControllerPublishVolume granted this node"
          + " and that the target serves this portal"
      )
    default:
      return .unavailable(what)
    }
  }

  // MARK: internals

  private func onQueue<T: Sendable>(_ body: @escaping @Sendable () throws(NVMeCSIError) -> T) async throws(NVMeCSIError)
    -> T
  {
    let result: Result<T, NVMeCSIError> = await withCheckedContinuation { continuation in
      queue.async {
        do throws(NVMeCSIError) { continuation.resume(returning: .success(try body())) } catch {
          continuation.resume(returning: .failure(error))
        }
      }
    }
    return try result.get()
  }

  private static func root() throws(NVMeCSIError) -> nvme_root_t {
    // LOG_ERR: libnvme prints only errors to stderr.
    guard let root = nvme_create_root(nil, 3) else { throw .internalError("libnvme could not create its root") }
    return root
  }

  private static func scannedRoot() throws(NVMeCSIError) -> nvme_root_t {
    let root = try root()
    // No NVMe devices at all (ENOENT) is an empty topology, not a failure.
    if nvme_scan_topology(root, nil, nil) != 0, case let error = Errno.current, error != .noEntry {
      nvme_free_tree(root)
      throw NVMeCSIError(.internalError, "libnvme could not scan the NVMe topology: \(error)", cause: error)
    }
    return root
  }

  /// Every controller of one subsystem, across hosts (libnvme's iterators are C
  /// macros, so walk first/next by hand).
  private static func controllers(in root: nvme_root_t, subsystemNQN: String) -> [nvme_ctrl_t] {
    var found: [nvme_ctrl_t] = []
    var nextHost = nvme_first_host(root)
    while let host = nextHost {
      var nextSubsystem = nvme_first_subsystem(host)
      while let subsystem = nextSubsystem {
        if let nqn = nvme_subsystem_get_nqn(subsystem), String(cString: nqn) == subsystemNQN {
          var nextController = nvme_subsystem_first_ctrl(subsystem)
          while let controller = nextController {
            found.append(controller)
            nextController = nvme_subsystem_next_ctrl(subsystem, controller)
          }
        }
        nextSubsystem = nvme_next_subsystem(host, subsystem)
      }
      nextHost = nvme_next_host(root, host)
    }
    return found
  }
}
