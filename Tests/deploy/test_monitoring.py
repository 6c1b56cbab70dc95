"""(7) Metrics as deployed: every nvme-csi process of every installation serves them
(--metrics-address) on a port its container declares; host-network pods, which may
share a node, never use the same port; and components/monitoring's Services and
ServiceMonitors reach exactly the ports that serve metrics, each once."""

from __future__ import annotations

import collections
import copy

import pytest

import deploylib
from deploylib import (
    INSTALLATIONS, NAMESPACE, containers, find, flag_args, invocations, one, pod_spec,
)

SERVING_ROLES = ("controller", "node", "target")
COMPONENT = "components/monitoring"
OVERLAY = "overlays/monitoring"
# Sidecar images whose --http-endpoint serves no /metrics (only /healthz).
HEALTH_ONLY = {"registry.k8s.io/sig-storage/csi-node-driver-registrar"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _host_port(address: str) -> tuple[str, int] | None:
    """("$(POD_IP)", 9821) from "$(POD_IP):9821" ("" for ":8080"); None for a unix
    socket."""
    if address.startswith(("unix:", "/")):
        return None
    host, _, port = address.rpartition(":")
    assert port.isdigit(), f"{address} is not host:port"
    return host.strip("[]"), int(port)


def _servers(obj: dict) -> list[deploylib.Invocation]:
    """The long-running nvme-csi processes of a workload (not ctl probes)."""
    return [i for i in invocations(obj) if i.role in SERVING_ROLES and "Probe" not in i.where]


def _repo(image: str) -> str:
    return image.split("@")[0].rsplit(":", 1)[0]


def _declared(c: dict, port: int) -> dict | None:
    found = [p for p in c.get("ports", []) if p["containerPort"] == port]
    assert len(found) <= 1, f"{c['name']}: containerPort {port} declared twice"
    return found[0] if found else None


def _env_from_field(c: dict, name: str) -> str | None:
    for e in c.get("env", []):
        if e["name"] == name:
            return ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
    return None


def check_metrics_address(obj: dict) -> list[tuple[str, int]]:
    """Each nvme-csi process of the workload has one --metrics-address, on a TCP
    containerPort named `metrics` of its container, reachable from other pods: on
    the host network the node's own address ($(POD_IP) from status.podIP), never
    loopback. (container, port) of each."""
    spec = pod_spec(obj)
    found = []
    for inv in _servers(obj):
        values = inv.flags.get("--metrics-address", [])
        assert len(values) == 1, f"{inv.where}: expected one --metrics-address (metrics are off without it), got {values}"
        parsed = _host_port(values[0])
        assert parsed, f"{inv.where}: --metrics-address {values[0]} is not host:port"
        host, port = parsed
        assert host not in LOOPBACK, f"{inv.where}: --metrics-address {values[0]}: Prometheus cannot reach loopback"
        if spec.get("hostNetwork"):
            assert host == "$(POD_IP)", (
                f"{inv.where}: on the host network bind the node's address $(POD_IP), not {host!r} (every interface)")
        for var in deploylib.env_refs([values[0]]):
            assert _env_from_field(inv.container, var) == "status.podIP", (
                f"{inv.where}: $({var}) must be an env var from the downward API's status.podIP")
        p = _declared(inv.container, port)
        assert p and p.get("name") == "metrics" and p.get("protocol", "TCP") == "TCP", (
            f"{inv.where}: declare containerPort {port} as `metrics` (TCP), got {p}")
        found.append((inv.container["name"], port))
    return found


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_every_nvme_csi_process_serves_metrics_on_a_declared_port(installation, render):
    roles = set()
    for obj, _ in deploylib.workloads(render(installation)):
        check_metrics_address(obj)
        roles |= {i.role for i in _servers(obj)}
    assert roles == set(SERVING_ROLES), f"{installation} runs {sorted(roles)}"


def test_the_metrics_check_catches_a_missing_flag_or_port(render):
    ds = copy.deepcopy(one(render("base"), "DaemonSet", "nvme-csi-node"))
    c = deploylib.container(pod_spec(ds), "nvme-csi")
    c["ports"] = []
    with pytest.raises(AssertionError, match="declare containerPort"):
        check_metrics_address(ds)
    c["args"] = [a for a in c["args"] if not a.startswith("--metrics-address")]
    with pytest.raises(AssertionError, match="expected one --metrics-address"):
        check_metrics_address(ds)


# --- ports on the host network ---------------------------------------------------------


def _listening(c: dict, inv: deploylib.Invocation | None) -> dict[int, str]:
    """TCP ports a container listens on by its flags: port -> flag."""
    addresses: list[tuple[str, str]] = []
    if inv is not None:
        for flag in ("--listen", "--portal", "--metrics-address"):
            values = inv.flags.get(flag) or ([inv.value(flag)] if inv.value(flag) else [])
            addresses += [(flag, v) for v in values]
    elif not deploylib.is_driver_image(c["image"]):
        for flag in ("--http-endpoint", "--metrics-address"):
            addresses += [(flag, v) for v in flag_args(c).get(flag, [])]
        addresses += [("--health-port", f":{v}") for v in flag_args(c).get("--health-port", [])]
    out = {}
    for flag, value in addresses:
        parsed = _host_port(value)
        if parsed:
            out[parsed[1]] = flag
    return out


def check_host_ports(objects: list[dict]) -> dict[int, str]:
    """On the host network a port is the node's: every port a container listens on
    is declared (the scheduler then keeps other pods declaring it off the node), and
    no two host-network containers of the installation use one, since any two of
    its host-network pods may share a node (the node plugin runs on every node).
    port -> owner."""
    owners: dict[int, str] = {}
    for obj, spec in deploylib.workloads(objects):
        if not spec.get("hostNetwork"):
            continue
        servers = {i.container["name"]: i for i in _servers(obj)}
        for c in containers(spec):
            where = f"{obj['kind']}/{obj['metadata']['name']} {c['name']}"
            for port, flag in _listening(c, servers.get(c["name"])).items():
                assert _declared(c, port), f"{where}: listens on {port} ({flag}) without declaring it"
            for p in c.get("ports", []):
                port = p["containerPort"]
                assert p.get("hostPort", port) == port, f"{where}: hostPort {p['hostPort']} != containerPort {port}"
                assert port not in owners, f"{where}: host port {port} is also {owners[port]}'s"
                owners[port] = where
    return owners


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_host_network_pods_never_share_a_port(installation, render):
    owners = check_host_ports(render(installation))
    for ds in ("nvme-csi-node", "nvme-csi-target"):
        port = _host_port(deploylib.main_invocation(one(render(installation), "DaemonSet", ds))
                          .flags["--metrics-address"][0])[1]
        assert port in owners, f"{ds}: metrics port {port} not seen on the host network: {owners}"


def test_the_host_port_check_catches_a_collision(render):
    objects = copy.deepcopy(render("base"))
    node = pod_spec(one(objects, "DaemonSet", "nvme-csi-node"))
    c = deploylib.container(node, "nvme-csi")
    target_port = _host_port(deploylib.main_invocation(one(objects, "DaemonSet", "nvme-csi-target"))
                             .flags["--metrics-address"][0])[1]
    c["args"] = [a if not a.startswith("--metrics-address") else f"--metrics-address=$(POD_IP):{target_port}"
                 for a in c["args"]]
    with pytest.raises(AssertionError, match="without declaring it"):
        check_host_ports(objects)
    for p in c["ports"]:
        if p["name"] == "metrics":
            p["containerPort"] = target_port
    with pytest.raises(AssertionError, match=f"host port {target_port} is also"):
        check_host_ports(objects)


# --- components/monitoring -----------------------------------------------------------------


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _metrics_ports(objects: list[dict]) -> set[tuple[str, str, int]]:
    """(workload, container, port) of every port that serves /metrics off the node:
    nvme-csi's --metrics-address, and the sidecars' --http-endpoint unless on
    loopback or health-only."""
    ports = set()
    for obj, spec in deploylib.workloads(objects):
        name = obj["metadata"]["name"]
        ports |= {(name, c, port) for c, port in check_metrics_address(obj)}
        for c in containers(spec):
            if deploylib.is_driver_image(c["image"]) or _repo(c["image"]) in HEALTH_ONLY:
                continue
            for value in flag_args(c).get("--http-endpoint", []):
                host, port = _host_port(value)
                if host not in LOOPBACK:
                    ports.add((name, c["name"], port))
    return ports


def check_monitoring(objects: list[dict], component: list[dict]) -> collections.Counter:
    """The component's Services select one workload's pods and name ports its
    containers declare; its ServiceMonitors select those Services and scrape ports
    each of them has. How often each (workload, container, port) is scraped."""
    names = {(o["kind"], o["metadata"]["name"]) for o in component}
    services = [o for o in find(objects, "Service") if ("Service", o["metadata"]["name"]) in names]
    monitors = [o for o in find(objects, "ServiceMonitor") if ("ServiceMonitor", o["metadata"]["name"]) in names]
    assert services and monitors, "the monitoring component has no Services or no ServiceMonitors"
    # Service -> port name -> (workload, container, port)
    reaches: dict[str, dict[str, tuple[str, str, int]]] = {}
    for svc in services:
        label = f"Service/{svc['metadata']['name']}"
        assert svc["metadata"].get("namespace") == NAMESPACE, f"{label} is not in namespace {NAMESPACE}"
        spec = svc["spec"]
        assert spec.get("clusterIP") == "None", f"{label}: headless (Prometheus scrapes pods, not a cluster IP)"
        assert spec.get("publishNotReadyAddresses") is True, f"{label}: a pod that is not Ready still has metrics"
        selected = [(o, s) for o, s in deploylib.workloads(objects)
                    if o["metadata"].get("namespace") == NAMESPACE
                    and _matches({"matchLabels": spec["selector"]}, o["spec"]["template"]["metadata"]["labels"])]
        assert len(selected) == 1, f"{label} selects {len(selected)} workloads' pods, expected one"
        obj, pod = selected[0]
        reaches[svc["metadata"]["name"]] = {}
        for sp in spec["ports"]:
            declared = [(c, p) for c in containers(pod) for p in c.get("ports", []) if p.get("name") == sp["targetPort"]]
            assert len(declared) == 1, f"{label} port {sp['name']}: targetPort {sp['targetPort']} is declared {len(declared)} times"
            c, p = declared[0]
            assert p["containerPort"] == sp["port"] and sp.get("protocol", "TCP") == p.get("protocol", "TCP") == "TCP", (
                f"{label} port {sp['name']}: {sp['port']} reaches {c['name']}'s {p['containerPort']}")
            reaches[svc["metadata"]["name"]][sp["name"]] = (obj["metadata"]["name"], c["name"], p["containerPort"])
    scraped: collections.Counter = collections.Counter()
    for mon in monitors:
        label = f"ServiceMonitor/{mon['metadata']['name']}"
        assert mon["metadata"].get("namespace") == NAMESPACE, f"{label} is not in namespace {NAMESPACE}"
        assert "namespaceSelector" not in mon["spec"], f"{label}: its own namespace only (the Services')"
        chosen = [s for s in services if _matches(mon["spec"]["selector"], s["metadata"].get("labels", {}))]
        others = [s["metadata"]["name"] for s in find(objects, "Service") if s not in services
                  and _matches(mon["spec"]["selector"], s["metadata"].get("labels", {}))]
        assert chosen and not others, f"{label} selects {[s['metadata']['name'] for s in chosen]} and {others}"
        for e in mon["spec"]["endpoints"]:
            for svc in chosen:
                name = svc["metadata"]["name"]
                assert e["port"] in reaches[name], f"{label}: Service {name} has no port {e['port']}"
                assert e.get("path", "/metrics") == "/metrics", f"{label}: path {e.get('path')}"
                scraped[reaches[name][e["port"]]] += 1
    return scraped


def test_the_monitoring_component_scrapes_every_metrics_port_once(render):
    objects = render(OVERLAY)
    scraped = check_monitoring(objects, render(COMPONENT))
    expected = _metrics_ports(objects)
    assert set(scraped) == expected, (
        f"not scraped: {sorted(expected - set(scraped))}; scraped but serving no metrics: {sorted(set(scraped) - expected)}")
    twice = sorted(k for k, n in scraped.items() if n > 1)
    assert not twice, f"scraped more than once: {twice}"
    roles = {w for w, _, _ in scraped}
    assert roles == {"nvme-csi-controller", "nvme-csi-node", "nvme-csi-target"}, roles


def test_the_monitoring_check_catches_a_wrong_port(render):
    objects = copy.deepcopy(render(OVERLAY))
    svc = one(objects, "Service", "nvme-csi-target-metrics")
    svc["spec"]["ports"][0]["targetPort"] = "target-api"
    with pytest.raises(AssertionError, match="reaches"):
        check_monitoring(objects, render(COMPONENT))


def test_the_overlay_is_base_plus_the_component(render):
    key = lambda o: (o["kind"], o["metadata"]["name"])
    base = {key(o): o for o in render("base")}
    overlay = {key(o): o for o in render(OVERLAY)}
    added = {key(o) for o in render(COMPONENT)}
    assert overlay.keys() == base.keys() | added and not base.keys() & added
    assert all(overlay[k] == base[k] for k in base), "overlays/monitoring changes base's objects"


def test_the_component_composes_with_cert_manager(render):
    objects = deploylib.render_overlay({"resources": ["{deploy}/base"], "components": [
        "{deploy}/components/cert-manager", "{deploy}/components/monitoring"]})
    assert find(objects, "Certificate") and find(objects, "ServiceMonitor")
    check_monitoring(objects, render(COMPONENT))
