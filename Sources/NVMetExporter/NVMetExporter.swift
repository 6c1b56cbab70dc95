import NVMeCSICore
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Exports volumes through Linux nvmet's configfs:
///
///     subsystems/<nqn>/attr_allow_any_host = 0, attr_serial, attr_model
///     subsystems/<nqn>/namespaces/1/{device_path, device_uuid, device_nguid, enable}
///     subsystems/<nqn>/allowed_hosts/<host-nqn> -> hosts/<host-nqn>
///     ports/<id>/{addr_trtype, addr_adrfam, addr_traddr, addr_trsvcid}
///     ports/<id>/subsystems/<nqn> -> subsystems/<nqn>
///
/// Only attributes that exist in the kernel's nvmet are written. Removal runs in the
/// order the kernel requires: port links, host links, namespace, subsystem.
public struct NVMetExporter: VolumeExporter {
  public let tree: any ConfigfsTree
  public let portals: [HostPort]
  /// The nvmet port IDs serving `portals`, in the same order.
  public let portIDs: [String]
  /// hosts/<nqn> entries are shared by every volume that allows the host: creating and
  /// linking one, and removing one nobody links any more, must not interleave.
  private let hostEntries = HostEntryLock()

  /// Opens nvmet under a configfs mount point (normally /sys/kernel/config). When the
  /// directory is not configfs, a simulated tree is kept there instead (nothing is
  /// served over the network; `kind` says "simulated").
  public init(configfs: String, portals: [HostPort]) throws(NVMeCSIError) {
    // Under /sys it must be the kernel's configfs (never a stand-in): mount it when
    // the host has not (Talos does not mount configfs).
    if configfs.hasPrefix("/sys/") && !isConfigfs(configfs) && mount("configfs", configfs, "configfs", 0, nil) != 0 {
      throw .failedPrecondition(
        "configfs is not mounted at \(configfs) and mounting it failed (\(String(cString: strerror(errno)))): "
          + "run `mount -t configfs configfs \(configfs)` on the storage node, or run the target privileged"
      )
    }
    let tree: any ConfigfsTree
    if isConfigfs(configfs) {
      tree = KernelConfigfs(root: configfs + "/nvmet")
    } else {
      tree = DirectoryConfigfs(root: configfs + "/nvmet")
      for dir in ["", "/subsystems", "/ports", "/hosts"] {
        if mkdir(configfs + "/nvmet" + dir, 0o755) != 0 && errno != EEXIST {
          throw .internalError("cannot create \(configfs)/nvmet\(dir): \(String(cString: strerror(errno)))")
        }
      }
    }
    try self.init(tree: tree, portals: portals)
  }

  /// Uses `tree` (rooted at nvmet's directory) and creates or reuses a port per portal.
  public init(tree: any ConfigfsTree, portals: [HostPort]) throws(NVMeCSIError) {
    guard tree.exists("subsystems"), tree.exists("ports"), tree.exists("hosts") else {
      throw .failedPrecondition(
        "the kernel NVMe target is not loaded (\(tree.root)/subsystems missing): "
          + "load the nvmet and nvmet_tcp modules (on Talos: machine.kernel.modules)"
      )
    }
    self.tree = tree
    self.portals = portals
    var ids: [String] = []
    for portal in portals { ids.append(try Self.ensurePort(portal, in: tree)) }
    self.portIDs = ids
  }

  public var kind: ExporterKind { tree is KernelConfigfs ? .nvmet : .simulated }

  public func apply(_ spec: ExportSpec) throws(NVMeCSIError) {
    let subsystem = "subsystems/" + spec.subsystemNQN
    try tree.makeDirectory(subsystem)
    try tree.makeDirectory(subsystem + "/namespaces")
    try tree.makeDirectory(subsystem + "/allowed_hosts")
    try setIfDifferent(subsystem + "/attr_allow_any_host", "0")
    // Serial (20 hex digits of the volume UUID, so `nvme list` shows which volume it is)
    // and model are cosmetic, and the kernel freezes them once a host has identified
    // the controller: best effort.
    try? setIfDifferent(subsystem + "/attr_serial", String(spec.volume.hexDigits.prefix(20)))
    try? setIfDifferent(subsystem + "/attr_model", "nvme-csi")

    let namespace = subsystem + "/namespaces/1"
    try tree.makeDirectory(namespace)
    let wanted = [
      ("device_path", spec.devicePath),
      ("device_uuid", SubsystemNaming.namespaceUUID(for: spec.volume).value),
      ("device_nguid", SubsystemNaming.namespaceNGUID(for: spec.volume)),
    ]
    // The kernel reads UUIDs back in lowercase; paths compare exactly.
    let stale = wanted.filter { name, value in
      let current = tree.read(namespace + "/" + name)
      return (name == "device_path" ? current : current?.lowercased()) != value
    }
    if !stale.isEmpty {
      // Identity attributes can only change while the namespace is disabled.
      if tree.read(namespace + "/enable") == "1" { try tree.write(namespace + "/enable", "0") }
      for (name, value) in stale { try tree.write(namespace + "/" + name, value) }
    }
    try setIfDifferent(namespace + "/enable", "1")

    // Hosts: allow exactly the wanted ones.
    let linked = Set(tree.list(subsystem + "/allowed_hosts"))
    for host in spec.allowedHosts.subtracting(linked).sorted() {
      try hostEntries.mutex.withLock { _ throws(NVMeCSIError) in
        try tree.makeDirectory("hosts/" + host)
        try tree.link(subsystem + "/allowed_hosts/" + host, to: "hosts/" + host)
      }
    }
    for host in linked.subtracting(spec.allowedHosts).sorted() {
      try tree.removeLink(subsystem + "/allowed_hosts/" + host)
      try removeHostIfUnused(host)
    }

    for id in portIDs {
      try tree.link("ports/\(id)/subsystems/\(spec.subsystemNQN)", to: subsystem)
    }
  }

