import CSIProto
import Foundation
import GRPCCore
import NVMeCSICore
import NVMeFabrics

#if canImport(Glibc)
  import Glibc
#endif

/// Replicated volumes on the real kernel (`nvme-csi-e2e --suite replication`): two
/// targets in one VM, each with its own store, API port and NVMe/TCP portal, and the
/// node mirroring a volume's two legs with md RAID1. A target dies under a writer with
/// checksums; the writer must see zero errors, the time writes stall is measured, and
/// the leg must come back by itself and resync. Each result is printed as a
/// `replication:` line (docs/reliability.md collects them).
struct Replication {
  let scenario: Scenario
  var cluster: Cluster { scenario.cluster }
  var steps: Steps { scenario.steps }
  let mebibyte: Int64 = 1 << 20

  func all() async {
    guard let nodeID = await steps.run("plugins up: the controller reaches both targets", { try await ready() })
    else { return }
    let blockCapability = Csi_V1_VolumeCapability.with {
      $0.block = .init()
      $0.accessMode.mode = .singleNodeWriter
    }
    let ext4 = scenario.mountCapability("ext4")
    guard let block = await createAndAttach("pvc-mirror-block", bytes: 64 * mebibyte, blockCapability, nodeID)
    else { return }
    await steps.run("the node mirrors the two legs with md RAID1, both in sync") {
      let array = try mdArray(of: block)
      let state = try mdState(array)
      try check(state.legs.count == 2 && state.degraded == 0, "md: \(state)")
      let message = try await condition(block).message
      try check(message == "2 of 2 legs in sync", "stats: \(message)")
      // The controller's view: each target reads md's superblock on its leg.
      let controller = try await scenario.controller.controllerGetVolume(.with { $0.volumeID = block.volumeID })
        .status.volumeCondition
      try check(
        controller.message == "all 2 legs present and exported, in sync by md's superblocks",
        "ControllerGetVolume: \(controller.message)")
      steps.note("\(array): \(state)")
    }
    guard let mounted = await createAndAttach("pvc-mirror-ext4", bytes: 64 * mebibyte, ext4, nodeID) else { return }
    await storageNodeUpgrade(mounted: mounted, block: block)
    await scenario.detach(block, deleteVolume: true)
    await fileSystemVolume(mounted, megabytes: 64, grown: 96, nodeID: nodeID)
    // xfs needs 300 MiB at least.
    if let xfs = await createAndAttach("pvc-mirror-xfs", bytes: 320 * mebibyte, scenario.mountCapability("xfs"), nodeID)
    {
      await fileSystemVolume(xfs, megabytes: 320, grown: 384, nodeID: nodeID)
    }
    await repairLostLeg(blockCapability, nodeID: nodeID)
    await steps.run("nothing of ours is left on any target") {
      let volumes = try await scenario.controller.listVolumes(.init()).entries
      try check(volumes.isEmpty, "volumes left: \(volumes.map(\.volume.volumeID))")
      try check(cluster.storeContents().isEmpty, "left in store-a: \(cluster.storeContents())")
      let second = cluster.storeContents(of: cluster.secondStore ?? "")
      try check(second.isEmpty, "left in store-b: \(second)")
      let third = cluster.storeContents(of: cluster.thirdStore ?? "")
      try check(third.isEmpty, "left in store-c: \(third)")
    }
  }

  func ready() async throws -> String {
    let nodeID = try await scenario.waitUntilReady()
    try await eventually("store-b answers") {
      try await scenario.controller.getCapacity(.init()).availableCapacity > 0
        && cluster.secondTarget?.isRunning == true
        && (cluster.thirdStore == nil || isListening(port: cluster.thirdAPIPort))
    }
    return nodeID
  }

  /// CreateVolume with replicas=2, then the kubelet's attach steps.
  func createAndAttach(_ name: String, bytes: Int64, _ capability: Csi_V1_VolumeCapability, _ nodeID: String) async
    -> Scenario.Attached?
  {
    guard
      let volume = await steps.run(
        "CreateVolume \(name), \(bytes / mebibyte) MiB, replicas=2: a leg on each target",
        {
          let volume = try await scenario.controller.createVolume(
            .with {
              $0.name = name
              $0.capacityRange.requiredBytes = bytes
              $0.volumeCapabilities = [capability]
              $0.parameters = ["replicas": "2"]
            }
          ).volume
          let id = try VolumeID(parsing: volume.volumeID)
          try check(
            id.targets.map(\.value) == ["store-a", "store-b"] || id.targets.map(\.value) == ["store-b", "store-a"],
            "legs on \(id.targets)")
          steps.note("volume \(volume.volumeID)")
          return volume
        })
    else { return nil }
    return await scenario.attach(volume, capability: capability, nodeID: nodeID, pod: "pod-\(name)")
  }

