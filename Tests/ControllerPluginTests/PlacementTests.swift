import CSIProto
import CSIServer
import ControllerPlugin
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import NVMeCSICore
import Synchronization
import TargetContract
import TestSupport
import Testing

/// One storage target down must not stop provisioning (docs/architecture.md,
/// "Placement"): only names whose home is the down target are refused, and retries
/// after it returns create no second volume.
@Suite("Placement: provisioning with a target down")
struct PlacementTests {
  @Test(
    "with 1 of 5 targets down, exactly the names homed on it are refused; after it returns, no name has two volumes")
  func oneOfFiveDown() async throws {
    try await Fleet.with(targets: 5) { fleet in
      let down = fleet.targets[2]
      down.isDown = true
      let names = (0..<300).map { "pvc-\($0)" }
      var refused: [String] = []
      for name in names {
        do { _ = try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte)) } catch let error
          as RPCError
        {
          #expect(error.code == .unavailable, "\(name): \(error.message)")
          #expect(error.message.contains("home target \(down.name)"), "\(error.message)")
          refused.append(name)
        }
      }
      let homedOnDown = names.filter { TargetSet.home(of: $0, among: fleet.names) == down.name }
      #expect(refused == homedOnDown)
      let fraction = Double(refused.count) / Double(names.count)
      print("placement: \(refused.count) of \(names.count) names refused with 1 of 5 targets down (\(fraction))")
      #expect(fraction > 0.1 && fraction < 0.3, "expected about 1/5 refused, got \(fraction)")
      // Nothing was created on the down target while it was down.
      #expect(try await down.local.agent.volumes(named: nil).isEmpty)

