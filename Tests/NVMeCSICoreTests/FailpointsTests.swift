import NVMeCSICore
import Testing

// A reached failpoint ends the process, so these tests only show the points that must
// NOT fire (the crashing side is exercised by the crash tests in the VM harness).
@Suite("Failpoints")
struct FailpointsTests {
  @Test("The environment variable and exit code are the documented ones")
  func names() {
    #expect(Failpoints.environmentVariable == "NVME_CSI_FAILPOINTS")
    #expect(Failpoints.crashExitCode == 86)
  }

  @Test(
    "Points that are not armed with =crash never fire",
    arguments: [
      [:],
      ["NVME_CSI_FAILPOINTS": ""],
      ["NVME_CSI_FAILPOINTS": "store.create-volume.after-data"],
      ["NVME_CSI_FAILPOINTS": "store.create-volume.after-data=panic"],
      ["NVME_CSI_FAILPOINTS": "store.create-volume.after-data=crash-later"],
      ["NVME_CSI_FAILPOINTS": "store.create-volume.after-data= crash"],
      ["NVME_CSI_FAILPOINTS": ",,=crash,"],
      ["OTHER_VARIABLE": "store.create-volume.after-data=crash"],
      ["nvme_csi_failpoints": "store.create-volume.after-data=crash"],
      ["NVME_CSI_FAILPOINTS": "store.delete-volume.after-record=crash,store.expand-volume.after-data=crash"],
    ] as [[String: String]])
  func unarmedPointsDoNotFire(_ environment: [String: String]) {
    let failpoints = Failpoints(environment: environment)
    failpoints.reach("store.create-volume.after-data")
    failpoints.reach("")
    failpoints.reach("store.create-volume.after-data=crash")
  }

  @Test("Only the named points are armed")
  func onlyNamedPoints() {
    let failpoints = Failpoints(crashAt: ["a.b"])
    failpoints.reach("a")
    failpoints.reach("a.b.c")
    failpoints.reach("A.B")
    Failpoints.none.reach("a.b")
  }
}