  public func refreshSize(of volume: ObjectUUID) throws(NVMeCSIError) {
    let namespace = "subsystems/\(SubsystemNaming.nqn(for: volume))/namespaces/1"
    guard tree.exists(namespace) else { throw .notFound("volume \(volume) is not exported") }
    try tree.write(namespace + "/revalidate_size", "1")
  }

  public func remove(_ volume: ObjectUUID) throws(NVMeCSIError) {
    let nqn = SubsystemNaming.nqn(for: volume)
    let subsystem = "subsystems/" + nqn
    for port in tree.list("ports") {
      try tree.removeLink("ports/\(port)/subsystems/\(nqn)")
    }
    guard tree.exists(subsystem) else { return }
    let hosts = tree.list(subsystem + "/allowed_hosts")
    for host in hosts {
      try tree.removeLink(subsystem + "/allowed_hosts/" + host)
    }
    let namespace = subsystem + "/namespaces/1"
    if tree.exists(namespace) {
      if tree.read(namespace + "/enable") == "1" { try tree.write(namespace + "/enable", "0") }
      try tree.removeDirectory(namespace)
    }
    try tree.removeDirectory(subsystem)
    for host in hosts { try removeHostIfUnused(host) }
  }

  public func exportedVolumes() -> [ObjectUUID] {
    // Another target on this host (another store, another portal) exports on its own
    // ports: its volumes are not this one's to explain.
    tree.list("subsystems").filter { nqn in portIDs.contains { tree.exists("ports/\($0)/subsystems/\(nqn)") } }
      .compactMap(SubsystemNaming.volume(inNQN:))
  }

  public func problem(with spec: ExportSpec) -> String? {
    let subsystem = "subsystems/" + spec.subsystemNQN
    guard tree.exists(subsystem) else { return "not exported: nvmet subsystem \(spec.subsystemNQN) is missing" }
    guard tree.read(subsystem + "/attr_allow_any_host") == "0" else {
      return "nvmet subsystem \(spec.subsystemNQN) allows any host to connect"
    }
    let allowed = Set(tree.list(subsystem + "/allowed_hosts"))
    guard allowed == spec.allowedHosts else {
      return
        "nvmet subsystem \(spec.subsystemNQN) allows hosts \(allowed.sorted()) instead of \(spec.allowedHosts.sorted())"
    }
    let namespace = subsystem + "/namespaces/1"
    guard tree.read(namespace + "/enable") == "1" else {
      return "nvmet namespace 1 of \(spec.subsystemNQN) is not enabled"
    }
    guard tree.read(namespace + "/device_path") == spec.devicePath else {
      return "nvmet namespace 1 of \(spec.subsystemNQN) serves the wrong device"
    }
    for id in portIDs where !tree.exists("ports/\(id)/subsystems/\(spec.subsystemNQN)") {
      return "\(spec.subsystemNQN) is not reachable on nvmet port \(id)"
    }
    return nil
  }

  // MARK: internals

  private func setIfDifferent(_ path: String, _ value: String) throws(NVMeCSIError) {
    if tree.read(path) != value { try tree.write(path, value) }
  }

  /// Reuses the port already listening on this portal, else creates one with the
  /// lowest free ID (other software may own other ports; we never touch those).
  private static func ensurePort(_ portal: HostPort, in tree: any ConfigfsTree) throws(NVMeCSIError) -> String {
    let family = portal.isIPv6 ? "ipv6" : "ipv4"
    var id: String?
    // Another process (a second target on this host) may claim the same free ID
    // between the listing and the mkdir: only the mkdir that creates it owns it.
    for _ in 0..<Self.portClaimAttempts where id == nil {
      let existing = tree.list("ports")
      for id in existing
      where tree.read("ports/\(id)/addr_trtype") == "tcp" && tree.read("ports/\(id)/addr_traddr") == portal.host
        && tree.read("ports/\(id)/addr_trsvcid") == String(portal.port)
      {
        return id
      }
      let taken = Set(existing.compactMap { Int($0) })
      let free = String((1...).first { !taken.contains($0) }!)
      if try tree.makeDirectory("ports/" + free) { id = free }
    }
    guard let id else {
      throw .aborted(
        "could not claim an nvmet port for \(portal) in \(Self.portClaimAttempts) attempts: other processes keep"
          + " creating ports; start again")
    }
    try tree.makeDirectory("ports/\(id)/subsystems")
    try tree.write("ports/\(id)/addr_trtype", "tcp")
    try tree.write("ports/\(id)/addr_adrfam", family)
    try tree.write("ports/\(id)/addr_traddr", portal.host)
    try tree.write("ports/\(id)/addr_trsvcid", String(portal.port))
    return id
  }

  static let portClaimAttempts = 16

  /// Removes hosts/<nqn> once no subsystem allows it. The kernel refuses (EBUSY) while
  /// anything still links it, e.g. a subsystem of another program: that is fine.
  private func removeHostIfUnused(_ host: String) throws(NVMeCSIError) {
    try hostEntries.mutex.withLock { _ throws(NVMeCSIError) in
      let stillUsed = tree.list("subsystems").contains { tree.exists("subsystems/\($0)/allowed_hosts/\(host)") }
      guard !stillUsed else { return }
      do throws(NVMeCSIError) { try tree.removeDirectory("hosts/" + host) } catch  where error.cause == .busy {}
    }
  }
}

/// Serializes changes to the shared hosts/ entries within one exporter.
private final class HostEntryLock: Sendable {
  let mutex = Mutex(())
}
