// Volume and snapshot IDs.
//
// Design: an ID is self-locating and versioned, `<kind>1.<target>.<uuid>`:
//   volume   `v1.store-a.0f8e…`   snapshot `s1.store-a.0f8e…`
// The target name says which storage target holds the object, so the stateless
// controller needs no database; the UUID names the object on that target. Both parts
// have a strict charset, so a parsed ID is safe to use in a path, a configfs entry or
// an NQN. Anything that does not parse is not ours: the caller answers NotFound.

/// The name of a storage target: a DNS label (lowercase letters, digits, '-'),
/// 1…63 characters, starting and ending with a letter or digit.
public struct TargetName: Hashable, Comparable, Sendable, CustomStringConvertible {
  public let value: String

  public init(_ value: String) throws(NVMeCSIError) {
    guard Self.isValid(value) else {
      throw .invalidArgument(
        "target name \(quoted(value)) is not a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')")
    }
    self.value = value
  }

  static func isValid(_ s: String) -> Bool {
    let bytes = Array(s.utf8)
    guard (1...63).contains(bytes.count), bytes.first != UInt8(ascii: "-"), bytes.last != UInt8(ascii: "-")
    else { return false }
    return bytes.allSatisfy { isLowerAlnum($0) || $0 == UInt8(ascii: "-") }
  }

  public var description: String { value }
  public static func < (a: Self, b: Self) -> Bool { a.value < b.value }
}

/// A lowercase RFC 4122 UUID string, the name of a volume or snapshot on its target.
public struct ObjectUUID: Hashable, Comparable, Sendable, TextCodable {
  public let value: String

  public init(_ value: String) throws(NVMeCSIError) {
    guard Self.isValid(value) else {
      throw .invalidArgument("\(quoted(value)) is not a lowercase UUID (8-4-4-4-12 hex digits)")
    }
    self.value = value
  }

  /// A new random (version 4) UUID.
  public static func random() -> ObjectUUID {
    // Two draws of the system generator (each a getrandom call), not one per byte.
    var generator = SystemRandomNumberGenerator()
    var bytes = withUnsafeBytes(of: (generator.next() as UInt64, generator.next() as UInt64)) { Array($0) }
    bytes[6] = (bytes[6] & 0x0f) | 0x40
    bytes[8] = (bytes[8] & 0x3f) | 0x80
    return ObjectUUID(bytes: bytes)!
  }

  /// The UUID whose 16 bytes these are; nil unless there are exactly 16.
  public init?(bytes: [UInt8]) {
    guard bytes.count == 16 else { return nil }
    var text = ""
    for (index, byte) in bytes.enumerated() {
      if [4, 6, 8, 10].contains(index) { text += "-" }
      text += hexByte(byte)
    }
    self.value = text
  }

  /// The UUID written as 32 hex digits (any case, dashes or not), e.g. a machine ID.
  public init?(hexDigits text: some StringProtocol) {
    let digits = text.lowercased().filter { $0 != "-" }
    guard digits.count == 32, digits.allSatisfy({ $0.isASCII && $0.isHexDigit }) else { return nil }
    let chars = Array(digits)
    let bytes = stride(from: 0, to: 32, by: 2).map { UInt8(String(chars[$0..<$0 + 2]), radix: 16)! }
    self.init(bytes: bytes)
  }

  static func isValid(_ s: String) -> Bool {
    let bytes = Array(s.utf8)
    guard bytes.count == 36 else { return false }
    for (i, b) in bytes.enumerated() {
      if [8, 13, 18, 23].contains(i) {
        if b != UInt8(ascii: "-") { return false }
      } else if !isLowerHex(b) {
        return false
      }
    }
    return true
  }

  /// The 16 bytes, as 32 lowercase hex digits.
  public var hexDigits: String { value.replacingAll("-", with: "") }

  public var description: String { value }
  public static func < (a: Self, b: Self) -> Bool { a.value < b.value }
  public init(text: String) throws(NVMeCSIError) { try self.init(text) }
}

/// Where an object lives and what it is called there.
public struct ObjectID: Hashable, Comparable, Sendable, CustomStringConvertible {
  public enum Kind: String, Sendable {
    case volume = "v1"
    case snapshot = "s1"
  }

  public let kind: Kind
  public let target: TargetName
  public let uuid: ObjectUUID

  public init(kind: Kind, target: TargetName, uuid: ObjectUUID) {
    self.kind = kind
    self.target = target
    self.uuid = uuid
  }

  /// Parses an ID of the given kind. Throws `notFound` for anything that is not a
  /// well-formed ID of ours (the CSI answer for a volume we cannot have made), and
  /// `invalidArgument` for an empty one.
  public init(parsing s: String, as kind: Kind) throws(NVMeCSIError) {
    let what = kind == .volume ? "volume" : "snapshot"
    guard !s.isEmpty else { throw .invalidArgument("\(what) ID is empty") }
    let parts = s.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
    guard s.utf8.count <= 128, parts.count == 3, parts[0] == kind.rawValue,
      let target = try? TargetName(parts[1]), let uuid = try? ObjectUUID(parts[2])
    else {
      throw .notFound(
        "\(what) \(quoted(s)) does not exist: "
          + "not a \(what) ID of this driver (expected \(kind.rawValue).<target>.<uuid>)"
      )
    }
    self.init(kind: kind, target: target, uuid: uuid)
  }

  public var description: String { "\(kind.rawValue).\(target.value).\(uuid.value)" }
  public static func < (a: Self, b: Self) -> Bool { a.description < b.description }
}

// MARK: - stored as text

/// A value stored (JSON records, LVM tags) as its text and parsed back strictly, so a
/// record that decodes holds only well-formed values; a malformed one is a corrupt
/// record, never a silently wrong value.
public protocol TextCodable: Codable, CustomStringConvertible {
  init(text: String) throws(NVMeCSIError)
}

extension TextCodable {
  public init(from decoder: any Decoder) throws {
    let text = try decoder.singleValueContainer().decode(String.self)
    do { try self.init(text: text) } catch {
      throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.message))
    }
  }

  public func encode(to encoder: any Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(description)
  }
}

// MARK: - small helpers shared by the validators in this module

func isLowerAlnum(_ b: UInt8) -> Bool {
  (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b)
}

func isLowerHex(_ b: UInt8) -> Bool {
  (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(b)
}

func hexByte(_ b: UInt8) -> String {
  let digits = Array("0123456789abcdef")
  return String([digits[Int(b >> 4)], digits[Int(b & 0x0f)]])
}

/// Quotes user input for an error message, escaping control characters and
/// shortening it, so a hostile string cannot forge log lines.
public func quoted(_ s: String) -> String {
  var out = ""
  for scalar in s.unicodeScalars.prefix(80) {
    if scalar.value < 0x20 || scalar.value == 0x7f {
      out += "\\u{\(String(scalar.value, radix: 16))}"
    } else {
      out.unicodeScalars.append(scalar)
    }
  }
  if s.unicodeScalars.count > 80 { out += "…" }
  return "\"\(out)\""
}

extension String {
  func replacingAll(_ a: Character, with b: String) -> String {
    var out = ""
    for c in self { if c == a { out += b } else { out.append(c) } }
    return out
  }
}