  // MARK: a storage node goes away for an upgrade and returns

  /// A storage-node upgrade: store-b is killed -9, its NVMe/TCP portal and its
  /// subsystems removed from nvmet (connections are refused, as from a node that is
  /// rebooting; its nvmet configuration is gone, as after a reboot), and it stays away
  /// for `outage`. An ext4 mirror is written with checksums across the whole outage: its
  /// writes stall for about fastIoFailTmo, md fails the leg and the writer goes on,
  /// without an I/O error and without the file system turning read-only. Meanwhile the
  /// block mirror is unstaged and staged again (md starts it from the fresh leg alone:
  /// its superblock says the other failed) and the node plugin is killed -9 and
  /// restarted. When store-b returns it rebuilds its exports, the kernel reconnects the
  /// ext4 mirror's leg by itself, the new plugin connects the block mirror's (down at
  /// stage), and both are re-added: md resyncs what the bitmap says changed.
  func storageNodeUpgrade(mounted: Scenario.Attached, block: Scenario.Attached, outage: Duration = .seconds(60)) async {
    defer { if cluster.secondTarget?.isRunning != true { try? cluster.startSecondTarget() } }
    await steps.run(
      "a storage-node upgrade under verified I/O on ext4: store-b killed -9, its portal and nvmet subsystems gone,"
        + " back after \(outage.components.seconds) s; meanwhile the block mirror staged again from its fresh leg and"
        + " the node plugin killed -9 and restarted; 0 I/O errors, ext4 still read-write, both stale legs re-added"
    ) {
      // 20 MiB at 256 KiB/s: the writes go on across the outage and the return.
      let writer = try Writer(file: mounted.target + "/upgrade", megabytes: 20, ratePerSecond: "256k")
      try await Task.sleep(for: .seconds(1))
      let killed = ContinuousClock.now
      do { try killSecondTarget(wipingSubsystemsOf: [mounted, block]) } catch {
        writer.stop()
        throw error
      }
      let stall = try directWrite(to: block.target, at: 60 * mebibyte) - killed
      try await eventually("md fails the dead legs", timeout: .seconds(30)) {
        try mdState(try mdArray(of: mounted)).degraded == 1 && mdState(try mdArray(of: block)).degraded == 1
      }
      let degraded = try await condition(mounted)
      try check(degraded.abnormal && degraded.message.hasPrefix("degraded: 1 of 2 legs in sync"), degraded.message)

      // As kubelet does, a call that meets the reconciler on the volume is repeated.
      try await unpublishAndUnstage(block)
      try check((try? mdArray(of: block)) == nil, "the block mirror's md array is left after NodeUnstage")
      try await stageAndPublish(block)
      let restaged = try mdState(try mdArray(of: block))
      try check(restaged.legs.count == 1 && restaged.degraded == 1, "expected a degraded start: \(restaged)")
      let onBlock = try Writer(device: block.target, megabytes: 4, ratePerSecond: "4m").finish()
      try check(onBlock.errors == 0, "fio on the restaged degraded mirror reported errors:\n\(onBlock.output)")
      cluster.kill(cluster.node)
      try cluster.startNode()
      try await eventually("node plugin back") { try await scenario.identity.probe(.init()).ready.value }

      try await Task.sleep(until: killed + outage, clock: .continuous)
      try cluster.startSecondTarget()
      let restarted = ContinuousClock.now
      var inSync: [String: Duration] = [:]
      try await eventually("both stale legs reconnected, re-added and resynced", timeout: .seconds(120)) {
        for (name, v) in [("mounted", mounted), ("block", block)] where inSync[name] == nil {
          if try await !condition(v).abnormal, try mdState(try mdArray(of: v)).syncAction == "idle" {
            inSync[name] = ContinuousClock.now - restarted
          }
        }
        return inSync.count == 2
      }
      let result = try writer.finish()
      try check(result.errors == 0, "fio reported \(result.errors) error(s):\n\(result.output)")
      try check(result.verifiedBytes >= 20 * mebibyte, "fio verified only \(result.verifiedBytes) bytes")
      let array = try mdArray(of: mounted)
      try check(try mountOptions(of: mounted.target).contains("rw"), "ext4 is no longer read-write")
      try check(try ext4Errors(on: array) == 0, "ext4 counted errors on \(array)")
      let mismatches = try checkLegsAgree(array) + checkLegsAgree(try mdArray(of: block))
      try check(mismatches == 0, "the legs differ after the resync: \(mismatches) sectors")
      steps.note(
        "replication: target killed under writes | verified \(result.verifiedBytes) bytes | errors 0 | writes stalled "
          + "\(milliseconds(stall)) ms | out \(outage.components.seconds) s | leg back in sync "
          + "\(milliseconds(inSync["mounted"] ?? .zero)) ms after the target restarted | ext4 read-write, 0 errors"
          + " | md check: 0 mismatched sectors")
      steps.note(
        "replication: restaged degraded, stale leg re-added and in sync \(milliseconds(inSync["block"] ?? .zero))"
          + " ms after its target restarted")
    }
  }

