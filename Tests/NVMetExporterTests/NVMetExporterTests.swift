import Foundation
import NVMeCSICore
import NVMetExporter
import Synchronization
import TestSupport
import Testing

@Suite("nvmet exporter")
struct NVMetExporterTests {
  func spec(_ volume: ObjectUUID, hosts: Set<String>, device: String? = nil) -> ExportSpec {
    ExportSpec(
      volume: volume, devicePath: device ?? "/var/lib/nvme-csi/volumes/\(volume.value).img", allowedHosts: hosts)
  }

  @Test("Opening creates the nvmet tree and one tcp port per portal")
  func createsTreeAndPorts() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let nvmet = Inspector(root: directory + "/nvmet")
      #expect(exporter.kind == .simulated)
      #expect(exporter.tree.root == directory + "/nvmet")
      #expect(exporter.portals == twoPortals)
      for dir in ["subsystems", "ports", "hosts"] { #expect(nvmet.isDirectory(dir), "\(dir)") }
      #expect(exporter.portIDs == ["1", "2"])
      #expect(nvmet.entries("ports") == ["1", "2"])
      #expect(nvmet.attribute("ports/1/addr_trtype") == "tcp")
      #expect(nvmet.attribute("ports/1/addr_adrfam") == "ipv4")
      #expect(nvmet.attribute("ports/1/addr_traddr") == "10.0.0.1")
      #expect(nvmet.attribute("ports/1/addr_trsvcid") == "4420")
      #expect(nvmet.attribute("ports/2/addr_trtype") == "tcp")
      #expect(nvmet.attribute("ports/2/addr_adrfam") == "ipv6")
      #expect(nvmet.attribute("ports/2/addr_traddr") == "fd00::1")
      #expect(nvmet.attribute("ports/2/addr_trsvcid") == "4420")
      #expect(nvmet.isDirectory("ports/1/subsystems"))
      #expect(nvmet.isDirectory("ports/2/subsystems"))
      #expect(exporter.exportedVolumes().isEmpty)
    }
  }

  @Test("A second exporter on the same tree reuses the existing ports")
  func reusesPorts() throws {
    try withConfigfsDirectory { directory in
      let first = try NVMetExporter(configfs: directory, portals: twoPortals)
      let second = try NVMetExporter(configfs: directory, portals: twoPortals.reversed())
      #expect(second.portIDs == ["2", "1"])
      #expect(Inspector(root: first.tree.root).entries("ports") == ["1", "2"])

      let third = try NVMetExporter(configfs: directory, portals: [HostPort(host: "10.0.0.1", port: 8009)])
      #expect(third.portIDs == ["3"])
    }
  }

  @Test("A port ID another target claims between the listing and the mkdir is left to it; the next one is ours")
  func portClaimRace() throws {
    try withConfigfsDirectory { directory in
      _ = try NVMetExporter(configfs: directory, portals: [])
      let tree = RacingConfigfs(root: directory + "/nvmet", rivalPortal: HostPort(host: "127.0.0.1", port: 4420))
      let exporter = try NVMetExporter(tree: tree, portals: [HostPort(host: "127.0.0.1", port: 4421)])
      #expect(exporter.portIDs == ["2"])
      #expect(tree.read("ports/1/addr_trsvcid") == "4420", "the rival's port is untouched")
      #expect(tree.read("ports/2/addr_trsvcid") == "4421")
    }
  }

  @Test("Ports of other software are left alone and their IDs skipped")
  func foreignPorts() throws {
    try withConfigfsDirectory { directory in
      _ = try NVMetExporter(configfs: directory, portals: [])
      let tree = DirectoryConfigfs(root: directory + "/nvmet")
      _ = try tree.makeDirectory("ports/1")
      try tree.write("ports/1/addr_trtype", "rdma")
      try tree.write("ports/1/addr_traddr", "10.0.0.1")
      try tree.write("ports/1/addr_trsvcid", "4420")

      let exporter = try NVMetExporter(configfs: directory, portals: [HostPort(host: "10.0.0.1", port: 4420)])
      #expect(exporter.portIDs == ["2"])
      #expect(tree.read("ports/1/addr_trtype") == "rdma")
    }
  }

  @Test("apply creates a subsystem with namespace 1 that only the allowed hosts reach, on every port")
  func applyCreates() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let nvmet = Inspector(root: exporter.tree.root)
      let volume = ObjectUUID.random()
      let wanted = spec(volume, hosts: [Hosts.a, Hosts.b])
      try exporter.apply(wanted)

      let nqn = SubsystemNaming.nqn(for: volume)
      let subsystem = "subsystems/\(nqn)"
      #expect(nvmet.entries("subsystems") == [nqn])
      #expect(nvmet.attribute("\(subsystem)/attr_allow_any_host") == "0")
      #expect(nvmet.attribute("\(subsystem)/attr_model") == "nvme-csi")
      #expect(nvmet.attribute("\(subsystem)/attr_serial") == String(volume.hexDigits.prefix(20)))
      #expect(nvmet.entries("\(subsystem)/namespaces") == ["1"])
      #expect(nvmet.attribute("\(subsystem)/namespaces/1/device_path") == wanted.devicePath)
      #expect(nvmet.attribute("\(subsystem)/namespaces/1/device_uuid") == volume.value)
      #expect(nvmet.attribute("\(subsystem)/namespaces/1/device_nguid") == SubsystemNaming.namespaceNGUID(for: volume))
      #expect(nvmet.attribute("\(subsystem)/namespaces/1/enable") == "1")

      #expect(nvmet.entries("\(subsystem)/allowed_hosts") == [Hosts.a, Hosts.b].sorted())
      for host in [Hosts.a, Hosts.b] {
        #expect(nvmet.linkTarget("\(subsystem)/allowed_hosts/\(host)") == "hosts/\(host)")
        #expect(nvmet.isDirectory("hosts/\(host)"))
      }
      #expect(nvmet.entries("hosts") == [Hosts.a, Hosts.b].sorted())
      for port in exporter.portIDs {
        #expect(nvmet.entries("ports/\(port)/subsystems") == [nqn])
        #expect(nvmet.linkTarget("ports/\(port)/subsystems/\(nqn)") == subsystem)
      }
      #expect(exporter.exportedVolumes() == [volume])
      #expect(exporter.problem(with: wanted) == nil)
    }
  }

  @Test("apply with no allowed hosts exports to nobody")
  func applyNoHosts() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let volume = ObjectUUID.random()
      try exporter.apply(spec(volume, hosts: []))
      let nvmet = Inspector(root: exporter.tree.root)
      let subsystem = "subsystems/\(SubsystemNaming.nqn(for: volume))"
      #expect(nvmet.entries("\(subsystem)/allowed_hosts").isEmpty)
      #expect(nvmet.attribute("\(subsystem)/attr_allow_any_host") == "0")
      #expect(nvmet.entries("hosts").isEmpty)
    }
  }

  @Test("apply on a converged export changes nothing")
  func applyIsIdempotent() throws {
    try withConfigfsDirectory { directory in
      _ = try NVMetExporter(configfs: directory, portals: twoPortals)
      let tree = RecordingConfigfs(root: directory + "/nvmet")
      let exporter = try NVMetExporter(tree: tree, portals: twoPortals)
      let wanted = spec(.random(), hosts: [Hosts.a, Hosts.b])
      try exporter.apply(wanted)
      #expect(!tree.changes.isEmpty)

      tree.reset()
      try exporter.apply(wanted)
      #expect(tree.changes == [])
      #expect(exporter.problem(with: wanted) == nil)
    }
  }

  @Test("Changing the allowed hosts adds and removes links and drops unused host entries")
  func changeHosts() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let nvmet = Inspector(root: exporter.tree.root)
      let volume = ObjectUUID.random()
      let subsystem = "subsystems/\(SubsystemNaming.nqn(for: volume))"
      try exporter.apply(spec(volume, hosts: [Hosts.a, Hosts.b]))

      try exporter.apply(spec(volume, hosts: [Hosts.b, Hosts.c]))
      #expect(nvmet.entries("\(subsystem)/allowed_hosts") == [Hosts.b, Hosts.c])
      #expect(nvmet.linkTarget("\(subsystem)/allowed_hosts/\(Hosts.c)") == "hosts/\(Hosts.c)")
      #expect(nvmet.entries("hosts") == [Hosts.b, Hosts.c])
      #expect(nvmet.attribute("\(subsystem)/namespaces/1/enable") == "1")

      try exporter.apply(spec(volume, hosts: []))
      #expect(nvmet.entries("\(subsystem)/allowed_hosts").isEmpty)
      #expect(nvmet.entries("hosts").isEmpty)
    }
  }

  @Test("A host another volume still allows keeps its host entry")
  func sharedHostKept() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let nvmet = Inspector(root: exporter.tree.root)
      let one = ObjectUUID.random()
      let two = ObjectUUID.random()
      try exporter.apply(spec(one, hosts: [Hosts.a]))
      try exporter.apply(spec(two, hosts: [Hosts.a]))

      try exporter.apply(spec(one, hosts: [Hosts.b]))
      #expect(nvmet.entries("hosts") == [Hosts.a, Hosts.b])
      #expect(
        nvmet.linkTarget("subsystems/\(SubsystemNaming.nqn(for: two))/allowed_hosts/\(Hosts.a)") == "hosts/\(Hosts.a)")
    }
  }

  @Test("apply with a new device path re-points the enabled namespace")
  func changeDevice() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let nvmet = Inspector(root: exporter.tree.root)
      let volume = ObjectUUID.random()
      try exporter.apply(spec(volume, hosts: [Hosts.a], device: "/old/path.img"))
      let moved = spec(volume, hosts: [Hosts.a], device: "/new/path.img")
      #expect(exporter.problem(with: moved) != nil)

      try exporter.apply(moved)
      let namespace = "subsystems/\(SubsystemNaming.nqn(for: volume))/namespaces/1"
      #expect(nvmet.attribute("\(namespace)/device_path") == "/new/path.img")
      #expect(nvmet.attribute("\(namespace)/enable") == "1")
      #expect(exporter.problem(with: moved) == nil)
    }
  }

  @Test("apply repairs a namespace that was disabled and a port link that went missing")
  func applyRepairs() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let volume = ObjectUUID.random()
      let wanted = spec(volume, hosts: [Hosts.a])
      try exporter.apply(wanted)
      let nqn = SubsystemNaming.nqn(for: volume)
      try exporter.tree.write("subsystems/\(nqn)/namespaces/1/enable", "0")
      try exporter.tree.removeLink("ports/2/subsystems/\(nqn)")
      #expect(exporter.problem(with: wanted) != nil)

      try exporter.apply(wanted)
      #expect(exporter.problem(with: wanted) == nil)
    }
  }

  @Test("refreshSize asks nvmet to re-read the size of an exported volume")
  func refreshSize() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let volume = ObjectUUID.random()
      try exporter.apply(spec(volume, hosts: [Hosts.a]))
      try exporter.refreshSize(of: volume)
      let nvmet = Inspector(root: exporter.tree.root)
      #expect(nvmet.attribute("subsystems/\(SubsystemNaming.nqn(for: volume))/namespaces/1/revalidate_size") == "1")

      let unknown = ObjectUUID.random()
      expectError(.notFound, mentioning: [unknown.value]) { try exporter.refreshSize(of: unknown) }
    }
  }

  @Test("remove takes away everything of one volume, is idempotent and spares the others")
  func remove() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let nvmet = Inspector(root: exporter.tree.root)
      let gone = ObjectUUID.random()
      let kept = ObjectUUID.random()
      let keptSpec = spec(kept, hosts: [Hosts.a])
      try exporter.apply(spec(gone, hosts: [Hosts.a, Hosts.b]))
      try exporter.apply(keptSpec)
      try exporter.refreshSize(of: gone)

      try exporter.remove(gone)
      let keptNQN = SubsystemNaming.nqn(for: kept)
      #expect(nvmet.entries("subsystems") == [keptNQN])
      for port in exporter.portIDs { #expect(nvmet.entries("ports/\(port)/subsystems") == [keptNQN]) }
      #expect(nvmet.entries("hosts") == [Hosts.a])
      #expect(exporter.exportedVolumes() == [kept])
      #expect(exporter.problem(with: keptSpec) == nil)
      #expect(exporter.problem(with: spec(gone, hosts: [])) != nil)

      try exporter.remove(gone)
      try exporter.remove(.random())
      #expect(exporter.exportedVolumes() == [kept])

      try exporter.remove(kept)
      #expect(nvmet.entries("subsystems").isEmpty)
      #expect(nvmet.entries("hosts").isEmpty)
      #expect(nvmet.entries("ports") == ["1", "2"])
      for port in exporter.portIDs { #expect(nvmet.entries("ports/\(port)/subsystems").isEmpty) }
    }
  }

  @Test("exportedVolumes lists only this driver's subsystems on this exporter's ports, not another target's")
  func exportedVolumes() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      try exporter.tree.makeDirectory("subsystems/nqn.2014-08.org.example:someone-else")
      try exporter.tree.makeDirectory("subsystems/nqn.2024-01.dev.nvme-csi:vol:not-a-uuid")
      let volumes = [ObjectUUID.random(), ObjectUUID.random(), ObjectUUID.random()]
      for volume in volumes { try exporter.apply(spec(volume, hosts: [Hosts.a])) }
      // A second target on this host: another store, another portal.
      let other = try NVMetExporter(configfs: directory, portals: [HostPort(host: "127.0.0.1", port: 4430)])
      let theirs = ObjectUUID.random()
      try other.apply(spec(theirs, hosts: [Hosts.a]))
      #expect(Set(exporter.exportedVolumes()) == Set(volumes))
      #expect(exporter.exportedVolumes().count == 3)
      #expect(other.exportedVolumes() == [theirs])
    }
  }

  @Test("problem(with:) says what is wrong with an export")
  func problems() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let volume = ObjectUUID.random()
      let wanted = spec(volume, hosts: [Hosts.a])
      let nqn = SubsystemNaming.nqn(for: volume)

      let missing = try #require(exporter.problem(with: wanted))
      #expect(missing.contains(nqn) && missing.contains("missing"), "\(missing)")

      try exporter.apply(wanted)
      #expect(exporter.problem(with: wanted) == nil)

      try exporter.tree.write("subsystems/\(nqn)/namespaces/1/enable", "0")
      let disabled = try #require(exporter.problem(with: wanted))
      #expect(disabled.contains("not enabled"), "\(disabled)")
      try exporter.tree.write("subsystems/\(nqn)/namespaces/1/enable", "1")

      let wrongDevice = try #require(exporter.problem(with: spec(volume, hosts: [Hosts.a], device: "/elsewhere.img")))
      #expect(wrongDevice.contains("wrong device"), "\(wrongDevice)")

      try exporter.tree.removeLink("ports/2/subsystems/\(nqn)")
      let unreachable = try #require(exporter.problem(with: wanted))
      #expect(unreachable.contains("port 2"), "\(unreachable)")
    }
  }

  @Test("Without the kernel's nvmet tree the exporter refuses to start")
  func kernelNotLoaded() throws {
    try withConfigfsDirectory { (directory) throws in
      expectError(.failedPrecondition, mentioning: ["nvmet", directory]) {
        try NVMetExporter(tree: DirectoryConfigfs(root: directory), portals: twoPortals)
      }
      #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
    }
  }
}

