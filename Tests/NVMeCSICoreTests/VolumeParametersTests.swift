import NVMeCSICore
import TestSupport
import Testing

@Suite("StorageClass parameters")
struct VolumeParametersTests {
  @Test("No parameters mean no pinned target and the default connection knobs")
  func defaults() throws {
    let p = try VolumeParameters(parsing: [:])
    #expect(p.target == nil)
    #expect(p.connection == ConnectionParameters())
    #expect(p.connection.ctrlLossTmo == 600)
    #expect(p.connection.reconnectDelay == 2)
    #expect(p.connection.fastIoFailTmo == 120)
    #expect(p.connection.keepAliveTmo == 5)
    #expect(p.connection.nrIoQueues == 0)
  }

  @Test("Every knob and the target are read")
  func readsAll() throws {
    let p = try VolumeParameters(parsing: [
      "target": "store-b", "ctrlLossTmo": "120", "reconnectDelay": "5", "fastIoFailTmo": "30",
      "keepAliveTmo": "10", "nrIoQueues": "4",
    ])
    #expect(p.target == (try TargetName("store-b")))
    #expect(p.connection.ctrlLossTmo == 120)
    #expect(p.connection.reconnectDelay == 5)
    #expect(p.connection.fastIoFailTmo == 30)
    #expect(p.connection.keepAliveTmo == 10)
    #expect(p.connection.nrIoQueues == 4)
  }

  @Test(
    "An unknown parameter is an invalid argument naming it and the known ones",
    arguments: ["ctrlLossTimeout", "fsType", "Target", "csi.storage.k8s.io", "csi.storage.k8s.io.pvc/name"])
  func unknownKey(_ key: String) {
    expectError(.invalidArgument, mentioning: [quoted(key), "ctrlLossTmo", "target"]) {
      try VolumeParameters(parsing: [key: "1"])
    }
  }

  @Test("Parameters the Kubernetes sidecars add are accepted and ignored")
  func sidecarKeys() throws {
    let p = try VolumeParameters(parsing: [
      "csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "default",
      "csi.storage.k8s.io/pv/name": "pvc-1234", "csi.storage.k8s.io/fstype": "xfs",
    ])
    #expect(p == VolumeParameters())
  }

  @Test("An invalid target name is an invalid argument")
  func badTarget() {
    expectError(.invalidArgument, mentioning: [quoted("Store_B")]) {
      try VolumeParameters(parsing: ["target": "Store_B"])
    }
  }

  static let outOfRange: [(String, String)] = [
    ("ctrlLossTmo", "-2"), ("ctrlLossTmo", "86401"), ("ctrlLossTmo", "ten"), ("ctrlLossTmo", ""),
    ("ctrlLossTmo", "1.5"), ("ctrlLossTmo", " 60"),
    ("reconnectDelay", "0"), ("reconnectDelay", "-1"), ("reconnectDelay", "3601"),
    ("fastIoFailTmo", "-2"), ("fastIoFailTmo", "3601"),
    ("keepAliveTmo", "0"), ("keepAliveTmo", "-1"), ("keepAliveTmo", "3601"),
    ("nrIoQueues", "-1"), ("nrIoQueues", "1025"), ("nrIoQueues", "99999999999999999999"),
  ]

  @Test("A knob outside its range is an invalid argument naming the knob and the value", arguments: outOfRange)
  func knobOutOfRange(_ key: String, _ value: String) {
    expectError(.invalidArgument, mentioning: [key, quoted(value), "out of range"]) {
      try VolumeParameters(parsing: [key: value])
    }
  }

  static let boundaries: [[String: String]] = [
    ["ctrlLossTmo": "-1"],
    ["ctrlLossTmo": "0"],
    ["ctrlLossTmo": "86400"],
    ["ctrlLossTmo": "-1", "reconnectDelay": "3600", "fastIoFailTmo": "3600"],
    ["reconnectDelay": "1"],
    ["reconnectDelay": "600"],  // equal to ctrlLossTmo is fine
    ["fastIoFailTmo": "-1"],
    ["fastIoFailTmo": "0"],
    ["fastIoFailTmo": "599"],
    ["keepAliveTmo": "1"],
    ["keepAliveTmo": "3600"],
    ["nrIoQueues": "0"],
    ["nrIoQueues": "1024"],
  ]

  @Test("Values at the edges of each range are accepted", arguments: boundaries)
  func boundaryAccepted(_ values: [String: String]) throws {
    let c = try ConnectionParameters(from: values)
    for (key, value) in values { #expect(c.asContext[key] == value) }
  }

  @Test("reconnectDelay may not exceed a positive ctrlLossTmo")
  func reconnectAboveLoss() {
    expectError(.invalidArgument, mentioning: ["reconnectDelay (11)", "ctrlLossTmo (10)"]) {
      try VolumeParameters(parsing: ["ctrlLossTmo": "10", "reconnectDelay": "11", "fastIoFailTmo": "5"])
    }
  }

  @Test("fastIoFailTmo must stay below a positive ctrlLossTmo", arguments: ["10", "11"])
  func fastFailNotBelowLoss(_ fastIoFail: String) {
    expectError(.invalidArgument, mentioning: ["fastIoFailTmo (\(fastIoFail))", "ctrlLossTmo (10)"]) {
      try VolumeParameters(parsing: ["ctrlLossTmo": "10", "fastIoFailTmo": fastIoFail])
    }
  }

  @Test("A short ctrlLossTmo alone turns the default fastIoFailTmo off; an explicit conflicting one is refused")
  func defaultsInteract() throws {
    #expect(try VolumeParameters(parsing: ["ctrlLossTmo": "15"]).connection.fastIoFailTmo == -1)
    #expect(try VolumeParameters(parsing: ["ctrlLossTmo": "15", "fastIoFailTmo": "14"]).connection.fastIoFailTmo == 14)
    expectError(.invalidArgument, mentioning: ["fastIoFailTmo (20)"]) {
      try VolumeParameters(parsing: ["ctrlLossTmo": "15", "fastIoFailTmo": "20"])
    }
  }

  @Test("The volume context carries every knob and reads back to the same values")
  func contextRoundTrip() throws {
    var c = ConnectionParameters()
    c.ctrlLossTmo = -1
    c.reconnectDelay = 7
    c.fastIoFailTmo = -1
    c.keepAliveTmo = 3
    c.nrIoQueues = 8
    let context = c.asContext
    #expect(Set(context.keys) == Set(ConnectionParameters.keys))
    #expect(
      Set(ConnectionParameters.keys) == [
        "ctrlLossTmo", "reconnectDelay", "fastIoFailTmo", "keepAliveTmo", "nrIoQueues",
      ])
    #expect(try ConnectionParameters(from: context) == c)
    #expect(try VolumeParameters(parsing: context).connection == c)
  }

  @Test("Connection knobs ignore unrelated keys of the volume context")
  func ignoresOtherKeys() throws {
    #expect(try ConnectionParameters(from: ["fsType": "xfs", "keepAliveTmo": "9"]).keepAliveTmo == 9)
  }
}
