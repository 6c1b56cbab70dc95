import CSIProto
import CSIServer
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import NVMeCSICore
import NVMeFabrics

#if canImport(Glibc)
  import Glibc
#endif

/// The end-to-end lifecycle against the real kernel: nvmet through configfs on the
/// target side, nvme-tcp through libnvme on the node side, real mkfs and mount.
/// Runs inside the VM (Tests/e2e/vm.sh); prints each step and ends with
/// "N passed, N failed".
@main
struct Lifecycle {
  static func main() async {
    var arguments = CommandLine.arguments.dropFirst()
    var bin = ""
    var work = "/e2e"
    var store = ""
    var suite = "lifecycle"
    var storeDevice = ""
    var secondStore: String?
    var thirdStore: String?
    var certificates: String?
    var portOffset = 0
    while let flag = arguments.popFirst() {
      switch flag {
      case "--bin": bin = arguments.popFirst() ?? ""
      case "--work": work = arguments.popFirst() ?? work
      case "--store": store = arguments.popFirst() ?? ""
      // faults: the fault suite (Faults.swift); --store-device: the block device
      // under a file store's file system, which the suite unmounts and mounts again.
      case "--suite": suite = arguments.popFirst() ?? suite
      case "--store-device": storeDevice = arguments.popFirst() ?? ""
      // replication: the replicated-volume suite (Replication.swift) over two targets;
      // --second-store: store-b's store.
      case "--second-store": secondStore = arguments.popFirst()
      // --third-store: store-c's store, added when a lost leg is repaired.
      case "--third-store": thirdStore = arguments.popFirst()
      // The target API's certificates (make-certs.sh's directory), made once per VM
      // run; made in --work when not given.
      case "--certs": certificates = arguments.popFirst()
      // Moves the fixed ports and host identity, to run beside another cluster.
      case "--port-offset": portOffset = Int(arguments.popFirst() ?? "") ?? 0
      default: break
      }
    }
    let cluster = Cluster(
      bin: bin, work: work, store: store.isEmpty ? "file:\(work)/store" : store, secondStore: secondStore,
      thirdStore: thirdStore, certificates: certificates, portOffset: portOffset)
    let steps = Steps()
    steps.onFailure = {
      for role in ["target", "target-b", "target-c", "controller", "node"]
      where (role != "target-b" || secondStore != nil) && (role != "target-c" || thirdStore != nil) {
        print("    --- \(role) log (tail)\n\(cluster.logTail(role))")
      }
    }
    do {
      try cluster.startAll()
      let controllerClient = try makeClient(to: .unix(path: cluster.controllerSocket))
      let nodeClient = try makeClient(to: .unix(path: cluster.nodeSocket))
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await controllerClient.runConnections() }
        group.addTask { try await nodeClient.runConnections() }
        let run = Scenario(
          cluster: cluster, steps: steps, controller: .init(wrapping: controllerClient),
          node: .init(wrapping: nodeClient),
          identity: .init(wrapping: nodeClient), controllerIdentity: .init(wrapping: controllerClient))
        if suite == "faults" {
          await Faults(scenario: run, storeDevice: storeDevice).all()
        } else if suite == "replication" {
          await Replication(scenario: run).all()
        } else {
          await run.all()
        }
        controllerClient.beginGracefulShutdown()
        nodeClient.beginGracefulShutdown()
      }
    } catch {
      print("✘ setup: \(error)")
      steps.onFailure?()
      cluster.stopAll()
      print("0 passed, 1 failed")
      exit(1)
    }
    cluster.stopAll()
    print("\(suite) finished in \(steps.elapsed) ms")
    print("\(steps.passed) passed, \(steps.failed) failed")
    exit(steps.failed == 0 ? 0 : 1)
  }
}

typealias Transport = HTTP2ClientTransport.Posix

struct Scenario {
  let cluster: Cluster
  let steps: Steps
  let controller: Csi_V1_Controller.Client<Transport>
  let node: Csi_V1_Node.Client<Transport>
  let identity: Csi_V1_Identity.Client<Transport>
  let controllerIdentity: Csi_V1_Identity.Client<Transport>
  let mebibyte: Int64 = 1 << 20

  func all() async {
    guard
      let nodeID = await steps.run(
        "plugins up: controller reaches the target, node reports its identity", { try await waitUntilReady() })
    else { return }
    guard let ext4 = await mountLifecycle(nodeID: nodeID) else { return }
    await snapshotsAndClones(nodeID: nodeID, source: ext4)
    await expansion(ext4)
    await targetRestart(ext4)
    if cluster.store.hasPrefix("lvm:") {
      // The node side does not depend on the store: once (on the file store) is enough.
      await unreadableDevice(ext4)
    } else {
      await nodePluginCrash(ext4)
      await xfsVolume(nodeID: nodeID)
      await blockVolume(nodeID: nodeID)
      await accessControl(nodeID: nodeID)
    }
    await teardown(ext4)
    await nothingLeft()
  }