@Suite("Hosts shared by volumes")
struct SharedHostTests {
  @Test("A host entry another volume is linking is never removed under it")
  func concurrentAllowAndRevoke() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let churned = ObjectUUID.random()
      let watched = ObjectUUID.random()
      let inspector = Inspector(root: directory + "/nvmet")
      let dangling = Mutex(0)
      let failures = Mutex<[String]>([])
      DispatchQueue.concurrentPerform(iterations: 2) { worker in
        let volume = worker == 0 ? churned : watched
        let device = "/d/\(volume.value).img"
        for _ in 0..<300 {
          do {
            try exporter.apply(ExportSpec(volume: volume, devicePath: device, allowedHosts: [Hosts.a]))
            if worker == 1 && !FileManager.default.fileExists(atPath: inspector.root + "/hosts/" + Hosts.a) {
              dangling.withLock { $0 += 1 }
            }
            try exporter.apply(ExportSpec(volume: volume, devicePath: device, allowedHosts: []))
          } catch {
            failures.withLock { $0.append("\(error)") }
          }
        }
      }
      #expect(failures.withLock { $0 } == [])
      #expect(dangling.withLock { $0 } == 0, "a volume allowed a host whose entry another volume had just removed")
      #expect(inspector.entries("hosts") == [], "the last revocation removes the host entry")
    }
  }
}

