import ArgumentParser
import CSIServer
import ControllerPlugin
import Logging
import NVMeCSICore
import NodePlugin
import ServiceLifecycle
import Synchronization
import TargetAgent

/// `--metrics-address`: Prometheus metrics over HTTP, off unless given.
struct MetricsOptions: ParsableArguments {
  @Option(help: "Serve Prometheus metrics at http://<host:port>/metrics (off when not given).")
  var metricsAddress: String?

  /// The metrics every RPC is counted in, and the HTTP service, when enabled.
  func make(logger: Logger) throws -> (metrics: DriverMetrics?, services: [any Service]) {
    guard let metricsAddress else { return (nil, []) }
    let address: HostPort
    do { address = try HostPort(parsing: metricsAddress) } catch {
      throw ValidationError("--metrics-address \(metricsAddress): \(error.message)")
    }
    let metrics = DriverMetrics()
    return (metrics, [MetricsServer(address: address, metrics: metrics, logger: logger)])
  }
}

extension DriverMetrics {
  /// The target's contents and capacity, from memory and one statfs.
  func observe(_ agent: TargetAgent) {
    onScrape { [self] in
      let stats = agent.statistics()
      set("target_volumes", help: "Volumes on this target", to: Double(stats.volumes))
      set(
        "target_quarantined_volumes", help: "Volumes moved aside at start, waiting for a person",
        to: Double(stats.quarantined))
      set("target_snapshots", help: "Snapshots on this target", to: Double(stats.snapshots))
      set("target_publications", help: "Volume-to-node grants (nvmet allowed hosts)", to: Double(stats.publications))
      set("target_published_hosts", help: "Distinct host NQNs with access to a volume here", to: Double(stats.hosts))
      set("target_provisioned_bytes", help: "Sum of the volumes' sizes", to: Double(stats.provisionedBytes))
      set("target_overcommit_ratio", help: "--overcommit-ratio", to: agent.overcommitRatio)
      if let info = try? await agent.info() {
        set("target_capacity_bytes", help: "Size of the store", to: Double(info.totalBytes))
        set("target_available_bytes", help: "Free space in the store", to: Double(info.availableBytes))
        set(
          "target_allocatable_bytes", help: "What new volumes may still take (free space and overcommit)",
          to: Double(info.allocatableBytes))
      }
    }
  }

  /// Which targets answer the controller.
  func observe(_ controller: ControllerService) {
    onScrape { [self] in
      for (name, info) in await controller.targetReport() {
        set(
          "controller_target_up", help: "1 when the target answers the controller", labels: [("target", name)],
          to: info == nil ? 0 : 1)
      }
    }
  }

  /// Staged volumes and the states of their NVMe controllers (paths).
  func observe(_ node: NodeService) {
    // Series of volumes no longer staged are dropped, not left at their last value.
    let previous = Mutex<Set<[String]>>([])
    onScrape { [self] in
      let volumes = node.stagedVolumePaths()
      set("node_staged_volumes", help: "Volumes staged on this node", to: Double(volumes.count))
      var current = Set<[String]>()
      for (volume, states) in volumes {
        for state in Set(states).union(["live"]) {
          current.insert([volume, state])
          set(
            "node_volume_paths",
            help: "NVMe controllers of a staged volume, by state (live, connecting, resetting, deleting)",
            labels: [("volume_id", volume), ("state", state)], to: Double(states.filter { $0 == state }.count))
        }
      }
      for gone in previous.withLock({ $0 }).subtracting(current) {
        removeGauge("node_volume_paths", labels: [("volume_id", gone[0]), ("state", gone[1])])
      }
      previous.withLock { $0 = current }
    }
  }
}