      // It comes back; the provisioner retries every call, the failed and the done ones.
      down.isDown = false
      for name in names { _ = try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte)) }
      #expect(try await fleet.volumeCounts() == Dictionary(uniqueKeysWithValues: names.map { ($0, 1) }))
    }
  }

  @Test(
    "on the name's home, a create is one call that records the placement, a repeat too, a delete one that releases it")
  func createOnHomeInOneCall() async throws {
    try await Fleet.with(targets: 1) { fleet in
      let home = fleet.targets[0]
      let first = try await fleet.controller.createVolume(createRequest("pvc-a", bytes: mebibyte)).volume
      #expect(home.homeCreateCalls == 1)
      #expect(try await home.local.agent.placement(of: "pvc-a") == NamePlacement(target: home.name, volumeHere: true))
      #expect(try await fleet.controller.createVolume(createRequest("pvc-a", bytes: mebibyte)).volume == first)
      #expect(home.homeCreateCalls == 2)
      #expect(try await fleet.volumeCounts() == ["pvc-a": 1])
      _ = try await fleet.controller.deleteVolume(.with { $0.volumeID = first.volumeID })
      #expect(home.homeDeleteCalls == 1)
      #expect(try await home.local.agent.placement(of: "pvc-a") == NamePlacement(target: nil, volumeHere: false))
      #expect(try await fleet.volumeCounts().isEmpty)
    }
  }

  @Test("a new name on a target other than its home is two calls: the reservation at its home, the create there")
  func createElsewhereInTwoCalls() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let name = (0...).lazy.map { "pvc-\($0)" }.first { TargetSet.home(of: $0, among: fleet.names) == fleet.names[0] }!
      let (home, other) = (fleet.targets[0], fleet.targets[1])
      home.availableBytesShown = 64 << 20  // so the other target is chosen
      let first = try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte)).volume
      #expect(first.volumeID.hasPrefix("v1.\(other.name)."))
      #expect(home.placementCalls == 0 && home.homeCreateCalls == 0)
      #expect(try await home.local.agent.placement(of: name) == NamePlacement(target: other.name, volumeHere: false))
      // A retry finds the same volume the same way.
      #expect(try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte)).volume == first)
      #expect(home.placementCalls == 0)
      #expect(try await fleet.volumeCounts() == [name: 1])
    }
  }

  @Test("a home older than create-as-home gets the lookup and the reservation first, and the release, as before")
  func olderHomeIsAskedInFull() async throws {
    try await Fleet.with(targets: 1) { fleet in
      let home = fleet.targets[0]
      home.isOlder = true
      let volume = try await fleet.controller.createVolume(createRequest("pvc-a", bytes: mebibyte)).volume
      #expect(home.homeCreateCalls == 0)
      #expect(try await home.local.agent.placement(of: "pvc-a") == NamePlacement(target: home.name, volumeHere: true))
      _ = try await fleet.controller.deleteVolume(.with { $0.volumeID = volume.volumeID })
      #expect(home.homeDeleteCalls == 0)
      #expect(try await home.local.agent.placement(of: "pvc-a") == NamePlacement(target: nil, volumeHere: false))
    }
  }

  @Test("a name recorded as placed on another target is created there, though its home has the most room")
  func placedElsewhereWinsOverHome() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let name = (0...).lazy.map { "pvc-\($0)" }.first { TargetSet.home(of: $0, among: fleet.names) == fleet.names[0] }!
      let (home, other) = (fleet.targets[0], fleet.targets[1])
      // The other target says it has less room, so the home is the one chosen; an
      // interrupted create (or another controller) recorded the name on the other target.
      other.availableBytesShown = 64 << 20
      _ = try await home.local.agent.reservePlacements([Placement(name: name, target: other.name)])
      _ = try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte))
      #expect(home.homeCreateCalls == 1)
      #expect(try await home.local.agent.volumes(named: name).isEmpty)
      #expect(try await other.local.agent.volumes(named: name).count == 1)
    }
  }

  @Test("with a target down, snapshots of volumes elsewhere are taken, repeated, and refused for another source")
  func snapshotsWithATargetDown() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let (down, up) = (fleet.targets[0], fleet.targets[1])
      let request = { (name: String) in createRequest(name, bytes: mebibyte, parameters: ["target": up.name.value]) }
      let volume = try await fleet.controller.createVolume(request("pvc-snap-src")).volume
      let other = try await fleet.controller.createVolume(request("pvc-snap-other")).volume
      down.isDown = true
      let snapshot = Csi_V1_CreateSnapshotRequest.with {
        $0.name = "snap-1"
        $0.sourceVolumeID = volume.volumeID
      }
      let first = try await fleet.controller.createSnapshot(snapshot).snapshot
      #expect(try await fleet.controller.createSnapshot(snapshot).snapshot.snapshotID == first.snapshotID)
      await expectStatus(.alreadyExists, mentioning: "different source") {
        try await fleet.controller.createSnapshot(
          .with {
            $0.name = "snap-1"
            $0.sourceVolumeID = other.volumeID
          })
      }
      down.isDown = false
      #expect(try await fleet.controller.createSnapshot(snapshot).snapshot.snapshotID == first.snapshotID)
    }
  }

  @Test("a burst of creates asks each target's free space once, not once per create")
  func freeSpaceIsNotAskedPerCreate() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let before = fleet.targets.map(\.infoCount)
      let started = ContinuousClock.now
      for n in 0..<10 { _ = try await fleet.controller.createVolume(createRequest("pvc-burst-\(n)", bytes: mebibyte)) }
      let elapsed = ContinuousClock.now - started
      let asked = zip(fleet.targets, before).map { $0.infoCount - $1 }
      // Once per two seconds of the burst at most (once, on a machine that is not busy).
      let rounds = Int(elapsed / .seconds(2)) + 1
      #expect(rounds < 10, "the burst took \(elapsed): too slow to tell")
      #expect(asked.allSatisfy { $0 >= 1 && $0 <= rounds }, "GetInfo calls per target: \(asked) in \(elapsed)")
      #expect(try await fleet.volumeCounts().count == 10)
    }
  }

  @Test("a name placed on a target since taken out of the targets file is refused, saying what to do; nothing is made")
  func placedOnUnlistedTarget() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let listed = Array(fleet.targets.prefix(2))
      let gone = fleet.targets[2]
      // A name with the same home among all three targets and among the two still listed.
      let name = try #require(
        (0..<1000).map { "pvc-stuck-\($0)" }.first {
          let home = TargetSet.home(of: $0, among: fleet.names)
          return home != gone.name && home == TargetSet.home(of: $0, among: listed.map(\.name))
        })
      let home = fleet.target(try #require(TargetSet.home(of: name, among: fleet.names)))
      // Its claim was placed on the third target, which then went for good before the create.
      _ = try await home.reservePlacements([Placement(name: name, target: gone.name)])
      let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
      let service = ControllerService(
        targets: TargetSet(listed.map { StorageTarget(name: $0.name, topology: [:], api: $0) }), logger: logger)
      let directory = try makeTemporaryDirectory()
      defer { try? FileManager.default.removeItem(atPath: directory) }
      let identity = IdentityService(
        driverName: "nvme.csi.dev", version: "test", capabilities: IdentityService.controllerCapabilities,
        isReady: { true })
      try await withServedPlugin(socket: directory + "/csi.sock", services: [identity, service], logger: logger) {
        client in
        await expectStatus(.failedPrecondition, mentioning: "if it is gone for good, delete the claim and create it") {
          try await Csi_V1_Controller.Client(wrapping: client).createVolume(createRequest(name, bytes: mebibyte))
        }
      }
      #expect(try await fleet.volumeCounts()[name] == nil)
    }
  }

  @Test("a target that stops answering between two creates is not chosen again from the free space it last reported")
  func downTargetNotChosenFromItsLastAnswer() async throws {
    try await Fleet.with(targets: 2) { fleet in
      let first = try await fleet.controller.createVolume(createRequest("pvc-before", bytes: mebibyte)).volume
      // What both said of their room for the first create chooses the same target again.
      let down = try #require(fleet.targets.first { first.volumeID.hasPrefix("v1.\($0.name).") })
      down.isDown = true
      let names = (0..<40).map { "pvc-after-\($0)" }.filter { TargetSet.home(of: $0, among: fleet.names) != down.name }
      let unlucky = try #require(names.first)
      // The first create after it went down tries it (its name's placement now waits for it).
      await expectStatus(.unavailable, mentioning: down.name.value) {
        try await fleet.controller.createVolume(createRequest(unlucky, bytes: mebibyte))
      }
      // Later names are created on the target that answers, not sent after the first.
      for name in names.dropFirst().prefix(5) {
        let volume = try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte)).volume
        #expect(!volume.volumeID.hasPrefix("v1.\(down.name)."))
      }
      down.isDown = false
      _ = try await fleet.controller.createVolume(createRequest(unlucky, bytes: mebibyte))
      #expect(try await fleet.volumeCounts()[unlucky] == 1)
    }
  }

  @Test("a placement recorded before a crash is where the retried create goes")
  func reservationBeforeCrash() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let name = "pvc-crashed"
      let home = try #require(TargetSet.home(of: name, among: fleet.names))
      let elsewhere = try #require(fleet.targets.first { $0.name != home })
      // What a controller that died between recording and creating leaves behind.
      _ = try await fleet.target(home).local.agent.reservePlacements([Placement(name: name, target: elsewhere.name)])
      let created = try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte))
      #expect(created.volume.volumeID.hasPrefix("v1.\(elsewhere.name)."))
      // And a delete forgets the placement at the home.
      _ = try await fleet.controller.deleteVolume(.with { $0.volumeID = created.volume.volumeID })
      #expect(try await fleet.target(home).local.agent.placement(of: name).target == nil)
    }
  }

  @Test("a volume placed on its home is recorded there too, before it is created")
  func homePlacementIsRecorded() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let name = "pvc-at-home"
      let home = try #require(TargetSet.home(of: name, among: fleet.names))
      let created = try await fleet.controller.createVolume(
        createRequest(name, bytes: mebibyte, parameters: ["target": home.value]))
      #expect(created.volume.volumeID.hasPrefix("v1.\(home)."))
      #expect(try await fleet.target(home).local.agent.placement(of: name).target == home)
      // A record at the home whose create never ran (cut off by its deadline) holds
      // the name there, wherever the free space is now.
      let other = "pvc-cut-off"
      let otherHome = try #require(TargetSet.home(of: other, among: fleet.names))
      _ = try await fleet.target(otherHome).local.agent.reservePlacements([Placement(name: other, target: otherHome)])
      let retried = try await fleet.controller.createVolume(createRequest(other, bytes: mebibyte))
      #expect(retried.volume.volumeID.hasPrefix("v1.\(otherHome)."))
    }
  }

  @Test("a recorded placement that no longer fits the request is replaced, as nothing of the name is there")
  func reservationThatNoLongerFits() async throws {
    try await Fleet.with(targets: 3) { fleet in
      let name = "pvc-moved"
      let home = try #require(TargetSet.home(of: name, among: fleet.names))
      let first = try #require(fleet.targets.first { $0.name != home })
      let second = try #require(fleet.targets.first { $0.name != home && $0.name != first.name })
      _ = try await fleet.target(home).local.agent.reservePlacements([Placement(name: name, target: first.name)])
      let created = try await fleet.controller.createVolume(
        createRequest(name, bytes: mebibyte, parameters: ["target": second.name.value]))
      #expect(created.volume.volumeID.hasPrefix("v1.\(second.name)."))
      #expect(try await fleet.target(home).local.agent.placement(of: name).target == second.name)
      #expect(try await fleet.volumeCounts()[name] == 1)
    }
  }

  @Test("a quarantined volume does not keep its target from being indexed")
  func quarantinedVolumeIsSkipped() async throws {
    try await Fleet.with(targets: 2, indexed: false) { fleet in
      // Data without a record: moved aside at start and reported, with no name.
      let target = fleet.targets[0]
      let orphan = target.local.store + "/volumes/6b0d2c1e-0000-4000-8000-000000000001.img"
      FileManager.default.createFile(atPath: orphan, contents: Data(count: 4096))
      let restarted = SwitchableTarget(
        local: try LocalTarget(name: target.name.value, store: target.local.store, configfs: target.local.configfs))
      #expect(try await restarted.volumes(named: nil).contains { $0.problem != nil })
      let service = ControllerService(
        targets: TargetSet([restarted, fleet.targets[1]].map { StorageTarget(name: $0.name, topology: [:], api: $0) }),
        logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
      #expect(await service.indexPlacements())
    }
  }

  @Test("a volume created before placements were recorded is found, and indexing records it at its home")
  func volumesFromBeforePlacements() async throws {
    try await Fleet.with(targets: 3, indexed: false) { fleet in
      let name = "pvc-legacy"
      let home = try #require(TargetSet.home(of: name, among: fleet.names))
      let holder = try #require(fleet.targets.first { $0.name != home })
      // Created through the controller on a chosen target, then its placement record
      // removed: what a volume from before placements looks like.
      let legacy = try await fleet.controller.createVolume(
        createRequest(name, bytes: mebibyte, parameters: ["target": holder.name.value]))
      try await fleet.target(home).local.agent.releasePlacement(of: name, on: holder.name)
      #expect(try await fleet.target(home).local.agent.placement(of: name).target == nil)
      // Not indexed yet: the holder is asked too; while it is down, the name cannot be decided.
      holder.isDown = true
      await expectStatus(.unavailable) { try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte)) }
      holder.isDown = false
      let found = try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte))
      #expect(found.volume.volumeID == legacy.volume.volumeID)
      // Indexed: the home knows where it is, so a third target's outage does not matter.
      #expect(await fleet.service.indexPlacements())
      #expect(try await fleet.target(home).local.agent.placement(of: name).target == holder.name)
      let third = try #require(fleet.targets.first { $0.name != home && $0.name != holder.name })
      third.isDown = true
      let again = try await fleet.controller.createVolume(createRequest(name, bytes: mebibyte))
      #expect(again.volume.volumeID == found.volume.volumeID)
      #expect(try await fleet.volumeCounts()[name] == 1)
    }
  }

  @Test("a volume from before placements on its own home is recorded there too; a create sent elsewhere finds it")
  func volumesFromBeforePlacementsOnTheirHome() async throws {
    try await Fleet.with(targets: 2, indexed: false) { fleet in
      let name = "pvc-legacy-home"
      let home = try #require(TargetSet.home(of: name, among: fleet.names))
      let other = try #require(fleet.targets.first { $0.name != home })
      // Made on the home by the target alone: no placement recorded, as before placements.
      let legacy = try await fleet.target(home).local.agent.createVolume(
        NewVolume(name: name, sizeBytes: UInt64(mebibyte), source: nil))
      #expect(try await fleet.target(home).local.agent.placement(of: name).target == nil)
      #expect(await fleet.service.indexPlacements())
      #expect(try await fleet.target(home).local.agent.placement(of: name).target == home)
      // A create of the name sent to another target (pinned there) finds it, and, as it
      // differs, is told the name is taken: no reservation there, no second volume.
      await expectStatus(.alreadyExists, mentioning: name) {
        try await fleet.controller.createVolume(
          createRequest(name, bytes: mebibyte, parameters: ["target": other.name.value]))
      }
      #expect(try await fleet.volumeCounts()[name] == 1)
      #expect(try await other.local.agent.volumes(named: name).isEmpty)
      #expect(
        try await fleet.target(home).local.agent.volumes(named: name).map(\.record.uuid) == [legacy.volume.record.uuid])
    }
  }

  @Test("indexing reads a target a page at a time and records the names of every page at their homes")
  func indexingPages() async throws {
    try await Fleet.with(targets: 2, indexed: false) { fleet in
      let (home, holder) = (fleet.targets[0], fleet.targets[1])
      let names = (0...).lazy.map { "pvc-old-\($0)" }.filter { TargetSet.home(of: $0, among: fleet.names) == home.name }
        .prefix(5)
      // Volumes from before placements: created on the holder, their records at the home removed.
      for name in names {
        _ = try await fleet.controller.createVolume(
          createRequest(name, bytes: mebibyte, parameters: ["target": holder.name.value]))
        try await home.local.agent.releasePlacement(of: name, on: holder.name)
      }
      let pagesBefore = holder.volumePageCalls
      #expect(await fleet.service.indexPlacements(pageSize: 2))
      #expect(holder.volumePageCalls - pagesBefore == 3)
      for name in names { #expect(try await home.local.agent.placement(of: name).target == holder.name, "\(name)") }
    }
  }

  @Test("real target processes: with one killed, names homed on the other are created; after restart no duplicates")
  func processKilled() async throws {
    try await Harness.with(processes: true) { harness in
      let names = (0..<24).map { "pvc-kill-\($0)" }
      let all = try harness.targets.map { try TargetName($0.name) }
      harness.storeA.kill()
      var created = 0
      for name in names {
        let home = TargetSet.home(of: name, among: all)
        do {
          _ = try await harness.controller.createVolume(createRequest(name, bytes: mebibyte))
          created += 1
          #expect(home?.value == "store-b", "\(name) was created though its home store-a is down")
        } catch let error as RPCError {
          #expect(error.code == .unavailable && home?.value == "store-a", "\(name): \(error.code) \(error.message)")
        }
      }
      #expect(created > 0 && created < names.count, "expected about half created, got \(created)")
      try await harness.restart(harness.storeA)
      for name in names { _ = try await harness.controller.createVolume(createRequest(name, bytes: mebibyte)) }
      let listed = try await harness.controller.listVolumes(.init()).entries
      #expect(listed.count == names.count, "\(listed.count) volumes for \(names.count) names: a name has two")
    }
  }
}

