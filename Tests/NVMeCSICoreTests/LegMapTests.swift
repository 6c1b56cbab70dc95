import NVMeCSICore
import TestSupport
import Testing

@Suite("Leg maps")
struct LegMapTests {
  static let set = ObjectUUID.random()

  static func map(version: UInt64 = 1) throws -> LegMap {
    LegMap(
      set: set, version: version,
      legs: [
        LegMap.Leg(target: try TargetName("store-a"), generation: 0),
        LegMap.Leg(
          target: try TargetName("store-c"), generation: 1,
          portals: [HostPort(host: "10.0.0.3", port: 4420), HostPort(host: "fd00::3", port: 4420)]),
      ],
      replaced: [LegMap.ReplacedLeg(index: 1, target: try TargetName("store-b"), generation: 0)])
  }

  @Test("A map's block is 4 KiB and reads back as the same map")
  func roundTrip() throws {
    let map = try Self.map(version: 7)
    let block = try map.block()
    #expect(block.count == LegMap.blockBytes)
    #expect(LegMap.content(of: block) == .map(map))
    #expect(LegMap.blockOffset + UInt64(LegMap.blockBytes) == ReplicaLayout.dataOffsetBytes)
  }

  @Test("Replacing a leg bumps the version and the leg's generation and remembers the old leg")
  func replacing() throws {
    let map = try Self.map(version: 3)
    let next = try map.replacing(leg: 0, with: try TargetName("store-d"), portals: [HostPort(host: "h", port: 1)])
    #expect(next.version == 4)
    #expect(
      next.legs[0]
        == LegMap.Leg(target: try TargetName("store-d"), generation: 1, portals: [HostPort(host: "h", port: 1)]))
    #expect(next.legs[1] == map.legs[1])
    #expect(
      next.replaced == map.replaced + [LegMap.ReplacedLeg(index: 0, target: try TargetName("store-a"), generation: 0)])
    #expect(next.legIDs[0].uuid == ReplicaLayout.legUUID(of: Self.set, index: 0, generation: 1))
    #expect(LegMap.content(of: try next.block()) == .map(next))
  }

  @Test(
    "Replacing is refused on a target of the set, for a leg that does not exist, at generation 255 and with 8 replaced legs"
  )
  func replacingRefused() throws {
    let map = try Self.map()
    for target in ["store-a", "store-c"] {
      expectError(.invalidArgument, mentioning: [target]) {
        try map.replacing(leg: 0, with: try TargetName(target), portals: [])
      }
    }
    for index in [-1, 2, 3] {
      expectError(.invalidArgument, mentioning: ["leg \(index)"]) {
        try map.replacing(leg: index, with: try TargetName("store-d"), portals: [])
      }
    }
    var worn = map
    worn.legs[1].generation = LegMap.maximumGeneration
    expectError(.failedPrecondition, mentioning: ["255"]) {
      try worn.replacing(leg: 1, with: try TargetName("store-d"), portals: [])
    }
    #expect(try worn.replacing(leg: 0, with: try TargetName("store-d"), portals: []).legs[0].generation == 1)
    var full = map
    full.replaced = (0..<LegMap.maximumReplaced).map {
      LegMap.ReplacedLeg(index: 0, target: try! TargetName("old-\($0)"), generation: 0)
    }
    expectError(.failedPrecondition, mentioning: ["8 replaced legs"]) {
      try full.replacing(leg: 0, with: try TargetName("store-d"), portals: [])
    }
  }

  @Test("A block of zeros is empty, anything else without the magic is foreign")
  func emptyAndForeign() throws {
    let zeros = [UInt8](repeating: 0, count: LegMap.blockBytes)
    #expect(LegMap.content(of: zeros) == .empty)
    var foreign = zeros
    foreign[4000] = 1
    #expect(LegMap.content(of: foreign) == .foreign)
    #expect(LegMap.content(of: [UInt8](repeating: 0xab, count: LegMap.blockBytes)) == .foreign)
  }

  @Test("A block of ours with a flipped byte, a length beyond the block or the wrong size is damaged")
  func damaged() throws {
    let block = try Self.map().block()
    func isDamaged(_ bytes: [UInt8]) -> Bool {
      if case .damaged = LegMap.content(of: bytes) { return true }
      return false
    }
    var flipped = block
    flipped[30] ^= 0x01  // in the JSON payload
    #expect(isDamaged(flipped))
    var badChecksum = block
    badChecksum[20] ^= 0xff
    #expect(isDamaged(badChecksum))
    var tooLong = block
    tooLong[16..<20] = [0x00, 0x10, 0x00, 0x00]  // 4096: past the header
    #expect(isDamaged(tooLong))
    #expect(isDamaged(Array(block.prefix(512))))
    #expect(isDamaged(block + [0]))
  }

  @Test("A leg's generation is recovered from its UUID for every slot; a random UUID is no leg")
  func generationRoundTrip() throws {
    let set = ObjectUUID.random()
    for index in 0...2 {
      for generation in [0, 1, 255] {
        let leg = ReplicaLayout.legUUID(of: set, index: index, generation: generation)
        #expect(
          ReplicaLayout.generation(ofLeg: leg, index: index, set: set) == generation, "leg \(index)-\(generation)")
        #expect(ReplicaLayout.legUUID(of: leg, index: index, generation: generation) == set)
      }
      #expect(ReplicaLayout.generation(ofLeg: .random(), index: index, set: set) == nil)
    }
  }
}