@Suite("Simulated configfs")
struct DirectoryConfigfsTests {
  @Test(
    "Attributes nvmet does not have are rejected",
    arguments: [
      "subsystems/x/attr_bogus", "ports/1/addr_port", "subsystems/x/namespaces/1/device", "subsystems/x/Enable",
    ])
  func unknownAttribute(_ path: String) throws {
    try withConfigfsDirectory { directory in
      let tree = DirectoryConfigfs(root: directory)
      try FileManager.default.createDirectory(
        atPath: directory + "/" + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
      expectError(.internalError, mentioning: [directory + "/" + path]) { try tree.write(path, "1") }
      #expect(!FileManager.default.fileExists(atPath: directory + "/" + path))
    }
  }

  @Test(
    "A namespace's identity can change only while it is disabled",
    arguments: ["device_path", "device_uuid", "device_nguid"])
  func identityWhileEnabled(_ attribute: String) throws {
    try withConfigfsDirectory { directory in
      let tree = DirectoryConfigfs(root: directory)
      let namespace = "subsystems/s/namespaces/1"
      try FileManager.default.createDirectory(atPath: directory + "/" + namespace, withIntermediateDirectories: true)
      try tree.write("\(namespace)/\(attribute)", "first")
      try tree.write("\(namespace)/enable", "1")
      expectError(.internalError, mentioning: [attribute]) { try tree.write("\(namespace)/\(attribute)", "second") }
      #expect(tree.read("\(namespace)/\(attribute)") == "first")

      try tree.write("\(namespace)/enable", "0")
      try tree.write("\(namespace)/\(attribute)", "second")
      #expect(tree.read("\(namespace)/\(attribute)") == "second")
    }
  }

  @Test("Removing a directory takes its attributes and empty groups but not links")
  func removeDirectory() throws {
    try withConfigfsDirectory { directory in
      let tree = DirectoryConfigfs(root: directory)
      for dir in [
        "hosts", "hosts/h", "subsystems", "subsystems/s", "subsystems/s/allowed_hosts", "subsystems/s/namespaces",
      ] {
        _ = try tree.makeDirectory(dir)
      }
      #expect(try tree.makeDirectory("hosts") == false)
      try tree.write("subsystems/s/attr_allow_any_host", "0")
      try tree.link("subsystems/s/allowed_hosts/h", to: "hosts/h")
      try tree.link("subsystems/s/allowed_hosts/h", to: "hosts/h")  // existing link: success

      expectError(.internalError) { try tree.removeDirectory("subsystems/s") }
      #expect(tree.exists("subsystems/s/allowed_hosts/h"))

      try tree.removeLink("subsystems/s/allowed_hosts/h")
      try tree.removeLink("subsystems/s/allowed_hosts/h")  // missing link: success
      try tree.removeDirectory("subsystems/s")
      #expect(!tree.exists("subsystems/s"))
      try tree.removeDirectory("subsystems/s")  // missing: success
      #expect(tree.list("subsystems").isEmpty)
    }
  }
}

@Suite("Portals")
struct PortalTests {
  static let good: [(String, String, UInt16, Bool)] = [
    ("10.0.0.1:4420", "10.0.0.1", 4420, false),
    ("0.0.0.0:4420", "0.0.0.0", 4420, false),
    ("255.255.255.255:65535", "255.255.255.255", 65535, false),
    ("192.168.1.10:1", "192.168.1.10", 1, false),
    ("[::]:4420", "::", 4420, true),
    ("[::1]:8009", "::1", 8009, true),
    ("[fd00:1:2::a]:4420", "fd00:1:2::a", 4420, true),
    ("[::ffff:10.0.0.1]:4420", "::ffff:10.0.0.1", 4420, true),
  ]

