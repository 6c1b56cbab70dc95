import NVMeCSICore
import Testing

@Suite("Replicated volume IDs and leg layout")
struct ReplicaSetTests {
  let uuid = try! ObjectUUID("0f8e1c2a-1111-4222-8333-444455556666")
  let a = try! TargetName("store-a")
  let b = try! TargetName("store-b")
  let c = try! TargetName("store-c")

  @Test("a replicated ID round-trips and names a leg per target; leg 0 is the set's own UUID")
  func roundTrip() throws {
    let id = try VolumeID(replicated: uuid, on: [a, b, c])
    #expect(id.description == "r1.0f8e1c2a-1111-4222-8333-444455556666.store-a.store-b.store-c")
    #expect(try VolumeID(parsing: id.description) == id)
    #expect(id.legs.map(\.target) == [a, b, c])
    #expect(id.legs[0].uuid == uuid)
    #expect(Set(id.legs.map(\.uuid)).count == 3, "every leg has its own UUID, so its own subsystem NQN")
    #expect(id.primary == id.legs[0])
    for (index, leg) in id.legs.enumerated() {
      #expect(ReplicaLayout.legUUID(of: leg.uuid, index: index) == uuid, "a leg's UUID leads back to its set's")
    }
  }

  @Test("a v1 ID is a set of one leg and keeps its form")
  func single() throws {
    let text = "v1.store-a.0f8e1c2a-1111-4222-8333-444455556666"
    let id = try VolumeID(parsing: text)
    let leg = try ObjectID(parsing: text, as: .volume)
    #expect(!id.isReplicated && id.description == text && id.legs == [leg])
  }

  @Test(
    "malformed replicated IDs are not ours (NotFound)",
    arguments: [
      "r1.0f8e1c2a-1111-4222-8333-444455556666.store-a",  // one leg
      "r1.0f8e1c2a-1111-4222-8333-444455556666.store-a.store-a",  // same target twice
      "r1.0f8e1c2a-1111-4222-8333-444455556666.a.b.c.d",  // four legs
      "r1.0F8E1C2A-1111-4222-8333-444455556666.store-a.store-b",  // upper case
      "r1.0f8e1c2a-1111-4222-8333-444455556666.store-a.",  // empty target
      "r1.0f8e1c2a-1111-4222-8333-444455556666.store-a.../x",
      "r2.0f8e1c2a-1111-4222-8333-444455556666.store-a.store-b",
    ])
  func malformed(text: String) {
    #expect(throws: NVMeCSIError.self) { try VolumeID(parsing: text) }
    #expect((try? VolumeID(parsing: text)) == nil)
    do { _ = try VolumeID(parsing: text) } catch { #expect(error.kind == .notFound) }
  }

  @Test("an ID over 128 bytes is refused when the set is made, naming the cause")
  func tooLong() {
    let long = (0..<3).map { try! TargetName(String(repeating: "t", count: 40) + "\($0)") }
    do {
      _ = try VolumeID(replicated: uuid, on: long)
      Issue.record("an ID of \(3 * 42 + 40) bytes was accepted")
    } catch {
      #expect(error.kind == .invalidArgument && error.message.contains("shorter target names"))
    }
  }

  @Test("legs carry md's overhead on top of the volume's size; leg names are reserved")
  func layout() {
    #expect(ReplicaLayout.legBytes(forVolume: 1 << 30) == (1 << 30) + (4 << 20))
    #expect(ReplicaLayout.volumeBytes(ofLeg: ReplicaLayout.legBytes(forVolume: 1 << 30)) == 1 << 30)
    #expect(ReplicaLayout.legName("pvc-1", index: 0) == "pvc-1")
    #expect(ReplicaLayout.legName("pvc-1", index: 2) == "pvc-1~replica-2")
    #expect(ReplicaLayout.isReservedName("pvc-1~replica-2"))
    #expect(ReplicaLayout.isReservedName("pvc-1~replica-"), "anything a leg's name could end in")
    #expect(ReplicaLayout.legName("pvc-1", index: 0, generation: 1) == "pvc-1~replica-0-1", "a replacement leg 0")
    #expect(ReplicaLayout.legName("pvc-1", index: 2, generation: 3) == "pvc-1~replica-2-3")
    for leg in ["pvc-1", "pvc-1~replica-2", "pvc-1~replica-0-1"] {
      #expect(ReplicaLayout.volumeName(ofLegName: leg) == "pvc-1")
    }
    #expect(!ReplicaLayout.isReservedName("pvc-1"))
  }

  @Test("publish_context carries every leg and reads back the same")
  func publishContext() throws {
    let leg = PublishContext.Leg(
      paths: [HostPort(host: "10.0.0.2", port: 4420)], subsystemNQN: SubsystemNaming.nqn(for: uuid),
      namespaceUUID: uuid.value)
    let context = PublishContext(
      paths: [HostPort(host: "10.0.0.1", port: 4420)], subsystemNQN: SubsystemNaming.nqn(for: uuid),
      namespaceUUID: uuid.value, replicaLegs: [leg, leg])
    let decoded = try PublishContext(decoding: context.encoded)
    #expect(decoded == context && decoded.legs.count == 3)
    var gap = context.encoded
    gap = gap.filter { !$0.key.hasPrefix("leg1/") }
    #expect(throws: NVMeCSIError.self) { try PublishContext(decoding: gap) }
  }

  @Test("replicas defaults the legs' connection settings for md, unless the StorageClass sets them")
  func parameters() throws {
    let defaults = try VolumeParameters(parsing: ["replicas": "2"])
    #expect(defaults.replicas == 2 && defaults.connection == .replicaLeg && defaults.context["replicas"] == "2")
    let set = try VolumeParameters(parsing: ["replicas": "3", "fastIoFailTmo": "5"])
    #expect(set.connection.fastIoFailTmo == 5 && set.connection.ctrlLossTmo == -1)
    #expect(try VolumeParameters(parsing: [:]).context["replicas"] == nil)
  }
}