/// Targets in this process behind a switch that makes one unreachable, and a
/// controller over them served on a real unix socket.
final class Fleet: Sendable {
  let targets: [SwitchableTarget]
  let controller: Csi_V1_Controller.Client<HTTP2ClientTransport.Posix>
  let service: ControllerService
  var names: [TargetName] { targets.map(\.name) }

  private init(targets: [SwitchableTarget], client: GRPCClient<HTTP2ClientTransport.Posix>, service: ControllerService)
  {
    self.targets = targets
    self.controller = .init(wrapping: client)
    self.service = service
  }

  /// `domains`: each target's failure domain (default: its own).
  static func with(
    targets count: Int, indexed: Bool = true, domains: [String]? = nil, _ body: (Fleet) async throws -> Void
  ) async throws {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let targets = try (0..<count).map { n in
      let name = "store-\(n)"
      return SwitchableTarget(local: try LocalTarget(name: name, directory: directory + "/" + name))
    }
    var logger = Logger(label: "test.placement") { _ in SwiftLogNoOpLogHandler() }
    logger.logLevel = .critical
    let service = ControllerService(
      targets: TargetSet(
        targets.enumerated().map { StorageTarget(name: $1.name, topology: [:], failureDomain: domains?[$0], api: $1) }),
      logger: logger)
    if indexed { #expect(await service.indexPlacements()) }
    let identity = IdentityService(
      driverName: "nvme.csi.dev", version: "test", capabilities: IdentityService.controllerCapabilities,
      isReady: { true })
    try await withServedPlugin(socket: directory + "/csi.sock", services: [identity, service], logger: logger) {
      client in
      try await body(Fleet(targets: targets, client: client, service: service))
    }
  }

  func target(_ name: TargetName) -> SwitchableTarget { targets.first { $0.name == name }! }

  /// How many volumes each name has, over every target.
  func volumeCounts() async throws -> [String: Int] {
    var counts: [String: Int] = [:]
    for target in targets {
      for volume in try await target.local.agent.volumes(named: nil) { counts[volume.record.name, default: 0] += 1 }
    }
    return counts
  }
}

/// A target that answers `unavailable` while `isDown`, as an unreachable one does.
final class SwitchableTarget: TargetAPI {
  let local: LocalTarget
  private let down = Mutex(false)
  private let infoCalls = Mutex(0)
  var name: TargetName { local.name }
  /// GetInfo calls answered so far.
  var infoCount: Int { infoCalls.withLock { $0 } }
  /// Each `snapshots(after:limit:)` call answered so far: the limit asked for and how
  /// many snapshots it returned.
  private let snapshotPages = Mutex<[(limit: Int, returned: Int)]>([])
  var snapshotPageCalls: [(limit: Int, returned: Int)] { snapshotPages.withLock { $0 } }
  /// `volumes(after:limit:)` calls answered so far.
  private let volumePages = Mutex(0)
  var volumePageCalls: Int { volumePages.withLock { $0 } }
  var isDown: Bool {
    get { down.withLock { $0 } }
    set { down.withLock { $0 = newValue } }
  }
  private let older = Mutex(false)
  /// Answers as a target older than `createVolume(_:asHome:)`: GetInfo does not offer
  /// it, and a create ignores the placement to record (as the wire's unknown field is).
  var isOlder: Bool {
    get { older.withLock { $0 } }
    set { older.withLock { $0 = newValue } }
  }
  private let shownAvailable = Mutex<UInt64?>(nil)
  /// The free space GetInfo answers, when set (the real one otherwise).
  var availableBytesShown: UInt64? {
    get { shownAvailable.withLock { $0 } }
    set { shownAvailable.withLock { $0 = newValue } }
  }
  private let placementLookups = Mutex(0)
  /// `placement(of:)` calls answered so far.
  var placementCalls: Int { placementLookups.withLock { $0 } }
  private let homeCreates = Mutex(0)
  /// `createVolume(_:asHome:)` calls answered so far.
  var homeCreateCalls: Int { homeCreates.withLock { $0 } }
  private let homeDeletes = Mutex(0)
  /// `deleteVolume(_:asHome:)` calls answered so far.
  var homeDeleteCalls: Int { homeDeletes.withLock { $0 } }