  /// Waits for both plugins to be ready; returns the node's ID.
  func waitUntilReady() async throws -> String {
    try await eventually("controller ready") { try await controllerIdentity.probe(.init()).ready.value }
    try await eventually("node ready") { try await identity.probe(.init()).ready.value }
    let info = try await node.nodeGetInfo(.init())
    _ = try NodeID(parsing: info.nodeID)
    steps.note("node_id \(info.nodeID)")
    if let ready = cluster.logTail("target", lines: 50).split(separator: "\n").first(where: {
      $0.contains("target ready")
    }) {
      steps.note("target log: \(ready)")
    }
    return info.nodeID
  }

  /// Creates a volume and attaches it to this node (published, staged, published).
  func createAndAttach(_ name: String, bytes: Int64, _ capability: Csi_V1_VolumeCapability, _ nodeID: String) async
    -> Attached?
  {
    guard
      let volume = await steps.run(
        "CreateVolume \(name), \(bytes / mebibyte) MiB",
        {
          try await controller.createVolume(
            .with {
              $0.name = name
              $0.capacityRange.requiredBytes = bytes
              $0.volumeCapabilities = [capability]
            }
          ).volume
        })
    else { return nil }
    return await attach(volume, capability: capability, nodeID: nodeID, pod: "pod-\(name)")
  }

  /// The volume's block device on this node, if the kernel has it.
  func device(of v: Attached) throws -> BlockDevice? {
    let context = try PublishContext(decoding: v.publishContext)
    return try NVMeTCPAttacher().device(subsystemNQN: context.subsystemNQN, namespaceUUID: context.namespaceUUID)
  }

  // MARK: 1. a file-system volume

  struct Attached {
    var volumeID: String
    var staging: String
    var target: String
    var capability: Csi_V1_VolumeCapability
    var publishContext: [String: String]
    var volumeContext: [String: String]
  }

