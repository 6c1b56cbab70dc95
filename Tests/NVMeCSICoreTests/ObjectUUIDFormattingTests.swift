import Foundation
import NVMeCSICore
import Testing

@Suite("UUID formatting and storage")
struct ObjectUUIDFormattingTests {
  @Test("Sixteen bytes print as lowercase 8-4-4-4-12 hex digits")
  func fromBytes() throws {
    let uuid = try #require(ObjectUUID(bytes: Array(0..<16)))
    #expect(uuid.value == "00010203-0405-0607-0809-0a0b0c0d0e0f")
    #expect(ObjectUUID(bytes: Array(repeating: 0xff, count: 16))?.value == "ffffffff-ffff-ffff-ffff-ffffffffffff")
  }

  @Test("Anything but sixteen bytes is no UUID", arguments: [0, 1, 15, 17, 32])
  func wrongByteCount(count: Int) {
    #expect(ObjectUUID(bytes: Array(repeating: 0xab, count: count)) == nil)
  }

  @Test(
    "Thirty-two hex digits, any case, with or without dashes, are a UUID",
    arguments: [
      ("0123456789abcdef0123456789abcdef", "01234567-89ab-cdef-0123-456789abcdef"),
      ("0123456789ABCDEF0123456789abcdef", "01234567-89ab-cdef-0123-456789abcdef"),
      ("4C4C4544-0042-3510-8052-B4C04F4B4E32", "4c4c4544-0042-3510-8052-b4c04f4b4e32"),
      ("0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b", "0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b"),
    ])
  func fromHexDigits(text: String, expected: String) {
    #expect(ObjectUUID(hexDigits: text)?.value == expected)
  }

  @Test(
    "Anything else is no UUID",
    arguments: [
      "", "uninitialized", "0123456789abcdef0123456789abcde", "0123456789abcdef0123456789abcdef0",
      "0123456789abcdefg123456789abcdef", "0123456789abcdef 0123456789abcdef",
      "０123456789abcdef0123456789abcdef",
    ])
  func notHexDigits(text: String) {
    #expect(ObjectUUID(hexDigits: text) == nil)
  }

  @Test("A UUID's hex digits give the same UUID back")
  func hexDigitsRoundTrip() throws {
    for _ in 0..<20 {
      let uuid = ObjectUUID.random()
      #expect(ObjectUUID(hexDigits: uuid.hexDigits) == uuid)
      #expect(try ObjectUUID(uuid.value) == uuid)
    }
  }

  @Test("A random UUID is version 4, RFC 4122 variant, and new each time")
  func random() {
    let uuids = (0..<50).map { _ in ObjectUUID.random() }
    for uuid in uuids {
      let digits = Array(uuid.hexDigits)
      #expect(digits[12] == "4")
      #expect("89ab".contains(digits[16]))
    }
    #expect(Set(uuids).count == uuids.count)
  }

  struct Record: Codable, Equatable {
    var id: ObjectUUID
  }

  @Test("A UUID is stored as its string and read back")
  func codableRoundTrip() throws {
    let record = Record(id: try ObjectUUID("0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b"))
    let data = try JSONEncoder().encode(record)
    #expect(String(decoding: data, as: UTF8.self) == #"{"id":"0f8e2c3a-1b4d-4e5f-8a6b-7c8d9e0f1a2b"}"#)
    #expect(try JSONDecoder().decode(Record.self, from: data) == record)
  }

  @Test(
    "A stored string that is no lowercase UUID fails decoding as corrupt data",
    arguments: [#"{"id":"not-a-uuid"}"#, #"{"id":"0F8E2C3A-1B4D-4E5F-8A6B-7C8D9E0F1A2B"}"#, #"{"id":""}"#])
  func decodingRefusesMalformed(json: String) {
    do {
      let record = try JSONDecoder().decode(Record.self, from: Data(json.utf8))
      Issue.record("decoded \(record)")
    } catch DecodingError.dataCorrupted {
      // expected: a corrupt record
    } catch {
      Issue.record("expected DecodingError.dataCorrupted, got \(error)")
    }
  }
}
