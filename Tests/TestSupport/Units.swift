import NVMeCSICore

// Sizes in tests read as sizes: `8 * MiB`. Spelled as units are, not in lowerCamelCase.
// swift-format-ignore: AlwaysUseLowerCamelCase
public let MiB = Capacity.mebibyte
// swift-format-ignore: AlwaysUseLowerCamelCase
public let GiB = Capacity.gibibyte
