#if canImport(Glibc)
  import Glibc
#endif

/// Has the child of a `posix_spawn` with these actions close every descriptor from
/// `lowest` up; false where glibc (before 2.34) cannot. Swift does not import the
/// declaration (it needs _GNU_SOURCE), so it is looked up. Without it, O_CLOEXEC (which
/// this module and Foundation/NIO use) is what keeps descriptors from leaking.
public func closeDescriptors(from lowest: Int32, in actions: inout posix_spawn_file_actions_t) -> Bool {
  guard let addCloseFrom else { return false }
  return addCloseFrom(&actions, lowest) == 0
}

private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
private let addCloseFrom: AddCloseFrom? = {
  guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
  else { return nil }
  return unsafeBitCast(symbol, to: AddCloseFrom.self)
}()