  /// The options of the mount at `path` (the sixth field of its line in mountinfo).
  func mountOptions(of path: String) throws -> [Substring] {
    let table = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
    guard let line = table.split(separator: "\n").last(where: { $0.split(separator: " ")[4] == path }) else {
      throw CheckFailed("nothing mounted at \(path)")
    }
    return line.split(separator: " ")[5].split(separator: ",")
  }

  /// The errors ext4 counted on `device` since it was mounted (it remounts read-only on one).
  func ext4Errors(on device: String) throws -> Int {
    let text = try String(contentsOfFile: "/sys/fs/ext4/\(device)/errors_count", encoding: .utf8)
    return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
  }

  // MARK: a file system on a mirror, grown

  /// A mounted mirror of `megabytes`: a file written, the volume grown online to
  /// `grown` MiB; ext4 is then snapshotted and restored. The volume is deleted after.
  func fileSystemVolume(_ v: Scenario.Attached, megabytes: Int64, grown: Int64, nodeID: String) async {
    let capability = v.capability
    let fsType = capability.mount.fsType
    await steps.run(
      "\(fsType) on the mirror: a file written, the volume grown to \(grown) MiB online, the file intact"
    ) {
      let file = v.target + "/data"
      let writer = try Writer(file: file, megabytes: 8)
      try check(try writer.finish().errors == 0, "writing the file failed")
      let before = try fileSystemBytes(v.target)
      let expanded = try await scenario.controller.controllerExpandVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.capacityRange.requiredBytes = grown * mebibyte
          $0.volumeCapability = capability
        })
      try check(expanded.nodeExpansionRequired, "node expansion not asked for")
      _ = try await scenario.node.nodeExpandVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.volumePath = v.target
          $0.stagingTargetPath = v.staging
          $0.capacityRange.requiredBytes = grown * mebibyte
        })
      let after = try fileSystemBytes(v.target)
      try check(after > before + UInt64((grown - megabytes) / 2 * mebibyte), "file system \(before) → \(after) bytes")
      let verified = try Writer(verifying: file).finish()
      try check(verified.errors == 0, "the file does not verify after the grow:\n\(verified.output)")
      steps.note("file system \(before / 1_048_576) → \(after / 1_048_576) MiB; md \(try mdState(try mdArray(of: v)))")
    }
    if fsType == "ext4" { await snapshotAndRestore(v, capability: capability, nodeID: nodeID) }
    await scenario.detach(v, deleteVolume: true)
  }

  // MARK: a snapshot of a mirror, restored

  /// A snapshot of the mounted ext4 mirror (its in-sync leg's, chosen by the targets'
  /// reading of md's superblocks), restored into a new replicated volume: the node
  /// creates the new mirror from the restored leg and md copies it onto the blank one.
  func snapshotAndRestore(_ v: Scenario.Attached, capability: Csi_V1_VolumeCapability, nodeID: String) async {
    guard
      let snapshot = await steps.run(
        "CreateSnapshot of the mounted ext4 mirror: one in-sync leg's, listed under the volume",
        {
          let snapshot = try await scenario.controller.createSnapshot(
            .with {
              $0.name = "snap-mirror"
              $0.sourceVolumeID = v.volumeID
            }
          ).snapshot
          try check(snapshot.sourceVolumeID == v.volumeID, "source \(snapshot.sourceVolumeID)")
          try check(snapshot.sizeBytes == 96 * mebibyte, "size \(snapshot.sizeBytes)")  // grown above
          steps.note("snapshot \(snapshot.snapshotID)")
          return snapshot
        })
    else { return }
    guard
      let volume = await steps.run(
        "CreateVolume pvc-mirror-restored, replicas=2, from the snapshot: leg 0 a copy, leg 1 blank",
        {
          let volume = try await scenario.controller.createVolume(
            .with {
              $0.name = "pvc-mirror-restored"
              $0.capacityRange.requiredBytes = 96 * mebibyte
              $0.volumeCapabilities = [capability]
              $0.parameters = ["replicas": "2"]
              $0.volumeContentSource.snapshot.snapshotID = snapshot.snapshotID
            }
          ).volume
          let seed = try VolumeID(parsing: v.volumeID).uuid.value
          try check(volume.volumeContext[ReplicaLayout.seedKey] == seed, "context \(volume.volumeContext)")
          return volume
        })
    else { return }
    // md starts copying during NodeStage: timed from before the attach, the copy's rate
    // below is a lower bound.
    let attaching = ContinuousClock.now
    guard let restored = await scenario.attach(volume, capability: capability, nodeID: nodeID, pod: "pod-restored")
    else { return }
    await steps.run("the restored file reads back exactly; md copies leg 0 onto leg 1 and reports both in sync") {
      let verified = try Writer(verifying: restored.target + "/data").finish()
      try check(verified.errors == 0, "the restored file does not verify:\n\(verified.output)")
      let array = try mdArray(of: restored)
      try await eventually("the restored mirror in sync", timeout: .seconds(120)) {
        try await condition(restored).message == "2 of 2 legs in sync"
      }
      let elapsed = milliseconds(ContinuousClock.now - attaching)
      let mismatches = try checkLegsAgree(array)
      try check(mismatches == 0, "md check: \(mismatches) sectors differ between the legs")
      steps.note(
        "replication: restored 96 MiB mirror in sync \(elapsed) ms after its attach began (a full copy of the blank"
          + " leg, at least \(96_000 / max(1, elapsed)) MiB/s); md check: 0 mismatched sectors")
    }
    await scenario.detach(restored, deleteVolume: true)
    await steps.run("DeleteSnapshot") {
      _ = try await scenario.controller.deleteSnapshot(.with { $0.snapshotID = snapshot.snapshotID })
    }
  }

  // MARK: helpers

  // MARK: a target lost for good, its leg repaired on store-c

  /// store-b is lost for good under a writer with checksums, and `nvme-csi ctl
  /// repair-volume` (the Admin service) replaces its leg by a blank one on store-c: the
  /// controller writes the new leg map to the surviving leg, the node reads it from there,
  /// connects the new leg and md copies the data onto it, with no restage. A restage then
  /// assembles the surviving and the new leg; when store-b returns, its old leg stays out
  /// of the mirror. Then, the mirror stopped, store-c is lost too and the leg is repaired
  /// again onto store-b: NodeStage starts the mirror without the lost member (--run) and
  /// md copies onto the replacement. Deleting the volume removes every leg it ever had.
  /// (The controller's own repair after its grace period is in LegRepairTests.)
  func repairLostLeg(_ capability: Csi_V1_VolumeCapability, nodeID: String) async {
    guard var v = await createAndAttach("pvc-mirror-repair", bytes: 64 * mebibyte, capability, nodeID) else { return }
    await steps.run(
      "under verified I/O: store-b lost for good; nvme-csi ctl repair-volume puts its leg on store-c and md copies"
        + " the data onto it, the volume staged all along"
    ) {
      let writer = try Writer(device: v.target, megabytes: 8, ratePerSecond: "1m")
      try await Task.sleep(for: .seconds(1))
      let killed = ContinuousClock.now
      do { try killSecondTarget(wipingSubsystemsOf: [v]) } catch {
        writer.stop()
        throw error
      }
      let repaired = try repairWithCtl(v, leg: try storeBSlot(v), to: "store-c")
      try check(repaired.contains("leg map version 1"), "ctl said: \(repaired)")
      try await eventually("the new leg on store-c added by the node and in sync", timeout: .seconds(150)) {
        let state = try mdState(try mdArray(of: v))
        return state.legs.count == 2 && state.degraded == 0 && state.syncAction == "idle"
      }
      let inSync = ContinuousClock.now - killed
      let result = try writer.finish()
      try check(result.errors == 0, "fio reported \(result.errors) error(s):\n\(result.output)")
      try check(result.verifiedBytes >= 8 * mebibyte, "fio verified only \(result.verifiedBytes) bytes")
      let mismatches = try checkLegsAgree(try mdArray(of: v))
      try check(mismatches == 0, "the surviving and the new leg differ")
      let controllerView = try await scenario.controller.controllerGetVolume(.with { $0.volumeID = v.volumeID })
        .status.volumeCondition
      try check(!controllerView.abnormal, "ControllerGetVolume: \(controllerView.message)")
      let nodeView = try await condition(v)
      try check(nodeView.message == "2 of 2 legs in sync", "NodeGetVolumeStats: \(nodeView.message)")
      steps.note(
        "replication: target lost for good under writes | errors 0 | leg replaced on store-c (nvme-csi ctl) and in"
          + " sync \(milliseconds(inSync)) ms after the kill | md check: \(mismatches) mismatched sectors")
    }
    await steps.run("nvme-csi ctl repair-volume of the new leg is refused: it is present") {
      do {
        let text = try repairWithCtl(v, leg: try storeBSlot(v), to: nil)
        throw CheckFailed("ctl repaired a present leg: \(text)")
      } catch let error as CheckFailed where error.description.contains("present and its target answers") {}
    }
    await steps.run(
      "restaged after the repair: ControllerPublish names the new leg, the mirror assembles from both; store-b"
        + " returns and its old leg stays out"
    ) {
      let before = try digest(of: v.target)
      let oldLegs = try PublishContext(decoding: v.publishContext).legs.map(\.subsystemNQN)
      try await unpublishAndUnstage(v)
      v.publishContext = try await controllerPublish(v, to: nodeID)
      let newLegs = try PublishContext(decoding: v.publishContext).legs.map(\.subsystemNQN)
      try check(v.publishContext["legMapVersion"] == "1", "publish_context: \(v.publishContext)")
      try check(Set(newLegs).subtracting(oldLegs).count == 1, "one new leg: \(oldLegs) -> \(newLegs)")
      try await stageAndPublish(v)
      let state = try mdState(try mdArray(of: v))
      try check(state.legs.count == 2 && state.degraded == 0, "md after the restage: \(state)")
      try check(try digest(of: v.target) == before, "the volume's content changed across the restage")
      try cluster.startSecondTarget()
      let lost = Set(oldLegs).subtracting(newLegs)
      try await Task.sleep(for: .seconds(5))
      for nqn in lost {
        let device = try NVMeTCPAttacher().device(
          subsystemNQN: nqn, namespaceUUID: SubsystemNaming.volume(inNQN: nqn)?.value ?? "")
        try check(device == nil, "the replaced leg \(nqn) was connected again")
      }
      try check(try mdState(try mdArray(of: v)).legs.count == 2, "md took a third leg")
    }
    await steps.run(
      "a stopped mirror loses its new leg too (store-c killed): nvme-csi ctl repair-volume puts it on store-b, and"
        + " NodeStage starts the mirror without the lost member (--run) and md copies onto the replacement"
    ) {
      let before = try digest(of: v.target)
      try await unpublishAndUnstage(v)
      try killTarget(cluster.thirdTarget, portalPort: cluster.thirdPortalPort, wipingSubsystemsOf: [v])
      let repaired = try repairWithCtl(v, leg: try storeBSlot(v), to: "store-b")
      try check(repaired.contains("leg map version 2"), "ctl said: \(repaired)")
      v.publishContext = try await controllerPublish(v, to: nodeID)
      try check(v.publishContext["legMapVersion"] == "2", "publish_context: \(v.publishContext)")
      try await stageAndPublish(v)
      try await eventually("the replacement on store-b in sync", timeout: .seconds(120)) {
        let state = try mdState(try mdArray(of: v))
        return state.legs.count == 2 && state.degraded == 0 && state.syncAction == "idle"
      }
      try check(try digest(of: v.target) == before, "the volume's content changed")
      try check(try checkLegsAgree(try mdArray(of: v)) == 0, "the legs differ after the copy")
      try check(
        cluster.logTail("node", lines: 400).contains("starting the mirror without the members"),
        "the mirror did not start through the --run rule")
      // store-c back, so that deleting the volume deletes its replaced leg there too.
      try cluster.startThirdTarget()
      try await eventually("store-c listens") { isListening(port: cluster.thirdAPIPort) }
    }
    await scenario.detach(v, deleteVolume: true)
  }

  /// `nvme-csi ctl repair-volume` of leg `leg`, optionally `--to` a target: what it printed.
  func repairWithCtl(_ v: Scenario.Attached, leg: Int, to target: String?) throws -> String {
    try output(
      cluster.bin + "/nvme-csi",
      ["ctl", "repair-volume", "--endpoint", "unix://" + cluster.controllerSocket, v.volumeID, "--leg", "\(leg)"]
        + (target.map { ["--to", $0] } ?? []))
  }

  /// The slot of the leg the volume ID places on store-b: the one the repairs replace.
  func storeBSlot(_ v: Scenario.Attached) throws -> Int {
    guard let index = try VolumeID(parsing: v.volumeID).targets.firstIndex(where: { $0.value == "store-b" }) else {
      throw CheckFailed("\(v.volumeID) has no leg on store-b")
    }
    return index
  }

  /// Whether something accepts TCP connections on 127.0.0.1:`port`.
  func isListening(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
      }
    }
  }

  /// A digest of a device's whole content, read past the page cache, to compare the
  /// data across a restage.
  func digest(of path: String) throws -> String {
    let text = try output("/bin/sh", ["-c", "dd if='\(path)' bs=1M iflag=direct status=none | sha256sum"])
    return String(text.prefix(64))
  }

  /// ControllerPublishVolume of `v` to `nodeID` again: its publish_context now.
  func controllerPublish(_ v: Scenario.Attached, to nodeID: String) async throws -> [String: String] {
    try await scenario.controller.controllerPublishVolume(
      .with {
        $0.volumeID = v.volumeID
        $0.nodeID = nodeID
        $0.volumeCapability = v.capability
      }
    ).publishContext
  }

  /// NodeStage and NodePublish, each repeated as kubelet does while the reconciler holds
  /// the volume (Aborted).
  func stageAndPublish(_ v: Scenario.Attached) async throws {
    try await retryingAborted { try await scenario.node.nodeStageVolume(scenario.stageRequest(v)) }
    try await retryingAborted { try await scenario.node.nodePublishVolume(scenario.publishRequest(v, readonly: false)) }
  }

  /// NodeUnpublish and NodeUnstage, each repeated as kubelet does while the reconciler
  /// holds the volume (Aborted).
  func unpublishAndUnstage(_ v: Scenario.Attached) async throws {
    try await retryingAborted {
      try await scenario.node.nodeUnpublishVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.targetPath = v.target
        })
    }
    try await retryingAborted {
      try await scenario.node.nodeUnstageVolume(
        .with {
          $0.volumeID = v.volumeID
          $0.stagingTargetPath = v.staging
        })
    }
  }

  /// Repeats a call answered Aborted (another operation on the volume), bounded.
  func retryingAborted<T>(_ call: () async throws -> T) async throws -> T {
    for _ in 0..<50 {
      do { return try await call() } catch let error as RPCError where error.code == .aborted {
        try await Task.sleep(for: .milliseconds(200))
      }
    }
    return try await call()
  }

  /// The volume's condition as NodeGetVolumeStats reports it.
  func condition(_ v: Scenario.Attached) async throws -> Csi_V1_VolumeCondition {
    try await scenario.node.nodeGetVolumeStats(
      .with {
        $0.volumeID = v.volumeID
        $0.volumePath = v.target
      }
    ).volumeCondition
  }

  /// Kills store-b and removes its portal from nvmet, as a storage node that is gone;
  /// and store-b's subsystems of the given volumes' legs (a rebooted node's configfs).
  func killSecondTarget(wipingSubsystemsOf volumes: [Scenario.Attached] = []) throws {
    try killTarget(cluster.secondTarget, portalPort: cluster.secondPortalPort, wipingSubsystemsOf: volumes)
  }

  /// Kills a target and removes its portal from nvmet, and the target's subsystems of
  /// the given volumes' legs.
  func killTarget(_ process: Process?, portalPort: Int, wipingSubsystemsOf volumes: [Scenario.Attached] = []) throws {
    cluster.kill(process)
    let ports = cluster.nvmet + "/ports"
    for port in try FileManager.default.contentsOfDirectory(atPath: ports) {
      let service = try? String(contentsOfFile: "\(ports)/\(port)/addr_trsvcid", encoding: .utf8)
      guard service?.trimmingCharacters(in: .whitespacesAndNewlines) == String(portalPort) else { continue }
      for link in try FileManager.default.contentsOfDirectory(atPath: "\(ports)/\(port)/subsystems") {
        try check(unlink("\(ports)/\(port)/subsystems/\(link)") == 0, "unlink \(link): \(errnoText())")
      }
      try check(rmdir("\(ports)/\(port)") == 0, "rmdir port \(port): \(errnoText())")
    }
    let portal = "127.0.0.1:\(portalPort)"
    let legs = try volumes.flatMap { try PublishContext(decoding: $0.publishContext).legs }
    for leg in legs where leg.paths.map(\.description) == [portal] {
      let subsystem = "\(cluster.nvmet)/subsystems/\(leg.subsystemNQN)"
      for host in try FileManager.default.contentsOfDirectory(atPath: subsystem + "/allowed_hosts") {
        try check(unlink("\(subsystem)/allowed_hosts/\(host)") == 0, "unlink allowed host: \(errnoText())")
      }
      try "0".write(toFile: subsystem + "/namespaces/1/enable", atomically: false, encoding: .utf8)
      try check(rmdir(subsystem + "/namespaces/1") == 0, "rmdir namespace: \(errnoText())")
      try check(rmdir(subsystem) == 0, "rmdir \(subsystem): \(errnoText())")
    }
  }

  /// When a 4 KiB O_DIRECT, O_SYNC write to the device completes (it waits while md
  /// still waits for the dead leg, as the application's writes do).
  func directWrite(to path: String, at offset: Int64) throws -> ContinuousClock.Instant {
    let fd = open(path, O_WRONLY | oDirect | O_SYNC)
    try check(fd >= 0, "open \(path): \(errnoText())")
    defer { close(fd) }
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    defer { buffer.deallocate() }
    memset(buffer, 0x5a, 4096)
    try check(pwrite(fd, buffer, 4096, off_t(offset)) == 4096, "write \(path) after the fault: \(errnoText())")
    return .now
  }

  /// The md array holding the volume's legs (from sysfs: the legs' holders).
  func mdArray(of v: Scenario.Attached) throws -> String {
    let context = try PublishContext(decoding: v.publishContext)
    for leg in context.legs {
      guard let device = try NVMeTCPAttacher().device(subsystemNQN: leg.subsystemNQN, namespaceUUID: leg.namespaceUUID)
      else { continue }
      let holders = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block/\(device.name)/holders")) ?? []
      if let array = holders.first(where: { $0.hasPrefix("md") }) { return array }
    }
    throw CheckFailed("no md array holds a leg of \(v.volumeID)")
  }

  struct MDState: CustomStringConvertible {
    var legs: [String: String]
    var degraded: Int
    var syncAction: String
    var description: String {
      "legs \(legs.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")), "
        + "degraded \(degraded), \(syncAction)"
    }
  }

  func mdState(_ array: String) throws -> MDState {
    let md = "/sys/block/\(array)/md"
    func read(_ name: String) throws -> String {
      try String(contentsOfFile: "\(md)/\(name)", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }
    var legs: [String: String] = [:]
    for entry in try FileManager.default.contentsOfDirectory(atPath: md) where entry.hasPrefix("dev-") {
      legs[String(entry.dropFirst(4))] = try read(entry + "/state")
    }
    return MDState(legs: legs, degraded: Int(try read("degraded")) ?? -1, syncAction: try read("sync_action"))
  }

  /// md's own comparison of the legs: the sectors that differ.
  func checkLegsAgree(_ array: String) throws -> Int {
    let md = "/sys/block/\(array)/md"
    try "check".write(toFile: md + "/sync_action", atomically: false, encoding: .utf8)
    let deadline = ContinuousClock.now + .seconds(120)
    while try mdState(array).syncAction != "idle" {
      try check(ContinuousClock.now < deadline, "md check did not finish in 120 s")
      usleep(100_000)
    }
    let count = try String(contentsOfFile: md + "/mismatch_cnt", encoding: .utf8)
    return Int(count.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
  }
}
