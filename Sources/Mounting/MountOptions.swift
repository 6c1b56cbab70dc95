import NVMeCSICore

#if canImport(Glibc)
  import Glibc
#endif

/// CSI mount flags turned into what mount(2) takes: generic options ("noatime", "nodev",
/// "ro", …) become `MS_*` flags, as mount(8) does — a file system rejects them in its
/// data string — and the rest ("discard", "inode64", "data=ordered") is passed to the
/// file system joined by ",". Later options win over earlier ones ("ro,rw" is rw).
public struct MountOptions: Equatable, Sendable {
  /// MS_* bits for mount(2).
  public var flags: UInt
  /// File-system-specific options, in order.
  public var data: [String]

  public init(flags: UInt, data: [String]) {
    self.flags = flags
    self.data = data
  }

  /// The data string for mount(2), nil when there is none.
  public var dataString: String? { data.isEmpty ? nil : data.joined(separator: ",") }
  public var readonly: Bool { flags & UInt(MS_RDONLY) != 0 }

  private static let setting: [String: Int] = [
    "ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
    "sync": MS_SYNCHRONOUS, "dirsync": MS_DIRSYNC, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME, "lazytime": MS_LAZYTIME, "silent": MS_SILENT,
  ]
  private static let clearing: [String: Int] = [
    "rw": MS_RDONLY, "suid": MS_NOSUID, "dev": MS_NODEV, "exec": MS_NOEXEC, "async": MS_SYNCHRONOUS,
    "atime": MS_NOATIME, "diratime": MS_NODIRATIME, "norelatime": MS_RELATIME,
    "nostrictatime": MS_STRICTATIME, "nolazytime": MS_LAZYTIME, "loud": MS_SILENT, "defaults": 0,
  ]
  /// Options that change what kind of mount this is; the mounter decides that itself.
  private static let refused: Set<String> = [
    "bind", "rbind", "remount", "move", "shared", "rshared", "private", "rprivate", "slave", "rslave",
    "unbindable", "runbindable", "loop", "user", "users", "owner", "group", "auto", "noauto", "nofail",
  ]

  /// Validates `options` (each only of A-Z a-z 0-9 = , . _ -) and sorts them into flags and data.
  /// `readonly` adds MS_RDONLY whatever the options say.
  public static func parse(_ options: [String], readonly: Bool) throws(NVMeCSIError) -> MountOptions {
    var flags: UInt = 0
    var data: [String] = []
    for option in options {
      guard !option.isEmpty, option.utf8.allSatisfy(isAllowed) else {
        throw .invalidArgument(
          "mount option \(quoted(option)) is not allowed: options may only contain A-Z a-z 0-9 = , . _ -")
      }
      for part in option.split(separator: ",").map(String.init) {
        if let bit = setting[part] {
          flags |= UInt(bit)
        } else if let bit = clearing[part] {
          flags &= ~UInt(bit)
        } else if refused.contains(part) {
          throw .invalidArgument("mount option \(quoted(part)) is not allowed: the driver chooses the kind of mount")
        } else {
          data.append(part)
        }
      }
    }
    if readonly { flags |= UInt(MS_RDONLY) }
    return MountOptions(flags: flags, data: data)
  }

  /// The MS_* flags that `mountOptions` of a mountinfo line stand for, so that a remount
  /// (which replaces them all) keeps them.
  public static func flags(ofMountOptions mountOptions: [String]) -> UInt {
    var flags: UInt = 0
    for option in mountOptions {
      switch option {
      case "ro": flags |= UInt(MS_RDONLY)
      case "nosuid": flags |= UInt(MS_NOSUID)
      case "nodev": flags |= UInt(MS_NODEV)
      case "noexec": flags |= UInt(MS_NOEXEC)
      case "noatime": flags |= UInt(MS_NOATIME)
      case "nodiratime": flags |= UInt(MS_NODIRATIME)
      case "relatime": flags |= UInt(MS_RELATIME)
      default: break
      }
    }
    // mountinfo shows no atime option for strictatime.
    if flags & UInt(MS_NOATIME | MS_RELATIME) == 0 { flags |= UInt(MS_STRICTATIME) }
    return flags
  }

  private static func isAllowed(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
      UInt8(ascii: "0")...UInt8(ascii: "9"):
      return true
    case UInt8(ascii: "="), UInt8(ascii: ","), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
      return true
    default:
      return false
    }
  }
}