  @Test("Numeric IPv4 and bracketed IPv6 portals parse and print back", arguments: good)
  func parses(_ text: String, _ address: String, _ port: UInt16, _ isIPv6: Bool) throws {
    let portal = try HostPort(portal: text)
    #expect(portal.host == address)
    #expect(portal.port == port)
    #expect(portal.isIPv6 == isIPv6)
    #expect(portal.description == text)
  }

  @Test(
    "Hostnames, bad ports and malformed addresses are rejected, quoting the input",
    arguments: [
      "", "10.0.0.1", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:-1", "10.0.0.1:nvme",
      "storage.example.com:4420", "localhost:4420", "target-1:4420", "256.0.0.1:4420", "10.0.0:4420",
      "10.0.0.1.5:4420", ":4420", "[fd00::1]", "[fd00::1]4420", "[fd00::1:4420", "[fd00::1]:", "[fd00::1]:0",
      "[fe80::1%eth0]:4420", "[zz::1]:4420", "[]:4420", "10.0.0.1 :4420",
    ])
  func rejects(_ text: String) {
    expectError(.invalidArgument, mentioning: [quoted(text)]) { try HostPort(portal: text) }
  }
}

@Suite("Exporter input and health checks")
struct ExporterChecks {
  @Test("An IPv4 portal with an empty octet is rejected")
  func emptyOctet() {
    expectError(.invalidArgument) { try HostPort(portal: "10..0.1:4420") }
  }

