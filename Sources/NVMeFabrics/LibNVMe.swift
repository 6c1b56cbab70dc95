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

  public struct Connection: Sendable {
    public var subsystemNQN: String
    public var address: String
    public var port: UInt16
    public var host: HostIdentity
    public var parameters: ConnectionParameters
  }

  /// Connects one NVMe/TCP path. `already` is true when the kernel says this host is
  /// already connected to it (not an error). Returns the controller's name.
  public func connect(_ c: Connection) async throws(NVMeCSIError) -> (controller: String, already: Bool) {
    try await onQueue { () throws(NVMeCSIError) in
      let root = try Self.scannedRoot()
      defer { nvme_free_tree(root) }
      guard let host = nvme_lookup_host(root, c.host.nqn.value, c.host.id.value) else {
        throw .internalError("libnvme could not set up host \(c.host.nqn)")
      }
      guard let ctrl = nvme_create_ctrl(root, c.subsystemNQN, "tcp", c.address, nil, nil, String(c.port)) else {
        throw .internalError("libnvme could not describe controller \(c.subsystemNQN) at \(c.address) port \(c.port)")
      }
      var config = nvme_fabrics_config()
      nvmf_default_config(&config)
      config.ctrl_loss_tmo = Int32(c.parameters.ctrlLossTmo)
      config.reconnect_delay = Int32(c.parameters.reconnectDelay)
      config.fast_io_fail_tmo = Int32(c.parameters.fastIoFailTmo)
      config.keep_alive_tmo = Int32(c.parameters.keepAliveTmo)
      config.nr_io_queues = Int32(c.parameters.nrIoQueues)
      config.duplicate_connect = false
      let result = nvmf_add_ctrl(host, ctrl, &config)
      let code = errno
      if result != 0 {
        nvme_free_ctrl(ctrl)
        if code == Int32(ENVME_CONNECT_ALREADY.rawValue) { return ("", true) }
        throw Self.connectError(code, c)
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
        if nvme_disconnect_ctrl(ctrl) != 0 {
          failures.append("\(name): \(String(cString: strerror(errno)))")
        }
      }
      guard failures.isEmpty else {
        throw .internalError("cannot disconnect \(subsystemNQN): \(failures.joined(separator: "; "))")
      }
    }
  }

  /// A libnvme connect failure as the user should read it. libnvme returns its own
  /// codes (≥ 1000, ENVME_CONNECT_*) besides errno values.
  static func connectError(_ code: Int32, _ c: Connection) -> NVMeCSIError {
    let text = String(cString: nvme_errno_to_string(code))
    let portal = c.address.contains(":") ? "[\(c.address)]:\(c.port)" : "\(c.address):\(c.port)"
    let what = "connecting \(c.subsystemNQN) at \(portal) as \(c.host.nqn) failed: \(text) (\(code))"
    switch code {
    case Int32(ENVME_CONNECT_OPEN.rawValue) where !FileManager.default.fileExists(atPath: NVMeTCPAttacher.fabricsDevice):
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
        what + ": the target refused the connection; check that ControllerPublishVolume granted this node and that the target serves this portal")
    default:
      return .unavailable(what)
    }
  }

  // MARK: internals

  private func onQueue<T: Sendable>(_ body: @escaping @Sendable () throws(NVMeCSIError) -> T) async throws(NVMeCSIError) -> T {
    let result: Result<T, NVMeCSIError> = await withCheckedContinuation { continuation in
      queue.async {
        do throws(NVMeCSIError) { continuation.resume(returning: .success(try body())) } catch {
          continuation.resume(returning: .failure(error))
        }
      }
    }
    return try result.get()
  }

  private static func scannedRoot() throws(NVMeCSIError) -> nvme_root_t {
    // LOG_ERR: libnvme prints only errors to stderr.
    guard let root = nvme_create_root(nil, 3) else { throw .internalError("libnvme could not create its root") }
    if nvme_scan_topology(root, nil, nil) != 0 && errno != ENOENT {
      let code = errno
      nvme_free_tree(root)
      throw .internalError("libnvme could not scan the NVMe topology: \(String(cString: strerror(code)))")
    }
    return root
  }

  /// Every controller of one subsystem, across hosts (libnvme's iterators are C
  /// macros, so walk first/next by hand).
  private static func controllers(in root: nvme_root_t, subsystemNQN: String) -> [nvme_ctrl_t] {
    var out: [nvme_ctrl_t] = []
    var host = nvme_first_host(root)
    while let h = host {
      var subsystem = nvme_first_subsystem(h)
      while let s = subsystem {
        if let nqn = nvme_subsystem_get_nqn(s), String(cString: nqn) == subsystemNQN {
          var ctrl = nvme_subsystem_first_ctrl(s)
          while let c = ctrl {
            out.append(c)
            ctrl = nvme_subsystem_next_ctrl(s, c)
          }
        }
        subsystem = nvme_next_subsystem(h, s)
      }
      host = nvme_next_host(root, h)
    }
    return out
  }
}
