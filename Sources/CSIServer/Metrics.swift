import Foundation
import Prometheus
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// One process's Prometheus metrics: every RPC it serves (count by code, latency) and
/// the process itself, plus what each role adds through `onScrape` (read when scraped,
/// from the role's in-memory state: a scrape costs the same with 10 or 100,000 volumes).
///
/// swift-prometheus's registry is used directly, not through swift-metrics' global
/// bootstrap: each process owns one instance, passed where it is needed.
public final class DriverMetrics: Sendable {
  public let registry = PrometheusCollectorRegistry()
  private let refreshers = Mutex<[@Sendable () async -> Void]>([])
  /// One refresh at a time; a scrape meanwhile gets the values as they are.
  private let refreshing = Mutex(false)
  /// Gauges by name and labels, so a series can be dropped again. The registry traps on
  /// a name registered twice with different help or kinds: every name here has one
  /// call site, with literal help.
  private let gauges = Mutex<[[String]: Gauge]>([:])
  private let started = Date()

  static let latencyBuckets: [Duration] = [
    .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
    .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5),
    .seconds(10), .seconds(30), .seconds(60),
  ]

  public init() {}

  /// Counts one served RPC. `service` and `method` come from the method descriptor
  /// (a fixed set), `code` from the status: the label space is bounded.
  func recordRPC(service: String, method: String, code: String, duration: Duration) {
    registry.makeCounter(
      descriptor: .init(
        namespace: "nvmecsi", metricName: "rpc_requests", unitName: "total",
        helpText: "RPCs served, by gRPC status code"),
      labels: [("service", service), ("method", method), ("code", code)]
    ).increment()
    registry.makeDurationHistogram(
      descriptor: .init(
        namespace: "nvmecsi", metricName: "rpc_duration", unitName: "seconds",
        helpText: "How long RPCs took to answer, whatever their status"),
      labels: [("service", service), ("method", method)], buckets: Self.latencyBuckets
    ).record(duration)
  }

  /// A gauge set to `value`, created on first use.
  public func set(_ name: String, help: String, labels: [(String, String)] = [], to value: Double) {
    let key = [name] + labels.flatMap { [$0.0, $0.1] }
    let gauge = gauges.withLock { gauges in
      if let gauge = gauges[key] { return gauge }
      let descriptor = MetricNameDescriptor(namespace: "nvmecsi", metricName: name, unitName: "", helpText: help)
      let gauge =
        labels.isEmpty
        ? registry.makeGauge(descriptor: descriptor) : registry.makeGauge(descriptor: descriptor, labels: labels)
      gauges[key] = gauge
      return gauge
    }
    gauge.set(value)
  }

  /// Drops a labelled gauge series (a volume that is gone).
  public func removeGauge(_ name: String, labels: [(String, String)]) {
    let key = [name] + labels.flatMap { [$0.0, $0.1] }
    if let gauge = gauges.withLock({ $0.removeValue(forKey: key) }) { registry.unregisterGauge(gauge) }
  }

  /// Runs before every scrape: sets the role's gauges from its current state.
  public func onScrape(_ refresh: @escaping @Sendable () async -> Void) {
    refreshers.withLock { $0.append(refresh) }
  }

  /// The text exposition (format 0.0.4), refreshed.
  public func exposition() async -> [UInt8] {
    let mine = refreshing.withLock { busy in
      defer { busy = true }
      return !busy
    }
    if mine {
      for refresh in refreshers.withLock({ $0 }) { await refresh() }
      refreshing.withLock { $0 = false }
    }
    recordProcess()
    return registry.emitToBuffer()
  }

  /// The standard process metrics (the names Prometheus client libraries use), from /proc.
  private func recordProcess() {
    func gauge(_ name: String, _ help: String, _ value: Double) {
      registry.makeGauge(descriptor: .init(metricName: name, unitName: "", helpText: help)).set(value)
    }
    let pageSize = Double(sysconf(Int32(_SC_PAGESIZE)))
    let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
    if let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    {
      // Fields after "(comm)": state is field 3; utime 14, stime 15, vsize 23, rss 24.
      let fields = stat[stat.index(after: close)...].split(separator: " ")
      func field(_ n: Int) -> Double { fields.count > n - 3 ? Double(fields[n - 3]) ?? 0 : 0 }
      gauge("process_cpu_seconds_total", "User and system CPU time spent, in seconds", (field(14) + field(15)) / ticks)
      gauge("process_virtual_memory_bytes", "Virtual memory size in bytes", field(23))
      gauge("process_resident_memory_bytes", "Resident memory size in bytes", field(24) * pageSize)
    }
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
    gauge("process_open_fds", "Number of open file descriptors", Double(fds))
    var limit = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 {
      gauge("process_max_fds", "Maximum number of open file descriptors", Double(limit.rlim_cur))
    }
    gauge(
      "process_start_time_seconds", "Start time of the process since the epoch, in seconds",
      started.timeIntervalSince1970)
  }
}
