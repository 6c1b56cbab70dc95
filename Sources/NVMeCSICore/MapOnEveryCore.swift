import Foundation
import Synchronization

extension Array where Element: Sendable {
  /// `transform` applied to every element, the elements split over the cores; the
  /// results in the elements' order. It blocks the calling thread: for start-up work
  /// over many items (a target's records and exports), not for a request.
  public func mapOnEveryCore<T: Sendable>(_ transform: @Sendable (Element) -> T) -> [T] {
    let parts = Swift.max(1, Swift.min(ProcessInfo.processInfo.activeProcessorCount, count))
    let results = Mutex([[T]](repeating: [], count: parts))
    DispatchQueue.concurrentPerform(iterations: parts) { part in
      let chunk = self[(count * part / parts)..<(count * (part + 1) / parts)].map(transform)
      results.withLock { $0[part] = chunk }
    }
    return results.withLock { $0.flatMap { $0 } }
  }
}
