import NVMeCSICore
import Testing

@Suite("key=value lists")
struct KeyValueListTests {
  /// The pairs as comparable text: "key=value", or "key" alone for an item without '='.
  static func flattened(_ text: String, separator: Character = ",") -> [String] {
    KeyValueList.items(text, separator: separator).map { pair in pair.value.map { "\(pair.key)=\($0)" } ?? pair.key }
  }

  @Test(
    "Items keep their order; only the first '=' splits; an item without '=' has no value; empty items are skipped",
    arguments: [
      ("traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1", ["traddr=127.0.0.1", "trsvcid=4420", "src_addr=127.0.0.1"]),
      ("data=ordered,discard", ["data=ordered", "discard"]),
      ("a=x=y", ["a=x=y"]),
      ("a=1,,b=2,", ["a=1", "b=2"]),
      ("a=", ["a="]),
      ("=v", ["=v"]),
      ("", []),
    ])
  func items(text: String, expected: [String]) {
    #expect(Self.flattened(text) == expected)
  }

  @Test("The value of an item without '=' is nil, of 'a=' the empty string")
  func missingAndEmptyValues() {
    let pairs = KeyValueList.items("flag,empty=")
    #expect(pairs.map(\.key) == ["flag", "empty"])
    #expect(pairs[0].value == nil)
    #expect(pairs[1].value == "")
  }

  @Test("Another separator splits lines, as in blkid's export output")
  func lines() {
    let text = "DEVNAME=/dev/nvme0n1\nUUID=1234\nTYPE=ext4\n"
    #expect(Self.flattened(text, separator: "\n") == ["DEVNAME=/dev/nvme0n1", "UUID=1234", "TYPE=ext4"])
    #expect(KeyValueList.dictionary(text, separator: "\n")["TYPE"] == "ext4")
  }

  @Test("The dictionary holds the items with a value, a later key winning")
  func dictionary() {
    #expect(KeyValueList.dictionary("a=1,flag,b=2,a=3") == ["a": "3", "b": "2"])
    #expect(KeyValueList.dictionary("") == [:])
  }
}
