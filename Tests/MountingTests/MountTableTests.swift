import Mounting
import NVMeCSICore
import TestSupport
import Testing

/// A node's mount table as the kernel writes it: the root file system, a staged volume,
/// its bind into a pod (read-only), a bind of a subtree, a raw block device bound onto a
/// file, two mounts stacked on one directory, and escaped names.
let fixture = #"""
  22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
  23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
  24 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4017300k,nr_inodes=1004325,mode=755
  30 22 259:3 / /var/lib/kubelet/plugins/kubernetes.io/csi/nvme.csi.example.com/abc/globalmount \#
  rw,relatime shared:50 - xfs /dev/nvme1n1 rw,attr2,inode64,noquota
  31 22 259:3 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1/mount \#
  ro,relatime shared:50 - xfs /dev/nvme1n1 rw,attr2,inode64,noquota
  32 22 259:3 /data/sub /mnt/with\040space rw shared:1 master:2 - xfs /dev/nvme1n1 rw,attr2
  33 22 0:5 /nvme2n1 /var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pvc-2/pod1 \#
  rw,nosuid,relatime shared:2 - devtmpfs udev rw,mode=755
  34 22 0:40 / /mnt/stacked rw,relatime - tmpfs tmpfs rw
  35 34 0:41 / /mnt/stacked ro,relatime - tmpfs upper rw
  36 22 0:42 / /mnt/tab\011and\134backslash rw - tmpfs  rw
  37 22 0:43 / /mnt/weird\0 rw - tmpfs odd\04 rw

  """#

@Suite("MountTable")
struct MountTableTests {
  let table: MountTable

  init() throws {
    table = try MountTable(parsing: fixture)
  }

  @Test("Every line of the fixture becomes one entry, in order")
  func count() {
    #expect(table.entries.map(\.id) == [22, 23, 24, 30, 31, 32, 33, 34, 35, 36, 37])
  }

  @Test("Every field of a line is parsed, with escaped spaces undone")
  func fields() throws {
    let entry = try #require(table.entries.first { $0.id == 32 })
    #expect(
      entry
        == MountTableEntry(
          id: 32, parentID: 22, major: 259, minor: 3, root: "/data/sub", mountPoint: "/mnt/with space",
          mountOptions: ["rw"], optionalFields: ["shared:1", "master:2"], fsType: "xfs", source: "/dev/nvme1n1",
          superOptions: ["rw", "attr2"]))
    #expect(entry.readonly == false)
    #expect(
      entry.info
        == MountInfo(
          mountPoint: "/mnt/with space", source: "/dev/nvme1n1", root: "/data/sub", fsType: "xfs", readonly: false))
  }

  @Test("A line without optional fields parses too")
  func noOptionalFields() throws {
    let entry = try #require(table.entries.first { $0.id == 34 })
    #expect(entry.optionalFields.isEmpty)
    #expect(entry.fsType == "tmpfs")
    #expect(entry.source == "tmpfs")
  }

  @Test("Read-only is the per-mount option, not the file system's")
  func readonly() throws {
    let pod = try #require(table.entries.first { $0.id == 31 })
    #expect(pod.readonly)
    #expect(pod.superOptions.contains("rw"))
    #expect(try #require(table.entries.first { $0.id == 30 }).readonly == false)
  }

  @Test("Tab and backslash escapes are undone, an empty source is kept, broken escapes stay literal")
  func escapes() throws {
    let entry = try #require(table.entries.first { $0.id == 36 })
    #expect(entry.mountPoint == "/mnt/tab\tand\\backslash")
    #expect(entry.source == "")
    let odd = try #require(table.entries.first { $0.id == 37 })
    #expect(odd.mountPoint == #"/mnt/weird\0"#)
    #expect(odd.source == #"odd\04"#)
  }

  struct Lookup: Sendable, CustomTestStringConvertible {
    var path: String
    var expected: MountInfo?
    var testDescription: String { path }
  }

  static let staged = MountInfo(
    mountPoint: "/var/lib/kubelet/plugins/kubernetes.io/csi/nvme.csi.example.com/abc/globalmount",
    source: "/dev/nvme1n1", root: "/", fsType: "xfs", readonly: false)

  @Test(
    "A mount is found by its mount point, with or without a trailing slash",
    arguments: [
      Lookup(
        path: "/",
        expected: MountInfo(mountPoint: "/", source: "/dev/nvme0n1p2", root: "/", fsType: "ext4", readonly: false)),
      Lookup(path: staged.mountPoint, expected: staged),
      Lookup(path: staged.mountPoint + "/", expected: staged),
      Lookup(path: staged.mountPoint + "//", expected: staged),
      Lookup(
        path: "/mnt/with space/",
        expected: MountInfo(
          mountPoint: "/mnt/with space", source: "/dev/nvme1n1", root: "/data/sub", fsType: "xfs", readonly: false)),
      Lookup(
        path: "/mnt/stacked",
        expected: MountInfo(mountPoint: "/mnt/stacked", source: "upper", root: "/", fsType: "tmpfs", readonly: true)),
      Lookup(path: #"/mnt/with\040space"#, expected: nil),
      Lookup(path: "/var/lib/kubelet", expected: nil),
      Lookup(path: staged.mountPoint + "/file", expected: nil),
      Lookup(path: "/mnt/with", expected: nil),
      Lookup(path: "", expected: nil),
    ])
  func lookup(_ lookup: Lookup) {
    #expect(table.mount(at: lookup.path)?.info == lookup.expected)
  }

  @Test("The mounts of a source are every mount of it, binds included, in table order")
  func mountsOfSource() {
    #expect(table.mounts(ofSource: "/dev/nvme1n1").map(\.id) == [30, 31, 32])
    #expect(table.mounts(ofSource: "/dev/nvme1").isEmpty)
    #expect(table.mounts(ofSource: "udev").map(\.id) == [24, 33])
  }

  @Test("Empty text is an empty table; a missing final newline is fine")
  func emptyAndUnterminated() throws {
    #expect(try MountTable(parsing: "").entries.isEmpty)
    let one = try MountTable(parsing: "22 1 259:2 / / rw shared:1 - ext4 /dev/sda1 rw")
    #expect(one.entries.map(\.mountPoint) == ["/"])
  }

  @Test(
    "A line that is not mountinfo is an internal error naming the line",
    arguments: [
      "22 1 259:2 / / rw shared:1 ext4 /dev/sda1 rw",  // no separator
      "22 1 259:2 / / rw - ext4 /dev/sda1",  // too few fields after it
      "22 1 259:2 / / rw - ext4 /dev/sda1 rw extra",  // too many
      "x 1 259:2 / / rw - ext4 /dev/sda1 rw",  // mount ID not a number
      "22 1 2592 / / rw - ext4 /dev/sda1 rw",  // no major:minor
      "22 1 259:2 / relative rw - ext4 /dev/sda1 rw",  // mount point not absolute
      "22 1 259:2 /",
    ])
  func malformed(_ line: String) async {
    await expectError(.internalError, mentioning: ["line 2", "mountinfo"]) {
      try MountTable(parsing: "22 1 259:2 / / rw - ext4 /dev/sda1 rw\n" + line + "\n", origin: "/proc/self/mountinfo")
    }
  }

  @Test("The real mount table of this process has the root file system")
  func realTable() throws {
    let table = try MountTable.read()
    #expect(table.mount(at: "/") != nil)
    #expect(table.entries.count > 1)
  }

  @Test("Reading a missing mount table is an internal error naming the file")
  func missingFile() async {
    await expectError(.internalError, mentioning: ["/nonexistent/mountinfo"]) {
      try MountTable.read(from: "/nonexistent/mountinfo")
    }
  }
}
