import Foundation
import Logging
import NVMeCSICore

/// Finds this node's NVMe host identity.
///
/// Order: `/etc/nvme/hostnqn` + `/etc/nvme/hostid` (Talos and nvme-cli write them);
/// else a pair persisted earlier in the state directory; else one derived from the
/// machine ID (`/etc/machine-id`, else the DMI product UUID), persisted so it never
/// changes. Never a value baked into the image: two nodes must not share an NQN.
public struct HostIdentityLoader: Sendable {
  public var nvmeConfigDirectory: String
  public var stateDirectory: String
  public var machineIDFiles: [String]

  public init(
    nvmeConfigDirectory: String = "/etc/nvme", stateDirectory: String,
    machineIDFiles: [String] = ["/etc/machine-id", "/sys/class/dmi/id/product_uuid"]
  ) {
    self.nvmeConfigDirectory = nvmeConfigDirectory
    self.stateDirectory = stateDirectory
    self.machineIDFiles = machineIDFiles
  }

  public func load(logger: Logger) throws(NVMeCSIError) -> HostIdentity {
    if let identity = try read(from: nvmeConfigDirectory) { return identity }
    if let identity = try read(from: stateDirectory) { return identity }
    do { try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true) } catch {
      throw .internalError("cannot create state directory \(stateDirectory): \(error)")
    }
    let id = derivedHostID()
    let identity = HostIdentity(nqn: try HostNQN("nqn.2014-08.org.nvmexpress:uuid:\(id.value)"), id: id)
    try DurableFile.write(Data((identity.nqn.value + "\n").utf8), to: stateDirectory + "/hostnqn")
    try DurableFile.write(Data((identity.id.value + "\n").utf8), to: stateDirectory + "/hostid")
    logger.notice(
      "no \(nvmeConfigDirectory)/hostnqn: derived a host identity and saved it in \(stateDirectory)",
      metadata: ["hostnqn": "\(identity.nqn)"])
    return identity
  }

  /// Both files, or neither; one without the other is a misconfiguration to report.
  private func read(from directory: String) throws(NVMeCSIError) -> HostIdentity? {
    let nqnText = contents(directory + "/hostnqn")
    let idText = contents(directory + "/hostid")
    // An empty file is a broken identity, never "none": refuse rather than guess.
    for (file, text) in [("hostnqn", nqnText), ("hostid", idText)] where text?.isEmpty == true {
      throw .failedPrecondition("\(directory)/\(file) is empty: write this node's own value or remove the file")
    }
    switch (nqnText, idText) {
    case (nil, nil): return nil
    case (let nqn?, let id?):
      guard let uuid = try? ObjectUUID(id.lowercased()) else {
        throw .failedPrecondition("\(directory)/hostid holds \(quoted(id)), not a UUID: fix or remove it")
      }
      do { return HostIdentity(nqn: try HostNQN(nqn), id: uuid) } catch {
        throw .failedPrecondition("\(directory)/hostnqn: \(error.message)")
      }
    case (nil, _?):
      throw .failedPrecondition("\(directory) has hostid but no hostnqn: write both or neither")
    case (_?, nil):
      // nvme-cli often writes only hostnqn; its UUID form carries the host ID.
      guard let nqn = nqnText, let range = nqn.range(of: ":uuid:"),
        let uuid = try? ObjectUUID(String(nqn[range.upperBound...]).lowercased())
      else {
        throw .failedPrecondition("\(directory) has hostnqn but no hostid: write \(directory)/hostid")
      }
      do { return HostIdentity(nqn: try HostNQN(nqn), id: uuid) } catch {
        throw .failedPrecondition("\(directory)/hostnqn: \(error.message)")
      }
    }
  }

  /// A stable UUID from the machine ID (32 hex digits, or a DMI UUID with dashes), or a
  /// random one if the machine has none.
  private func derivedHostID() -> ObjectUUID {
    for file in machineIDFiles {
      if let text = contents(file), !text.isEmpty, let uuid = ObjectUUID(hexDigits: text) { return uuid }
    }
    return .random()
  }

  private func contents(_ path: String) -> String? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
  }
}