  func mountLifecycle(nodeID: String) async -> Attached? {
    let capability = mountCapability("ext4")
    guard
      let volume = await steps.run(
        "CreateVolume 256 MiB ext4",
        {
          let v = try await controller.createVolume(
            .with {
              $0.name = "pvc-ext4"
              $0.capacityRange.requiredBytes = 256 * mebibyte
              $0.volumeCapabilities = [capability]
              $0.parameters = ["reconnectDelay": "1", "ctrlLossTmo": "120"]
            }
          ).volume
          steps.note("\(v.volumeID), backed by \(try storeFile(of: v.volumeID))")
          return v
        })
    else { return nil }
    await steps.run("ControllerModifyVolume (a VolumeAttributesClass): ctrlLossTmo 120 → 300, fastIoFailTmo 90") {
      _ = try await controller.controllerModifyVolume(
        .with {
          $0.volumeID = volume.volumeID
          $0.mutableParameters = ["ctrlLossTmo": "300", "fastIoFailTmo": "90"]
        })
    }
    guard let attached = await attach(volume, capability: capability, nodeID: nodeID, pod: "pod-1") else { return nil }
    await steps.run("the kernel's NVMe controller runs with the modified settings (sysfs)") {
      let context = try PublishContext(decoding: attached.publishContext)
      let paths = NVMeTCPAttacher().paths(subsystemNQN: context.subsystemNQN)
      try check(!paths.isEmpty, "no NVMe controller for \(context.subsystemNQN)")
      for path in paths {
        func setting(_ name: String) throws -> String {
          try String(contentsOfFile: "/sys/class/nvme/\(path.name)/\(name)", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let (loss, fail, delay) = (
          try setting("ctrl_loss_tmo"), try setting("fast_io_fail_tmo"), try setting("reconnect_delay")
        )
        try check(
          loss == "300" && fail == "90" && delay == "1",
          "\(path.name): ctrl_loss_tmo \(loss), fast_io_fail_tmo \(fail), reconnect_delay \(delay)")
        steps.note(
          "\(path.name): ctrl_loss_tmo \(loss), fast_io_fail_tmo \(fail), reconnect_delay \(delay) (from the StorageClass)"
        )
      }
    }
    await steps.run("write a file through the mount and fsync it") {
      try writeFile(attached.target + "/data.txt", Self.payload)
      steps.note("wrote \(Self.payload.utf8.count) bytes to \(attached.target)/data.txt")
    }
    await steps.run("NodeGetVolumeStats: sizes sane, condition normal") {
      let stats = try await node.nodeGetVolumeStats(
        .with {
          $0.volumeID = attached.volumeID
          $0.volumePath = attached.target
        })
      let bytes = try stats.usage.first { $0.unit == .bytes }.orThrow("no byte usage")
      try check(bytes.total > 200 * mebibyte && bytes.total <= 256 * mebibyte, "total \(bytes.total)")
      try check(bytes.used > 0 && bytes.available > 0, "used \(bytes.used) available \(bytes.available)")
      try check(stats.usage.contains { $0.unit == .inodes && $0.total > 0 }, "no inode usage")
      try check(!stats.volumeCondition.abnormal, "abnormal: \(stats.volumeCondition.message)")
      steps.note("\(bytes.total) bytes, \(bytes.used) used; \(stats.volumeCondition.message)")
    }
    await steps.run("node metrics: the staged volume and its live NVMe path, from sysfs") {
      let text = try httpGet(port: cluster.nodeMetricsPort, path: "/metrics")
      let live = "nvmecsi_node_volume_paths{volume_id=\"\(attached.volumeID)\",state=\"live\"} 1"
      try check(
        text.contains(live), "no \(live) in:\n\(text.split(separator: "\n").filter { $0.hasPrefix("nvmecsi_node") })")
      try check(
        text.contains(#"nvmecsi_rpc_requests_total{service="csi.v1.Node",method="NodeStageVolume",code="ok"}"#),
        "NodeStageVolume not counted")
      steps.note(
        text.split(separator: "\n").first { $0.hasPrefix("nvmecsi_node_staged_volumes ") }.map(String.init) ?? "")
    }
    return attached
  }

  static let payload = "nvme-csi end-to-end: written through NVMe/TCP at \(Date())\n"

  /// ControllerPublish → NodeStage → NodePublish, each repeated (idempotency against the real kernel).
  func attach(
    _ volume: Csi_V1_Volume, capability: Csi_V1_VolumeCapability, nodeID: String, pod: String, readonly: Bool = false
  )
    async -> Attached?
  {
    let staging = cluster.work + "/kubelet/plugins/staging/" + volume.volumeID
    let target = cluster.work + "/kubelet/pods/\(pod)/volumes/" + volume.volumeID
    guard
      let context = await steps.run(
        "ControllerPublishVolume to this node (twice)",
        {
          var response = Csi_V1_ControllerPublishVolumeResponse()
          for _ in 0..<2 {
            response = try await controller.controllerPublishVolume(
              .with {
                $0.volumeID = volume.volumeID
                $0.nodeID = nodeID
                $0.volumeCapability = capability
                $0.readonly = readonly
              })
          }
          let pairs = response.publishContext.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
          steps.note("publish_context \(pairs.joined(separator: " "))")
          return response.publishContext
        })
    else { return nil }
    let attached = Attached(
      volumeID: volume.volumeID, staging: staging, target: target, capability: capability, publishContext: context,
      volumeContext: volume.volumeContext)
    guard
      await steps.run(
        "NodeStageVolume: connect, find the device, format if blank, mount (twice)",
        {
          try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
          for _ in 0..<2 { _ = try await node.nodeStageVolume(stageRequest(attached)) }
          steps.note(kernelView(attached))
          return true
        }) == true
    else { return nil }
    guard
      await steps.run(
        "NodePublishVolume\(readonly ? " read-only" : "") (twice)",
        {
          try FileManager.default.createDirectory(
            atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
          for _ in 0..<2 { _ = try await node.nodePublishVolume(publishRequest(attached, readonly: readonly)) }
          return true
        }) == true
    else { return nil }
    return attached
  }

  // MARK: 2. snapshots and clones

  func snapshotsAndClones(nodeID: String, source: Attached) async {
    guard
      let snapshot = await steps.run(
        "CreateSnapshot while the volume is published",
        {
          try await controller.createSnapshot(
            .with {
              $0.name = "snap-1"
              $0.sourceVolumeID = source.volumeID
            }
          ).snapshot
        })
    else { return }
    var sources = [("restore", Csi_V1_VolumeContentSource.with { $0.snapshot.snapshotID = snapshot.snapshotID })]
    // On LVM a clone is the same thin snapshot as a restore, and the store contract
    // suite covers both in the VM: once is enough there (LVM calls are slow under TCG).
    if !cluster.store.hasPrefix("lvm:") {
      sources.append(("clone", Csi_V1_VolumeContentSource.with { $0.volume.volumeID = source.volumeID }))
    }
    for (name, contentSource) in sources {
      guard
        let volume = await steps.run(
          "CreateVolume from the \(name == "restore" ? "snapshot" : "volume (clone)")",
          {
            try await controller.createVolume(
              .with {
                $0.name = "pvc-\(name)"
                $0.capacityRange.requiredBytes = 256 * mebibyte
                $0.volumeCapabilities = [source.capability]
                $0.volumeContentSource = contentSource
              }
            ).volume
          })
      else { continue }
      guard let attached = await attach(volume, capability: source.capability, nodeID: nodeID, pod: "pod-\(name)")
      else { continue }
      await steps.run("the \(name) reads back the exact content") {
        let text = try String(contentsOfFile: attached.target + "/data.txt", encoding: .utf8)
        try check(text == Self.payload, "read \(text.debugDescription)")
      }
      await detach(attached, deleteVolume: true)
    }
    await steps.run("DeleteSnapshot (twice)") {
      for _ in 0..<2 { _ = try await controller.deleteSnapshot(.with { $0.snapshotID = snapshot.snapshotID }) }
    }
  }

  // MARK: 3. expansion

  func expansion(_ v: Attached) async {
    await steps.run("ControllerExpandVolume to 512 MiB, then NodeExpandVolume grows ext4 online") {
      let before = try fileSystemBytes(v.target)
      let response = try await controller.controllerExpandVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.capacityRange.requiredBytes = 512 * mebibyte
          $0.volumeCapability = v.capability
        })
      try check(response.nodeExpansionRequired, "node expansion not requested")
      for _ in 0..<2 {
        _ = try await node.nodeExpandVolume(
          .with {
            $0.volumeID = v.volumeID
            $0.volumePath = v.target
            $0.stagingTargetPath = v.staging
            $0.capacityRange.requiredBytes = 512 * mebibyte
            $0.volumeCapability = v.capability
          })
      }
      let after = try fileSystemBytes(v.target)
      try check(after > before + 200 * UInt64(mebibyte), "file system grew from \(before) to only \(after) bytes")
      steps.note("file system: \(before) → \(after) bytes")
    }
  }

  // MARK: 6. robustness

  /// Simulates a storage-node reboot: the target process dies and the kernel target
  /// loses its configuration; the restarted target rebuilds it from its records and
  /// the node's kernel reconnects by itself. Data before and after must be intact.
  func targetRestart(_ v: Attached) async {
    await steps.run("target restart with configfs wiped: the kernel reconnects, data before and after intact") {
      try writeFile(v.target + "/before.txt", "before restart\n")
      cluster.kill(cluster.target)
      try wipeOurNVMetConfig()
      steps.note("target killed and its nvmet subsystems removed; paths: \(pathStates(v))")
      try cluster.startTarget()
      try await eventually("path live again", timeout: .seconds(90)) { pathStates(v).contains("live") }
      try writeFile(v.target + "/after.txt", "after restart\n")
      try check(
        try String(contentsOfFile: v.target + "/before.txt", encoding: .utf8) == "before restart\n",
        "before.txt changed")
      try check(try String(contentsOfFile: v.target + "/data.txt", encoding: .utf8) == Self.payload, "data.txt changed")
      steps.note("paths after restart: \(pathStates(v))")
    }
  }

  func nodePluginCrash(_ v: Attached) async {
    await steps.run("node plugin killed -9 and restarted: its records carry on, every RPC still works") {
      cluster.kill(cluster.node)
      try cluster.startNode()
      try await eventually("node ready") { try await identity.probe(.init()).ready.value }
      _ = try await node.nodeStageVolume(stageRequest(v))
      _ = try await node.nodePublishVolume(publishRequest(v, readonly: false))
      let text = try String(contentsOfFile: v.target + "/after.txt", encoding: .utf8)
      try check(text == "after restart\n", "after.txt reads \(text.debugDescription)")
    }
  }

  // MARK: 4. xfs, block, read-only

  func xfsVolume(nodeID: String) async {
    let capability = mountCapability("xfs")
    guard
      let volume = await steps.run(
        "CreateVolume 320 MiB xfs",
        {
          try await controller.createVolume(
            .with {
              $0.name = "pvc-xfs"
              $0.capacityRange.requiredBytes = 320 * mebibyte
              $0.volumeCapabilities = [capability]
            }
          ).volume
        })
    else { return }
    guard let v = await attach(volume, capability: capability, nodeID: nodeID, pod: "pod-xfs") else { return }
    await steps.run("xfs: write, read back, grow online") {
      try writeFile(v.target + "/x.txt", "xfs\n")
      try check(try String(contentsOfFile: v.target + "/x.txt", encoding: .utf8) == "xfs\n", "read back")
      _ = try await controller.controllerExpandVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.capacityRange.requiredBytes = 400 * mebibyte
        })
      _ = try await node.nodeExpandVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.volumePath = v.target
          $0.capacityRange.requiredBytes = 400 * mebibyte
        })
      try check(try fileSystemBytes(v.target) > 330 * UInt64(mebibyte), "xfs did not grow")
    }
    await steps.run("a read-only publish refuses writes") {
      let ro = v.target + "-ro"
      _ = try await node.nodePublishVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.stagingTargetPath = v.staging
          $0.targetPath = ro
          $0.volumeCapability = capability
          $0.readonly = true
        })
      try check(try String(contentsOfFile: ro + "/x.txt", encoding: .utf8) == "xfs\n", "read through the ro mount")
      try check(
        !FileManager.default.createFile(atPath: ro + "/nope", contents: Data("x".utf8)),
        "wrote through a read-only mount")
      _ = try await node.nodeUnpublishVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.targetPath = ro
        })
    }
    await detach(v, deleteVolume: true)
  }

  func blockVolume(nodeID: String) async {
    let capability = Csi_V1_VolumeCapability.with {
      $0.block = .init()
      $0.accessMode.mode = .singleNodeWriter
    }
    guard
      let volume = await steps.run(
        "CreateVolume 64 MiB raw block",
        {
          try await controller.createVolume(
            .with {
              $0.name = "pvc-block"
              $0.capacityRange.requiredBytes = 64 * mebibyte
              $0.volumeCapabilities = [capability]
            }
          ).volume
        })
    else { return }
    guard let v = await attach(volume, capability: capability, nodeID: nodeID, pod: "pod-block") else { return }
    await steps.run("block: bytes written at known offsets through the published device read back") {
      let offsets: [off_t] = [0, 4096, 63 * off_t(mebibyte)]
      let fd = open(v.target, O_RDWR | oDirect | O_SYNC)  // straight to the device, no page cache
      try check(fd >= 0, "open \(v.target): \(String(cString: strerror(errno)))")
      defer { close(fd) }
      let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
      defer { buffer.deallocate() }
      for (i, offset) in offsets.enumerated() {
        memset(buffer, Int32(0x41 + i), 4096)
        try check(pwrite(fd, buffer, 4096, offset) == 4096, "pwrite at \(offset): \(String(cString: strerror(errno)))")
      }
      for (i, offset) in offsets.enumerated() {
        memset(buffer, 0, 4096)
        try check(pread(fd, buffer, 4096, offset) == 4096, "pread at \(offset)")
        let bytes = buffer.assumingMemoryBound(to: UInt8.self)
        try check((0..<4096).allSatisfy { bytes[$0] == UInt8(0x41 + i) }, "wrong bytes at \(offset)")
      }
      let stats = try await node.nodeGetVolumeStats(
        .with {
          $0.volumeID = v.volumeID
          $0.volumePath = v.target
        })
      try check(stats.usage.first?.total == 64 * mebibyte, "block size \(stats.usage.first?.total ?? -1)")
    }
    await detach(v, deleteVolume: true)
  }

  /// A device that cannot be read while it is staged is never taken for blank: stage
  /// fails, nothing is formatted, and once it reads again the data is all there. The
  /// thin LV under the volume gets device-mapper's `error` table (every read fails,
  /// through nvmet, on the node's NVMe/TCP device), then its own table back.
  func unreadableDevice(_ v: Attached) async {
    await steps.run("a device that cannot be read during NodeStageVolume is refused, never formatted") {
      _ = try await node.nodeUnpublishVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.targetPath = v.target
        })
      _ = try await node.nodeUnstageVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.stagingTargetPath = v.staging
        })
      let lv = try storeFile(of: v.volumeID)
      // The LV's link points at /dev/mapper/<dm name> (no udev) or at /dev/dm-N.
      let linked = String(
        try FileManager.default.destinationOfSymbolicLink(atPath: lv).split(separator: "/").last ?? "")
      let name =
        linked.hasPrefix("dm-")
        ? try String(contentsOfFile: "/sys/block/\(linked)/dm/name", encoding: .utf8)
          .trimmingCharacters(in: .whitespacesAndNewlines) : linked
      let table = try output("/sbin/dmsetup", ["table", name]).trimmingCharacters(in: .whitespacesAndNewlines)
      let sectors = try table.split(separator: " ").dropFirst().first.orThrow("dm table \(table)")
      try run("/sbin/dmsetup", ["load", name, "--table", "0 \(sectors) error"])
      try run("/sbin/dmsetup", ["resume", name])
      steps.note("\(name): \(table) → error")
      let refused = try await expectFailureAny { try await node.nodeStageVolume(stageRequest(v)) }
      steps.note("NodeStageVolume: \(refused)")
      try run("/sbin/dmsetup", ["load", name, "--table", table])
      try run("/sbin/dmsetup", ["resume", name])
      _ = try await node.nodeStageVolume(stageRequest(v))
      _ = try await node.nodePublishVolume(publishRequest(v, readonly: false))
      let text = try String(contentsOfFile: v.target + "/data.txt", encoding: .utf8)
      try check(text == Self.payload, "data.txt after the unreadable stage reads \(text.debugDescription)")
    }
  }

  // MARK: 5. access control

  func accessControl(nodeID: String) async {
    let capability = mountCapability("ext4")
    guard
      let volume = await steps.run(
        "CreateVolume for the access-control checks",
        {
          try await controller.createVolume(
            .with {
              $0.name = "pvc-acl"
              $0.capacityRange.requiredBytes = 32 * mebibyte
              $0.volumeCapabilities = [capability]
            }
          ).volume
        })
    else { return }
    let uuid = String(volume.volumeID.split(separator: ".").last!)
    await steps.run("a host that was not published cannot connect: the kernel target refuses it") {
      let stranger = HostIdentity(
        nqn: try HostNQN("nqn.2014-08.org.nvmexpress:uuid:0badc0de-0000-4000-8000-000000000001"),
        id: try ObjectUUID("0badc0de-0000-4000-8000-000000000001"))
      let context = PublishContext(
        paths: [.init(host: "127.0.0.1", port: UInt16(cluster.portalPort))],
        subsystemNQN: SubsystemNaming.nqn(for: try ObjectUUID(uuid)),
        namespaceUUID: uuid)
      do {
        try await NVMeTCPAttacher().connect(context, as: stranger, with: ConnectionParameters())
        throw CheckFailed("a stranger connected")
      } catch let error as NVMeCSIError {
        steps.note("refused: \(error.message)")
      }
    }
    let staging = cluster.work + "/kubelet/plugins/staging/" + volume.volumeID
    guard
      let v = await steps.run(
        "ControllerPublish to this node and NodeStage",
        {
          try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
          let published = try await controller.controllerPublishVolume(
            .with {
              $0.volumeID = volume.volumeID
              $0.nodeID = nodeID
              $0.volumeCapability = capability
            })
          let v = Attached(
            volumeID: volume.volumeID, staging: staging, target: "", capability: capability,
            publishContext: published.publishContext, volumeContext: volume.volumeContext)
          _ = try await node.nodeStageVolume(stageRequest(v))
          return v
        })
    else { return }
    await steps.run(
      "hostile target API calls (a reader's certificate, a forged exclusive flag, an empty node ID) are refused"
        + " and change nothing in configfs or the store"
    ) {
      let before = (accessState(uuid), cluster.storeContents())
      let strangerNQN = "nqn.2014-08.org.nvmexpress:uuid:0badc0de-0000-4000-8000-000000000002"
      let strangerNode = NodeID(
        hostID: try ObjectUUID("0badc0de-0000-4000-8000-000000000002"), hostNQN: try HostNQN(strangerNQN)
      ).description
      try await cluster.withTargetAPI(as: "reader") { api in
        _ = try await api.listVolumes(.init())  // reading is what a reader may do
        for (what, call) in [
          ("DeleteVolume", { _ = try await api.deleteVolume(.with { $0.uuid = uuid }) }),
          (
            "PublishVolume",
            {
              _ = try await api.publishVolume(
                .with {
                  $0.uuid = uuid
                  $0.nodeID = strangerNode
                  $0.hostNqn = strangerNQN
                })
            }
          ),
          (
            "UnpublishVolume(all_nodes)",
            {
              _ = try await api.unpublishVolume(
                .with {
                  $0.uuid = uuid
                  $0.allNodes = true
                })
            }
          ),
        ] as [(String, () async throws -> Void)] {
          let message = try await expectFailure(.permissionDenied, call)
          if what == "DeleteVolume" { steps.note("reader's \(what): \(message)") }
        }
      }
      try await cluster.withTargetAPI(as: "controller") { api in
        let forged = try await expectFailure(.failedPrecondition) {
          try await api.publishVolume(
            .with {
              $0.uuid = uuid
              $0.nodeID = strangerNode
              $0.hostNqn = strangerNQN
              $0.exclusive = false
            })
        }
        steps.note("second node with exclusive=false: \(forged)")
        let empty = try await expectFailure(.invalidArgument) {
          try await api.unpublishVolume(.with { $0.uuid = uuid })
        }
        steps.note("unpublish without a node ID: \(empty)")
      }
      let after = (accessState(uuid), cluster.storeContents())
      try check(after == before, "changed: \(before) -> \(after)")
    }
    await steps.run("a second host cannot connect while the volume is published to this node: the kernel refuses it") {
      // Straight to the kernel (the attacher would reuse this node's own connection).
      let context = try PublishContext(decoding: v.publishContext)
      let options =
        "nqn=\(context.subsystemNQN),transport=tcp,traddr=127.0.0.1,trsvcid=\(cluster.portalPort),"
        + "hostnqn=nqn.2014-08.org.nvmexpress:uuid:0badc0de-0000-4000-8000-000000000003,"
        + "hostid=0badc0de-0000-4000-8000-000000000003"
      let fd = open("/dev/nvme-fabrics", O_RDWR)
      try check(fd >= 0, "open /dev/nvme-fabrics: \(String(cString: strerror(errno)))")
      defer { close(fd) }
      let written = write(fd, options, options.utf8.count)
      if written >= 0 {
        var answer = [UInt8](repeating: 0, count: 256)
        let count = read(fd, &answer, answer.count)
        throw CheckFailed(
          "the kernel accepted a second host: \(String(decoding: answer.prefix(max(count, 0)), as: UTF8.self))")
      }
      steps.note("refused: \(String(cString: strerror(errno)))")
    }
    await steps.run("after ControllerUnpublish the node can no longer attach it") {
      _ = try await node.nodeUnstageVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.stagingTargetPath = staging
        })
      _ = try await controller.controllerUnpublishVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.nodeID = nodeID
        })
      let message = try await expectFailureAny { try await node.nodeStageVolume(stageRequest(v)) }
      steps.note("NodeStageVolume refused: \(message)")
      _ = try await controller.deleteVolume(.with { $0.volumeID = v.volumeID })
    }
  }

  /// Who may connect to a volume, as the kernel target has it: the subsystem's allowed
  /// hosts and every host entry.
  func accessState(_ uuid: String) -> [String] {
    let fm = FileManager.default
    let subsystem = cluster.nvmet + "/subsystems/" + SubsystemNaming.prefix + uuid
    let allowed = (try? fm.contentsOfDirectory(atPath: subsystem + "/allowed_hosts")) ?? ["(unreadable)"]
    return allowed.sorted().map { "allowed:" + $0 } + cluster.ourHosts().map { "host:" + $0 }
  }

  // MARK: 7. teardown

  func teardown(_ v: Attached) async {
    await detach(v, deleteVolume: true)
  }

  func detach(_ v: Attached, deleteVolume: Bool) async {
    await steps.run(
      "NodeUnpublish, NodeUnstage (device gone), ControllerUnpublish"
        + "\(deleteVolume ? ", DeleteVolume" : "") (each twice)"
    ) {
      for _ in 0..<2 {
        _ = try await node.nodeUnpublishVolume(
          .with {
            $0.volumeID = v.volumeID
            $0.targetPath = v.target
          })
      }
      try check(!FileManager.default.fileExists(atPath: v.target), "target path left behind")
      for _ in 0..<2 {
        _ = try await node.nodeUnstageVolume(
          .with {
            $0.volumeID = v.volumeID
            $0.stagingTargetPath = v.staging
          })
      }
      let context = try PublishContext(decoding: v.publishContext)
      try await eventually("device gone", timeout: .seconds(30)) {
        (try NVMeTCPAttacher().device(subsystemNQN: context.subsystemNQN, namespaceUUID: context.namespaceUUID)) == nil
      }
      let nodeID = try await node.nodeGetInfo(.init()).nodeID
      for _ in 0..<2 {
        _ = try await controller.controllerUnpublishVolume(
          .with {
            $0.volumeID = v.volumeID
            $0.nodeID = nodeID
          })
      }
      if deleteVolume {
        for _ in 0..<2 { _ = try await controller.deleteVolume(.with { $0.volumeID = v.volumeID }) }
      }
    }
  }

  func nothingLeft() async {
    await steps.run("nothing of ours is left: no volumes, no nvmet subsystems or hosts, an empty store") {
      let volumes = try await controller.listVolumes(.init()).entries
      try check(volumes.isEmpty, "volumes left: \(volumes.map(\.volume.volumeID))")
      let subsystems = cluster.ourSubsystems()
      try check(subsystems.isEmpty, "subsystems left: \(subsystems)")
      let hosts = cluster.ourHosts()
      try check(hosts.isEmpty, "hosts left: \(hosts)")
      try check(cluster.storeContents().isEmpty, "left in the store: \(cluster.storeContents())")
    }
  }

  // MARK: helpers

  func mountCapability(_ fsType: String) -> Csi_V1_VolumeCapability {
    .with {
      $0.mount.fsType = fsType
      $0.accessMode.mode = .singleNodeWriter
    }
  }

  func stageRequest(_ v: Attached) -> Csi_V1_NodeStageVolumeRequest {
    .with {
      $0.volumeID = v.volumeID
      $0.stagingTargetPath = v.staging
      $0.volumeCapability = v.capability
      $0.publishContext = v.publishContext
      $0.volumeContext = v.volumeContext
    }
  }

  func publishRequest(_ v: Attached, readonly: Bool) -> Csi_V1_NodePublishVolumeRequest {
    .with {
      $0.volumeID = v.volumeID
      $0.stagingTargetPath = v.staging
      $0.targetPath = v.target
      $0.volumeCapability = v.capability
      $0.readonly = readonly
      $0.publishContext = v.publishContext
      $0.volumeContext = v.volumeContext
    }
  }

  func storeFile(of volumeID: String) throws -> String {
    cluster.dataPath(of: String(volumeID.split(separator: ".").last!))
  }

  /// What the kernel shows for an attached volume: device, size, paths, mount.
  func kernelView(_ v: Attached) -> String {
    guard let context = try? PublishContext(decoding: v.publishContext),
      let device = try? NVMeTCPAttacher().device(
        subsystemNQN: context.subsystemNQN, namespaceUUID: context.namespaceUUID)
    else { return "kernel: no device" }
    return "kernel: \(device.path) \(device.sizeBytes) bytes, paths \(pathStates(v))"
  }

  func pathStates(_ v: Attached) -> String {
    guard let context = try? PublishContext(decoding: v.publishContext) else { return "?" }
    return NVMeTCPAttacher().paths(subsystemNQN: context.subsystemNQN).map { "\($0.name) \($0.address) \($0.state)" }
      .joined(separator: ", ")
  }

  /// Removes our subsystems from the kernel target, in the order the kernel requires.
  func wipeOurNVMetConfig() throws {
    let fm = FileManager.default
    let root = cluster.nvmet
    let ours = cluster.ourSubsystems()
    for port in (try? fm.contentsOfDirectory(atPath: root + "/ports")) ?? [] {
      for link in (try? fm.contentsOfDirectory(atPath: "\(root)/ports/\(port)/subsystems")) ?? []
      where ours.contains(link) {
        unlink("\(root)/ports/\(port)/subsystems/\(link)")
      }
    }
    for nqn in ours {
      let s = "\(root)/subsystems/\(nqn)"
      for host in (try? fm.contentsOfDirectory(atPath: s + "/allowed_hosts")) ?? [] {
        unlink(s + "/allowed_hosts/" + host)
      }
      try? "0".write(toFile: s + "/namespaces/1/enable", atomically: false, encoding: .utf8)
      rmdir(s + "/namespaces/1")
      guard rmdir(s) == 0 else { throw CheckFailed("cannot remove \(s): \(String(cString: strerror(errno)))") }
    }
    for host in cluster.ourHosts() { rmdir(root + "/hosts/" + host) }
  }
}