  private let heldCreates = Mutex<(held: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))
  /// While set, `createVolume(_:)` waits (before it reaches the target) until cleared.
  var holdsCreates: Bool {
    get { heldCreates.withLock { $0.held } }
    set {
      let released: [CheckedContinuation<Void, Never>] = heldCreates.withLock { state in
        state.held = newValue
        guard !newValue else { return [] }
        defer { state.waiting = [] }
        return state.waiting
      }
      for create in released { create.resume() }
    }
  }
  /// Creates waiting for `holdsCreates` to be cleared.
  var waitingCreates: Int { heldCreates.withLock { $0.waiting.count } }

  init(local: LocalTarget) { self.local = local }

  private func call<T: Sendable>(_ body: (any TargetAPI) async throws -> T) async throws -> T {
    if isDown { throw NVMeCSIError.unavailable("target \(name) is unreachable (unavailable): connection refused") }
    return try await body(local.api)
  }

  func info() async throws -> TargetInfo {
    try await call {
      infoCalls.withLock { $0 += 1 }
      var info = try await $0.info()
      if isOlder { info.placesAsHome = false }
      if let shown = availableBytesShown { info.availableBytes = shown }
      return info
    }
  }
  func createVolume(_ request: NewVolume) async throws -> (volume: TargetVolume, existed: Bool) {
    await withCheckedContinuation { create in
      let waits = heldCreates.withLock { state in
        if state.held { state.waiting.append(create) }
        return state.held
      }
      if !waits { create.resume() }
    }
    return try await call { try await $0.createVolume(request) }
  }
  func createVolume(_ request: NewVolume, asHome home: TargetName) async throws -> HomeCreation {
    try await call {
      homeCreates.withLock { $0 += 1 }
      guard !isOlder else {
        let created = try await $0.createVolume(request)
        return .volume(created.volume, existed: created.existed)
      }
      return try await $0.createVolume(request, asHome: home)
    }
  }
  func deleteVolume(_ uuid: ObjectUUID) async throws { try await call { try await $0.deleteVolume(uuid) } }
  func deleteVolume(_ uuid: ObjectUUID, asHome home: TargetName) async throws {
    try await call {
      homeDeletes.withLock { $0 += 1 }
      guard !isOlder else { return try await $0.deleteVolume(uuid) }
      try await $0.deleteVolume(uuid, asHome: home)
    }
  }
  func volume(_ uuid: ObjectUUID) async throws -> TargetVolume { try await call { try await $0.volume(uuid) } }
  func volumes(named name: String?) async throws -> [TargetVolume] {
    try await call { try await $0.volumes(named: name) }
  }
  func expandVolume(_ uuid: ObjectUUID, to sizeBytes: UInt64) async throws -> TargetVolume {
    try await call { try await $0.expandVolume(uuid, to: sizeBytes) }
  }
  func volumes(after startingAfter: ObjectUUID?, limit: Int) async throws -> (volumes: [TargetVolume], more: Bool) {
    try await call {
      volumePages.withLock { $0 += 1 }
      return try await $0.volumes(after: startingAfter, limit: limit)
    }
  }
  func updateVolumeAttributes(_ uuid: ObjectUUID, setting changes: [String: String]) async throws -> TargetVolume {
    try await call { try await $0.updateVolumeAttributes(uuid, setting: changes) }
  }
  func publishVolume(_ uuid: ObjectUUID, to node: NodeID, readonly: Bool, exclusive: Bool) async throws -> VolumeExport
  {
    try await call { try await $0.publishVolume(uuid, to: node, readonly: readonly, exclusive: exclusive) }
  }
  func unpublishVolume(_ uuid: ObjectUUID, from node: NodeID?) async throws {
    try await call { try await $0.unpublishVolume(uuid, from: node) }
  }
  func createSnapshot(named name: String, of volume: ObjectUUID, attributes: [String: String]) async throws -> (
    snapshot: SnapshotRecord, existed: Bool
  ) {
    try await call { try await $0.createSnapshot(named: name, of: volume, attributes: attributes) }
  }
  func deleteSnapshot(_ uuid: ObjectUUID) async throws { try await call { try await $0.deleteSnapshot(uuid) } }
  func snapshots(matching filter: SnapshotFilter) async throws -> [SnapshotRecord] {
    try await call { try await $0.snapshots(matching: filter) }
  }
  func snapshots(after startingAfter: ObjectUUID?, limit: Int) async throws
    -> (snapshots: [SnapshotRecord], more: Bool)
  {
    try await call {
      let page = try await $0.snapshots(after: startingAfter, limit: limit)
      snapshotPages.withLock { $0.append((limit, page.snapshots.count)) }
      return page
    }
  }
  func mdSuperblock(of volume: ObjectUUID) async throws -> MDSuperblock? {
    try await call { try await $0.mdSuperblock(of: volume) }
  }
  func legMap(of volume: ObjectUUID) async throws -> LegMap? { try await call { try await $0.legMap(of: volume) } }
  func writeLegMap(_ map: LegMap, to volume: ObjectUUID) async throws {
    try await call { try await $0.writeLegMap(map, to: volume) }
  }
  func placement(of name: String) async throws -> NamePlacement {
    try await call {
      placementLookups.withLock { $0 += 1 }
      return try await $0.placement(of: name)
    }
  }
  func reservePlacements(_ placements: [Placement]) async throws -> [Placement] {
    try await call { try await $0.reservePlacements(placements) }
  }
  func releasePlacement(of name: String, on target: TargetName) async throws {
    try await call { try await $0.releasePlacement(of: name, on: target) }
  }
}