  @Test("An IPv6 address without brackets is rejected rather than split at its last colon")
  func unbracketedIPv6() {
    expectError(.invalidArgument) { try HostPort(portal: "fd00::1") }
  }

  @Test("problem(with:) notices an export open to hosts the spec does not allow")
  func problemIgnoresHosts() throws {
    try withConfigfsDirectory { directory in
      let exporter = try NVMetExporter(configfs: directory, portals: twoPortals)
      let volume = ObjectUUID.random()
      let wanted = ExportSpec(volume: volume, devicePath: "/d.img", allowedHosts: [Hosts.a])
      try exporter.apply(wanted)
      try exporter.tree.write("subsystems/\(SubsystemNaming.nqn(for: volume))/attr_allow_any_host", "1")
      #expect(exporter.problem(with: wanted) != nil)
      #expect(exporter.problem(with: ExportSpec(volume: volume, devicePath: "/d.img", allowedHosts: [Hosts.b])) != nil)
    }
  }

  @Test("Reading an attribute drops the newline around its value; a missing one reads nil; a listing is sorted")
  func readAndList() throws {
    try withConfigfsDirectory { directory in
      let tree = DirectoryConfigfs(root: directory)
      try tree.makeDirectory("ports")
      try tree.write("ports/addr_traddr", "  10.0.0.1\t")
      #expect(tree.read("ports/addr_traddr") == "10.0.0.1")  // the file holds "  10.0.0.1\t\n"
      try tree.write("ports/addr_trsvcid", "")
      #expect(tree.read("ports/addr_trsvcid") == "")
      #expect(tree.read("ports/addr_trtype") == nil)
      #expect(tree.read("ports") == nil)  // a directory is no attribute
      for port in ["2", "10", "1"] { try tree.makeDirectory("ports/\(port)") }
      #expect(tree.list("ports") == ["1", "10", "2", "addr_traddr", "addr_trsvcid"])
      #expect(tree.list("hosts").isEmpty)
    }
  }
}