/// Linux x86_64 O_DIRECT (a GNU macro Glibc does not import).
let oDirect: Int32 = 0o40000

/// A plain HTTP/1.1 GET on loopback (FoundationNetworking is not linked here).
func httpGet(port: UInt16, path: String) throws -> String {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  try check(fd >= 0, "socket: \(String(cString: strerror(errno)))")
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  address.sin_port = port.bigEndian
  let connected = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
  }
  try check(connected == 0, "connect 127.0.0.1:\(port): \(String(cString: strerror(errno)))")
  let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
  try check(write(fd, request, request.count) == request.count, "write: \(String(cString: strerror(errno)))")
  var response: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 65536)
  while true {
    let n = read(fd, &buffer, buffer.count)
    if n <= 0 { break }
    response += buffer[0..<n]
  }
  let text = String(decoding: response, as: UTF8.self)
  try check(text.hasPrefix("HTTP/1.1 200"), "GET \(path): \(text.prefix(80))")
  return text
}

func expectFailureAny(_ body: () async throws -> some Any) async throws -> String {
  do { _ = try await body() } catch let error as RPCError { return "\(error.code): \(error.message)" }
  throw CheckFailed("expected a failure, but the call succeeded")
}

func writeFile(_ path: String, _ text: String) throws {
  let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
  try check(fd >= 0, "open \(path): \(String(cString: strerror(errno)))")
  defer { close(fd) }
  let bytes = Array(text.utf8)
  try check(write(fd, bytes, bytes.count) == bytes.count, "write \(path): \(String(cString: strerror(errno)))")
  try check(fsync(fd) == 0, "fsync \(path): \(String(cString: strerror(errno)))")
}

func fileSystemBytes(_ path: String) throws -> UInt64 {
  var fs = statvfs()
  try check(statvfs(path, &fs) == 0, "statvfs \(path)")
  return UInt64(fs.f_blocks) * UInt64(fs.f_frsize)
}

extension Optional {
  func orThrow(_ message: String) throws -> Wrapped {
    guard let self else { throw CheckFailed(message) }
    return self
  }
}
