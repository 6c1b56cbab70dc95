"""(3) The manifests agree with the nvme-csi binary and with themselves: the driver
name, the socket paths, every flag passed to nvme-csi (it must be in that role's
--help), the host paths each role needs, the sidecars' arguments, image pins,
resources and RBAC."""

from __future__ import annotations

import copy
import os
import re

import pytest
import yaml

import deploylib
from deploylib import (
    DRIVER, INSTALLATIONS, NAMESPACE, STORAGE_NODE_LABEL,
    container, containers, expanded_flag, find, flag_args, invocations, is_driver_image, kubelet_dir,
    main_invocation, mount_for_path, one, pod_spec, unix_path, volume,
)
from test_render import KUSTOMIZATIONS

EXAMPLE_SETS = ["examples", "examples/expansion"]

# Logging flags every sidecar gets from k8s.io/component-base/logs (logsapi.AddFlags).
_LOGGING = {"--v", "--vmodule", "--logging-format", "--log-flush-frequency"}
# Flags of csi-lib-utils' standardflags.RegisterCommonFlags (+ AddAutomaxprocs), shared
# by the four controller sidecars.
_COMMON = {
    "--version", "--kubeconfig", "--csi-address", "--leader-election", "--leader-election-namespace",
    "--leader-election-lease-duration", "--leader-election-renew-deadline", "--leader-election-retry-period",
    "--leader-election-labels", "--kube-api-qps", "--kube-api-burst", "--http-endpoint", "--metrics-address",
    "--metrics-path", "--automaxprocs",
}

# Sidecars: image repository -> the release pinned, the flags that release accepts and
# the feature gates it still has that are not GA (a GA gate is always on, and is
# removed in a later release: don't set it). Read from each project's source at that
# tag (cmd/<name>/main.go or csi-provisioner.go, pkg/features/features.go, vendored
# csi-lib-utils standardflags). Bumping a pin means re-reading them: this test fails
# until the table names the new release.
SIDECARS = {
    "registry.k8s.io/sig-storage/csi-provisioner": ("v6.3.0", _COMMON | _LOGGING | {
        "--master", "--volume-name-prefix", "--volume-name-uuid-length", "--retry-interval-start",
        "--retry-interval-max", "--worker-threads", "--cloning-protection-threads",
        "--snapshot-orphan-sweep-interval", "--capacity-threads", "--timeout", "--strict-topology",
        "--immediate-topology", "--extra-create-metadata", "--enable-pprof", "--default-fstype",
        "--kube-api-capacity-qps", "--kube-api-capacity-burst", "--enable-capacity",
        "--capacity-for-immediate-binding", "--capacity-poll-interval", "--capacity-ownerref-level",
        "--node-deployment", "--node-deployment-immediate-binding", "--node-deployment-base-delay",
        "--node-deployment-max-delay", "--controller-publish-readonly", "--prevent-volume-mode-conversion",
        "--feature-gates",
    }, {"CrossNamespaceVolumeDataSource", "ReleaseLeaderElectionOnExit"}),
    "registry.k8s.io/sig-storage/csi-attacher": ("v4.12.0", _COMMON | _LOGGING | {
        "--resync", "--timeout", "--retry-interval-start", "--retry-interval-max", "--worker-threads",
        "--max-entries", "--max-grpc-log-length", "--reconcile-sync", "--default-fstype", "--feature-gates",
    }, {"ReleaseLeaderElectionOnExit"}),
    "registry.k8s.io/sig-storage/csi-snapshotter": ("v8.6.0", _COMMON | _LOGGING | {
        "--resync-period", "--snapshot-name-prefix", "--snapshot-name-uuid-length", "--worker-threads",
        "--timeout", "--extra-create-metadata", "--retry-interval-start", "--retry-interval-max",
        "--node-deployment", "--groupsnapshot-name-prefix", "--groupsnapshot-name-uuid-length",
        "--feature-gates",
    }, {"CSIVolumeGroupSnapshot", "ReleaseLeaderElectionOnExit"}),
    "registry.k8s.io/sig-storage/csi-resizer": ("v2.2.1", _COMMON | _LOGGING | {
        "--master", "--resync-period", "--workers", "--extra-modify-metadata", "--timeout",
        "--retry-interval-start", "--retry-interval-max", "--handle-volume-inuse-error", "--feature-gates",
    }, {"AnnotateFsResize", "ReleaseLeaderElectionOnExit"}),
    "registry.k8s.io/sig-storage/livenessprobe": ("v2.19.0", _LOGGING | {
        "--probe-timeout", "--csi-address", "--health-port", "--metrics-address", "--http-endpoint",
        "--metrics-path", "--automaxprocs",
    }, set()),
    "registry.k8s.io/sig-storage/csi-node-driver-registrar": ("v2.17.0", _LOGGING | {
        "--connection-timeout", "--timeout", "--csi-address", "--plugin-registration-path",
        "--kubelet-registration-path", "--health-port", "--http-endpoint", "--version", "--mode",
        "--enable-pprof", "--automaxprocs",
    }, set()),
}
# Deprecated flags of those releases: accepted, but not to be used.
DEPRECATED_FLAGS = {"--metrics-address", "--health-port", "--connection-timeout", "--mode"}
SIDECAR_MAJORS = {repo: int(release[0][1:].split(".")[0]) for repo, release in SIDECARS.items()}
CONTROLLER_SIDECARS = ["csi-provisioner", "csi-attacher", "csi-snapshotter", "csi-resizer"]


def _repo(image: str) -> str:
    return image.split("@")[0].rsplit(":", 1)[0]


def _tag(image: str) -> str:
    return image.split("@")[0].rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""


def _sidecar(spec: dict, repo: str) -> dict:
    found = [c for c in containers(spec) if _repo(c["image"]) == repo]
    assert len(found) == 1, f"expected one {repo} container, found {len(found)}"
    return found[0]


def _env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


# --- driver name ---------------------------------------------------------------------


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_driver_name_agrees_everywhere(installation, render):
    objects = render(installation)
    csidriver = one(objects, "CSIDriver")
    assert csidriver["metadata"]["name"] == DRIVER
    serving = [i for o in objects for i in invocations(o) if i.role in ("controller", "node")]
    assert {i.role for i in serving} == {"controller", "node"}
    for inv in serving:
        assert inv.value("--driver-name") == DRIVER, f"{inv.where}: --driver-name is {inv.value('--driver-name')}"
    registrar = container(pod_spec(one(objects, "DaemonSet", "nvme-csi-node")), "node-driver-registrar")
    path = expanded_flag(registrar, "--kubelet-registration-path")[0]
    plugins = f"{kubelet_dir(installation)}/plugins"
    assert path.startswith(f"{plugins}/{DRIVER}/"), f"registration path {path} is not under the driver's plugin dir"


def test_examples_name_the_driver(render):
    objects = render("examples")
    classes = find(objects, "StorageClass")
    assert classes, "the examples have no StorageClass"
    for sc in classes:
        assert sc["provisioner"] == DRIVER, f"StorageClass {sc['metadata']['name']}: provisioner {sc['provisioner']}"
    for vsc in find(objects, "VolumeSnapshotClass"):
        assert vsc["driver"] == DRIVER, f"VolumeSnapshotClass {vsc['metadata']['name']}: driver {vsc['driver']}"


# --- flags ---------------------------------------------------------------------------


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_every_nvme_csi_flag_is_in_its_roles_help(installation, render):
    """invocations() parses each command line against `nvme-csi <role> --help` and
    fails on a flag the role does not have; here: every role is run, required flags
    are given, and every $(VAR) is an env var of that container."""
    objects = render(installation)
    found = [i for o in objects for i in invocations(o)]
    roles = {i.role for i in found}
    assert {"controller", "node", "target"} <= roles, f"roles run: {sorted(roles)}"
    for inv in found:
        missing = deploylib.role_help(inv.role).required - set(inv.flags)
        assert not missing, f"{inv.where}: nvme-csi {inv.role} needs {sorted(missing)}"
        assert not inv.positionals, f"{inv.where}: unexpected arguments {inv.positionals}"
        undefined = deploylib.env_refs(inv.argv) - set(_env(inv.container))
        assert not undefined, f"{inv.where}: $({', '.join(sorted(undefined))}) is not an env var of the container"


def test_the_flag_check_rejects_an_unknown_flag():
    bad = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "nvme-csi", "image": f"{deploylib.DRIVER_IMAGE}:0.1.0", "args": ["node", "--statedir=/x"]}]}}
    with pytest.raises(AssertionError, match="has no flag --statedir"):
        invocations(bad)


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_env_references_in_all_containers_resolve(installation, render):
    for obj, spec in deploylib.workloads(render(installation)):
        for c in containers(spec):
            words = list(c.get("command", [])) + list(c.get("args", []))
            undefined = deploylib.env_refs(words) - set(_env(c))
            assert not undefined, f"{obj['metadata']['name']}/{c['name']}: $({', '.join(sorted(undefined))}) undefined"


# --- sockets -------------------------------------------------------------------------


def _check_socket_dir(obj: dict) -> tuple[str, dict]:
    """The nvme-csi endpoint's socket path, and the volume that holds it; every
    container of the pod that talks CSI must use the same socket on the same volume."""
    spec = pod_spec(obj)
    inv = main_invocation(obj)
    endpoint = inv.value("--endpoint")
    assert endpoint.startswith("unix://"), f"{inv.where}: --endpoint {endpoint} is not a unix socket"
    sock = unix_path(endpoint)
    m = mount_for_path(inv.container, sock)
    assert m is not None, f"{inv.where}: socket {sock} is on no volume (sidecars cannot reach it)"
    assert os.path.dirname(sock) == m["mountPath"].rstrip("/"), f"socket {sock} not directly in {m['mountPath']}"
    vol = volume(spec, m["name"])
    for c in containers(spec):
        if c is inv.container:
            continue
        addresses = flag_args(c).get("--csi-address", [])
        for a in addresses:
            assert unix_path(deploylib.expand(a, {})) == sock, f"{c['name']}: --csi-address {a}, driver socket {sock}"
            cm = mount_for_path(c, sock)
            assert cm is not None and cm["name"] == m["name"] and cm["mountPath"] == m["mountPath"], (
                f"{c['name']} does not mount volume {m['name']} at {m['mountPath']}")
    # Exec probes talk to the same socket.
    for probe in invocations(obj):
        if probe.role.startswith("ctl"):
            assert unix_path(probe.value("--endpoint")) == sock, f"{probe.where}: --endpoint is not {sock}"
    return sock, vol


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_controller_socket_is_shared_with_every_sidecar(installation, render):
    deploy = one(render(installation), "Deployment", "nvme-csi-controller")
    sock, vol = _check_socket_dir(deploy)
    assert "emptyDir" in vol, "the controller socket belongs in an emptyDir"
    spec = pod_spec(deploy)
    talkers = [c["name"] for c in containers(spec) if "--csi-address" in flag_args(c)]
    assert sorted(talkers) == sorted(CONTROLLER_SIDECARS + ["liveness-probe"]), talkers


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_node_socket_is_where_kubelet_and_the_registrar_look(installation, render):
    ds = one(render(installation), "DaemonSet", "nvme-csi-node")
    spec = pod_spec(ds)
    sock, vol = _check_socket_dir(ds)
    plugin_dir = f"{kubelet_dir(installation)}/plugins/{DRIVER}"
    assert vol.get("hostPath", {}).get("path") == plugin_dir, f"socket volume must be hostPath {plugin_dir}"
    registrar = container(spec, "node-driver-registrar")
    assert expanded_flag(registrar, "--kubelet-registration-path") == [f"{plugin_dir}/{os.path.basename(sock)}"], (
        "kubelet dials the registration path on the host: it must be the host path of the driver's socket")
    reg = mount_for_path(registrar, "/registration")
    assert reg is not None, "the registrar needs kubelet's registration dir at /registration"
    assert volume(spec, reg["name"]).get("hostPath", {}).get("path") == f"{kubelet_dir(installation)}/plugins_registry"
    talkers = sorted(c["name"] for c in containers(spec) if "--csi-address" in flag_args(c))
    assert talkers == ["liveness-probe", "node-driver-registrar"], talkers


@pytest.mark.parametrize("installation", INSTALLATIONS)
@pytest.mark.parametrize("workload", [("Deployment", "nvme-csi-controller"), ("DaemonSet", "nvme-csi-node")])
def test_readiness_probe_reaches_the_livenessprobe_sidecar(installation, workload, render):
    obj = one(render(installation), *workload)
    spec = pod_spec(obj)
    probe = container(spec, "liveness-probe")
    endpoint = flag_args(probe)["--http-endpoint"][0]
    host, _, port = endpoint.rpartition(":")
    ready = container(spec, "nvme-csi")["readinessProbe"]["httpGet"]
    port_value = ready["port"]
    if isinstance(port_value, str):  # a named port
        port_value = next(p["containerPort"] for p in container(spec, "nvme-csi").get("ports", []) if p["name"] == port_value)
    assert str(port_value) == port, f"readiness probe port {port_value}, livenessprobe listens on {endpoint}"
    assert ready["path"] == "/healthz"
    if spec.get("hostNetwork"):
        # On the host network the probe must not listen on every host address.
        assert host == "127.0.0.1" and ready.get("host") == "127.0.0.1", (
            f"host-network livenessprobe should listen on loopback: {endpoint}, probe host {ready.get('host')}")


# --- what each role needs from the host ------------------------------------------------


# Talos keeps the store and the state in user volumes (/var/mnt/<name>), with base's
# paths inside the containers; test_talos.py matches the names with deploy/talos.
TALOS_USER_VOLUMES = "/var/mnt/"


def _is_host_dir(installation: str, host_path: str, base_path: str) -> bool:
    """Whether host_path is where the installation keeps what base keeps in base_path."""
    if installation == "overlays/talos":
        name = host_path.removeprefix(TALOS_USER_VOLUMES)
        return host_path.startswith(TALOS_USER_VOLUMES) and bool(name) and "/" not in name
    return host_path == base_path


def _host_path_of(spec: dict, c: dict, path: str) -> dict:
    m = mount_for_path(c, path)
    assert m is not None, f"{c['name']}: {path} is on no volume"
    v = volume(spec, m["name"])
    assert "hostPath" in v, f"{c['name']}: {path} is on volume {m['name']}, not a hostPath"
    return {"mount": m, "volume": v}


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_node_plugin_has_the_host_paths_it_needs(installation, render):
    ds = one(render(installation), "DaemonSet", "nvme-csi-node")
    spec = pod_spec(ds)
    inv = main_invocation(ds)
    c = inv.container
    assert spec.get("hostNetwork") is True, "NVMe/TCP connects from the host's network"
    assert c.get("securityContext", {}).get("privileged") is True
    kd = kubelet_dir(installation)
    kubelet = _host_path_of(spec, c, kd)
    assert kubelet["volume"]["hostPath"]["path"] == kd
    assert kubelet["mount"]["mountPath"] == kd, "kubelet hands the plugin host paths: mount its dir at the same path"
    assert kubelet["mount"].get("mountPropagation") == "Bidirectional", "staging mounts must reach the host"
    for path in ("/dev", "/sys"):
        hp = _host_path_of(spec, c, path)
        assert hp["volume"]["hostPath"]["path"] == path and hp["mount"]["mountPath"] == path
    config_dir = inv.value("--nvme-config-dir")
    hp = _host_path_of(spec, c, config_dir)
    assert hp["mount"]["mountPath"] == config_dir and hp["volume"]["hostPath"]["path"] == "/etc/nvme"
    assert hp["mount"].get("readOnly") is True, "/etc/nvme is the host's: read it, never write it"
    state = inv.value("--state-dir")
    hp = _host_path_of(spec, c, state)
    assert hp["mount"]["mountPath"] == state, "the state dir must be a host directory of its own"
    assert _is_host_dir(installation, hp["volume"]["hostPath"]["path"], "/var/lib/nvme-csi"), (
        f"state dir on host path {hp['volume']['hostPath']['path']}")
    # Topology: every segment is key=value, and $(NODE_NAME) is the node's name.
    for seg in inv.flags.get("--topology", []):
        key, eq, value = seg.partition("=")
        assert eq and key and value, f"--topology {seg} is not key=value"
        assert key.startswith("topology.nvme.csi.dev/"), key
    env = _env(c)
    if "NODE_NAME" in env:
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert inv.flags.get("--topology"), (
        "external-provisioner (Topology is GA: always on) needs a topology key on every node "
        "(else WaitForFirstConsumer volumes fail: no topology key found on CSINode)")


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_target_runs_on_storage_nodes_with_configfs_and_its_store(installation, render):
    ds = one(render(installation), "DaemonSet", "nvme-csi-target")
    spec = pod_spec(ds)
    inv = main_invocation(ds)
    c = inv.container
    assert spec.get("nodeSelector") == {STORAGE_NODE_LABEL: "true"}
    assert spec.get("hostNetwork") is True
    assert c.get("securityContext", {}).get("privileged") is True
    env = _env(c)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert inv.value("--listen") == "$(POD_IP):7600"
    assert inv.flags.get("--portal") == ["$(POD_IP):4420"]
    store = inv.value("--store")
    assert store.startswith("file:"), store
    store_dir = store[len("file:"):]
    hp = _host_path_of(spec, c, store_dir)
    assert hp["mount"]["mountPath"] == store_dir
    assert _is_host_dir(installation, hp["volume"]["hostPath"]["path"], store_dir), (
        "mount the store at its host path, so the paths nvmet shows in configfs are the host's "
        f"(Talos: a user volume), not {hp['volume']['hostPath']['path']}")
    # configfs is the host's, at the host's path (where the host has not mounted it,
    # the target mounts it there itself).
    configfs = inv.value("--configfs")
    hp = _host_path_of(spec, c, configfs)
    assert hp["volume"]["hostPath"]["path"] == "/sys/kernel/config" and hp["mount"]["mountPath"] == configfs
    ports = {p["containerPort"] for p in c.get("ports", [])}
    assert {7600, 4420} <= ports, f"declare the target API and NVMe/TCP ports, got {ports}"
    assert c["livenessProbe"]["tcpSocket"]["port"] == 7600


def test_talos_target_runs_bases_container(render):
    """No shell wrapper on Talos: Talos 1.10+ mounts configfs, and the target mounts it
    itself where a host has not. The container is base's: the image's entrypoint with
    base's arguments, flag for flag (a flag added to base, like --name or
    --metrics-address, reaches Talos), and base's mounts."""
    base_ds = one(render("base"), "DaemonSet", "nvme-csi-target")
    talos_ds = one(render("overlays/talos"), "DaemonSet", "nvme-csi-target")
    base_c = container(pod_spec(base_ds), "nvme-csi")
    talos_c = container(pod_spec(talos_ds), "nvme-csi")
    assert "command" not in talos_c, f"overlays/talos replaces the entrypoint: {talos_c['command']}"
    assert talos_c.get("args") == base_c.get("args"), f"overlays/talos runs {talos_c.get('args')}, base {base_c.get('args')}"
    base, talos = main_invocation(base_ds), main_invocation(talos_ds)
    assert talos.where.endswith("(args)"), talos.where
    assert (talos.role, talos.flags, talos.positionals) == (base.role, base.flags, base.positionals)
    assert talos_c == base_c, "the Talos target container differs from base's (only host paths may)"
    assert volume(pod_spec(talos_ds), "configfs") == volume(pod_spec(base_ds), "configfs")


def _normalized(objects: list[dict], blank: dict[tuple[str, str], set[str]]) -> dict:
    """Objects by (kind, namespace, name), with the named volumes' hostPaths blanked
    and volumes sorted (a strategic-merge patch reorders them)."""
    out = {}
    for o in objects:
        o = copy.deepcopy(o)
        key = (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        spec = pod_spec(o)
        if spec is not None:
            for v in spec.get("volumes", []):
                if v["name"] in blank.get((o["kind"], o["metadata"]["name"]), set()):
                    v["hostPath"] = "<changed>"
            spec["volumes"] = sorted(spec.get("volumes", []), key=lambda v: v["name"])
        out[key] = o
    return out


# What overlays/talos changes, and nothing else: docs/talos.md lists these.
TALOS_CHANGED_HOST_PATHS = {
    ("DaemonSet", "nvme-csi-node"): {"etc-nvme", "state"},
    ("DaemonSet", "nvme-csi-target"): {"store"},
}


def test_talos_overlay_changes_only_three_host_paths(render):
    base = _normalized(render("base"), TALOS_CHANGED_HOST_PATHS)
    talos = _normalized(render("overlays/talos"), TALOS_CHANGED_HOST_PATHS)
    assert sorted(talos) == sorted(base)
    differ = [k for k in base if base[k] != talos[k]]
    assert not differ, f"overlays/talos changes more than the host paths {TALOS_CHANGED_HOST_PATHS}: {differ}"


def test_talos_overlay_host_paths(render):
    """/etc/nvme unchecked (kubelet's container does not see it); store and state in
    /var/mnt, which kubelet sees: type Directory, so a node without the user volume
    does not start the pod on an empty directory."""
    node = pod_spec(one(render("overlays/talos"), "DaemonSet", "nvme-csi-node"))
    target = pod_spec(one(render("overlays/talos"), "DaemonSet", "nvme-csi-target"))
    assert volume(node, "etc-nvme")["hostPath"] == {"path": "/etc/nvme", "type": ""}
    for v in (volume(node, "state"), volume(target, "store")):
        assert v["hostPath"]["path"].startswith(TALOS_USER_VOLUMES), v
        assert v["hostPath"]["type"] == "Directory", v
    base = pod_spec(one(render("base"), "DaemonSet", "nvme-csi-node"))
    assert volume(base, "etc-nvme")["hostPath"]["type"] == "DirectoryOrCreate"


# --- controller --------------------------------------------------------------------------


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_controller_sidecars_are_configured(installation, render):
    objects = render(installation)
    deploy = one(objects, "Deployment", "nvme-csi-controller")
    spec = pod_spec(deploy)
    assert deploy["spec"]["replicas"] == 2, "two replicas with leader election"
    prov = flag_args(container(spec, "csi-provisioner"))
    assert "--extra-create-metadata" in prov
    assert prov.get("--default-fstype") == ["ext4"]
    for name in CONTROLLER_SIDECARS:
        flags = flag_args(container(spec, name))
        assert "--leader-election" in flags, f"{name} needs --leader-election"
        ns = flags.get("--leader-election-namespace", [NAMESPACE])[0]
        assert ns == NAMESPACE
    role = one(objects, "Role", "nvme-csi-leader-election")
    assert any("leases" in r["resources"] and "coordination.k8s.io" in r["apiGroups"] for r in role["rules"])
    sa = spec["serviceAccountName"]
    binding = one(objects, "RoleBinding", "nvme-csi-leader-election")
    assert {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE} in binding["subjects"]


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_controller_mounts_the_targets_file(installation, render):
    data, _ = deploylib.targets_file(render(installation))
    names = [t["name"] for t in data["targets"]]
    assert names and len(set(names)) == len(names)
    for t in data["targets"]:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", t["name"]), f"target name {t['name']} is not a DNS label"
        host, _, port = t["address"].rpartition(":")
        assert host and port == "7600", f"target {t['name']}: address {t['address']} should be <storage node IP>:7600"


# --- objects and their fields --------------------------------------------------------------


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_csidriver_and_namespace(installation, render):
    objects = render(installation)
    spec = one(objects, "CSIDriver", DRIVER)["spec"]
    assert spec["attachRequired"] is True
    assert spec["podInfoOnMount"] is False
    assert spec["volumeLifecycleModes"] == ["Persistent"]
    assert spec["fsGroupPolicy"] == "File"
    assert spec["requiresRepublish"] is False
    # storageCapacity needs external-provisioner --enable-capacity; keep them together.
    prov = flag_args(container(pod_spec(one(objects, "Deployment", "nvme-csi-controller")), "csi-provisioner"))
    assert spec["storageCapacity"] == ("--enable-capacity" in prov)
    labels = one(objects, "Namespace", NAMESPACE)["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels.get(f"pod-security.kubernetes.io/{mode}") == "privileged"


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_images_are_pinned(installation, render, nvme_csi):
    version = deploylib.binary_version()
    seen = set()
    for obj, spec in deploylib.workloads(render(installation)):
        for c in containers(spec):
            image = c["image"]
            tag = _tag(image)
            assert tag and tag != "latest", f"{c['name']}: image {image} is not pinned to a tag"
            if is_driver_image(image):
                assert tag == version, f"driver image tag {tag}, binary version {version}"
                seen.add(deploylib.DRIVER_IMAGE)
                continue
            repo = _repo(image)
            assert repo in SIDECAR_MAJORS, f"{c['name']}: unexpected image {image}"
            m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
            assert m, f"{image}: pin an exact vX.Y.Z release"
            assert int(m.group(1)) == SIDECAR_MAJORS[repo], f"{image}: expected major v{SIDECAR_MAJORS[repo]}"
            assert tag == SIDECARS[repo][0], (
                f"{image}: SIDECARS describes {SIDECARS[repo][0]}: re-read that release's flags and RBAC, then update it")
            seen.add(repo)
    assert seen == set(SIDECAR_MAJORS) | {deploylib.DRIVER_IMAGE}, f"images used: {sorted(seen)}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_container_has_requests_and_limits(kustomization, render):
    for obj, spec in deploylib.workloads(render(kustomization)):
        for c in containers(spec):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    assert r in res.get(kind, {}), f"{obj['kind']}/{obj['metadata']['name']} {c['name']}: no {kind}.{r}"


# --- sidecar flags, endpoints, scheduling ----------------------------------------------------


def _sidecars(spec: dict) -> list[tuple[str, dict]]:
    return [(_repo(c["image"]), c) for c in containers(spec) if _repo(c["image"]) in SIDECARS]


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_sidecar_flags_exist_in_the_pinned_release(installation, render):
    for obj, spec in deploylib.workloads(render(installation)):
        for repo, c in _sidecars(spec):
            release, known, gates = SIDECARS[repo]
            where = f"{obj['metadata']['name']}/{c['name']} ({repo.rsplit('/', 1)[1]} {release})"
            names = [a.partition("=")[0] for a in c.get("args", [])]
            assert all(a.startswith("--") for a in c.get("args", [])), f"{where}: write every argument as --flag[=value]"
            unknown = sorted(set(names) - known)
            assert not unknown, f"{where}: no such flag {unknown}"
            deprecated = sorted(set(names) & DEPRECATED_FLAGS)
            assert not deprecated, f"{where}: deprecated {deprecated}"
            dupes = sorted({n for n in names if names.count(n) > 1})
            assert not dupes, f"{where}: given twice: {dupes}"
            for value in flag_args(c).get("--feature-gates", []):
                for pair in value.split(","):
                    gate = pair.partition("=")[0]
                    assert gate in gates, (
                        f"{where}: --feature-gates {gate}: not a gate of this release, or GA (always on; "
                        f"removed in a later release). Settable: {sorted(gates)}")


def test_the_flag_table_rejects_the_old_topology_gate():
    release, known, gates = SIDECARS["registry.k8s.io/sig-storage/csi-provisioner"]
    assert "Topology" not in gates and "--feature-gates" in known


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_every_sidecar_serves_its_endpoint_on_a_declared_port(installation, render):
    """--http-endpoint on every sidecar (metrics; leader-election health of the
    controller's; /healthz of livenessprobe and the registrar), each on a port of its
    own that its container declares; loopback only on the host network."""
    for obj, spec in deploylib.workloads(render(installation)):
        sidecars = _sidecars(spec)
        if not sidecars:
            continue
        ports: dict[int, str] = {}
        for repo, c in sidecars:
            where = f"{obj['metadata']['name']}/{c['name']}"
            endpoint = flag_args(c).get("--http-endpoint")
            assert endpoint, f"{where}: no --http-endpoint (metrics and health are off)"
            host, _, port = endpoint[0].rpartition(":")
            assert port.isdigit(), f"{where}: --http-endpoint {endpoint[0]}"
            port = int(port)
            assert port not in ports, f"{where}: port {port} is also {ports[port]}'s"
            ports[port] = c["name"]
            if spec.get("hostNetwork"):
                assert host == "127.0.0.1", f"{where}: on the host network listen on loopback, not {endpoint[0]}"
            declared = [p for p in c.get("ports", []) if p["containerPort"] == port]
            assert len(declared) == 1 and declared[0].get("protocol", "TCP") == "TCP" and declared[0].get("name"), (
                f"{where}: declare containerPort {port} (named, TCP) in this container")
            if "--leader-election" in flag_args(c):
                probe = (c.get("livenessProbe") or {}).get("httpGet") or {}
                assert probe.get("path") == "/healthz/leader-election", f"{where}: probe /healthz/leader-election"
                assert probe.get("port") in (port, declared[0]["name"]), f"{where}: the probe must use port {port}"
        names = [p["name"] for c in containers(spec) for p in c.get("ports", []) if p.get("name")]
        assert len(names) == len(set(names)), f"{obj['metadata']['name']}: port names repeat: {names}"


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_controller_replicas_spread_over_nodes_and_drain_one_at_a_time(installation, render):
    objects = render(installation)
    deploy = one(objects, "Deployment", "nvme-csi-controller")
    spec = pod_spec(deploy)
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    replicas = deploy["spec"]["replicas"]
    assert replicas >= 2
    assert spec.get("priorityClassName") == "system-cluster-critical"
    terms = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname" and _matches(t["labelSelector"], labels) for t in terms), (
        "controller replicas need required anti-affinity on kubernetes.io/hostname against each other")
    pdbs = [p for p in find(objects, "PodDisruptionBudget") if _matches(p["spec"]["selector"], labels)]
    assert len(pdbs) == 1, f"expected one PodDisruptionBudget for the controller, found {len(pdbs)}"
    budget = pdbs[0]["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == replicas - 1, budget
    assert pdbs[0]["metadata"]["namespace"] == deploy["metadata"]["namespace"]


def _tolerates(tolerations: list[dict], taint: dict) -> bool:
    """Kubernetes' rule: does any toleration match the taint (key, value, effect)?"""
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        op = t.get("operator", "Equal")
        if not t.get("key"):
            if op == "Exists":
                return True
            continue
        if t["key"] != taint["key"]:
            continue
        if op == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


EFFECTS = ["NoSchedule", "PreferNoSchedule", "NoExecute"]


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_daemonsets_are_node_critical_and_run_on_tainted_nodes(installation, render):
    objects = render(installation)
    node = pod_spec(one(objects, "DaemonSet", "nvme-csi-node"))
    target = pod_spec(one(objects, "DaemonSet", "nvme-csi-target"))
    for spec in (node, target):
        assert spec.get("priorityClassName") == "system-node-critical"
    # The node plugin must run wherever a pod may mount a volume: every taint.
    for taint in [{"key": "anything.example.com/x", "value": "y", "effect": e} for e in EFFECTS] + [
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]:
        assert _tolerates(node.get("tolerations", []), taint), f"node plugin does not tolerate {taint}"
    storage = [{"key": STORAGE_NODE_LABEL, "value": v, "effect": e} for e in EFFECTS for v in ("true", "", "x")]
    control_plane = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    for taint in storage + [control_plane]:
        assert _tolerates(target.get("tolerations", []), taint), f"target does not tolerate {taint}"
    assert not _tolerates(target.get("tolerations", []), {"key": "other.example.com/x", "effect": "NoSchedule"}), (
        "the target tolerates taints it has no business with")


def test_tolerations_are_replaced_by_an_overlay_patch():
    """What the manifests' comments promise: one strategic-merge patch replaces a
    DaemonSet's tolerations (the list is not merged)."""
    mine = [{"key": "dedicated", "operator": "Equal", "value": "storage", "effect": "NoSchedule"}]
    patches = [{"patch": yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": ds, "namespace": NAMESPACE},
        "spec": {"template": {"spec": {"tolerations": mine}}}})} for ds in ("nvme-csi-node", "nvme-csi-target")]
    objects = deploylib.render_overlay({"resources": ["{deploy}/base"], "patches": patches})
    for ds in ("nvme-csi-node", "nvme-csi-target"):
        assert pod_spec(one(objects, "DaemonSet", ds))["tolerations"] == mine


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_node_reads_the_hosts_machine_id(installation, render):
    spec = pod_spec(one(render(installation), "DaemonSet", "nvme-csi-node"))
    hp = _host_path_of(spec, container(spec, "nvme-csi"), "/etc/machine-id")
    assert hp["mount"]["mountPath"] == "/etc/machine-id" and hp["mount"].get("readOnly") is True
    assert hp["volume"]["hostPath"]["path"] == "/etc/machine-id"


# --- kubelet's directory ----------------------------------------------------------------------


def _strings(node, path=""):
    """Every string in an object, with its path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            key = v.get("name", i) if isinstance(v, dict) else i
            yield from _strings(v, f"{path}[{key}]")
    elif isinstance(node, str):
        yield path, node


def _kubelet_paths_moved(base: list[dict], moved: list[dict], new_dir: str) -> list[str]:
    """Compare two renderings that should differ only in kubelet's directory: every
    string of `moved` is base's with each /var/lib/kubelet replaced by new_dir (so
    none is left behind). The paths of the strings that changed."""
    old_dir = deploylib.KUBELET_DIR
    key = lambda o: (o["kind"], o["metadata"]["name"])
    before = {key(o): o for o in base}
    after = {key(o): o for o in moved}
    assert before.keys() == after.keys(), sorted(set(before) ^ set(after))
    changed = []
    for k in before:
        a = dict(_strings(before[k]))
        b = dict(_strings(after[k]))
        assert a.keys() == b.keys(), f"{k}: fields differ beyond kubelet's directory: {sorted(set(a) ^ set(b))}"
        for path, value in a.items():
            expected = re.sub(re.escape(old_dir) + r"(?=/|$)", new_dir, value)
            assert b[path] == expected, f"{k} {path}: {b[path]!r}, expected {expected!r}"
            if value != b[path]:
                changed.append(f"{k[1]}{path}")
    return changed


# Where kubelet's directory must appear in the node DaemonSet (at least).
KUBELET_FIELDS = [
    "nvme-csi-node.spec.template.spec.volumes[kubelet-dir].hostPath.path",
    "nvme-csi-node.spec.template.spec.volumes[plugin-dir].hostPath.path",
    "nvme-csi-node.spec.template.spec.volumes[registration-dir].hostPath.path",
    "nvme-csi-node.spec.template.spec.containers[nvme-csi].volumeMounts[kubelet-dir].mountPath",
    "nvme-csi-node.spec.template.spec.containers[node-driver-registrar].env[DRIVER_REG_SOCK_PATH].value",
]


@pytest.mark.parametrize("installation", sorted(deploylib.KUBELET_DIRS))
def test_an_overlay_moves_every_kubelet_path(installation, render):
    changed = _kubelet_paths_moved(render("base"), render(installation), kubelet_dir(installation))
    assert sorted(changed) == sorted(KUBELET_FIELDS), changed


def test_the_kubelet_dir_component_takes_any_directory(render):
    """components/kubelet-dir with another value (microk8s'), as docs/operations.md
    tells users to write it."""
    new_dir = "/var/snap/microk8s/common/var/lib/kubelet"
    source = yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "nvme-csi-kubelet-dir", "annotations": {"config.kubernetes.io/local-config": "true"}},
        "data": {"path": new_dir}})
    objects = deploylib.render_overlay(
        {"resources": ["{deploy}/base", "kubelet-dir.yaml"], "components": ["{deploy}/components/kubelet-dir"]},
        {"kubelet-dir.yaml": source})
    changed = _kubelet_paths_moved(render("base"), objects, new_dir)
    assert sorted(changed) == sorted(KUBELET_FIELDS), changed
    assert not find(objects, "ConfigMap", "nvme-csi-kubelet-dir"), "the local-config source must not be applied"


def test_base_names_kubelets_directory_only_where_the_component_moves_it(render):
    found = sorted(f"{o['metadata']['name']}{path}" for o in render("base") for path, v in _strings(o)
                   if re.search(re.escape(deploylib.KUBELET_DIR) + r"(?=/|$)", v))
    assert found == sorted(KUBELET_FIELDS), (
        f"base names kubelet's directory in {found}: components/kubelet-dir must move each one")


# --- RBAC ---------------------------------------------------------------------------------

# What each sidecar needs, as its upstream RBAC file documents it for the release in
# SIDECARS: deploy/kubernetes/rbac.yaml of external-provisioner v6.3.0,
# external-attacher v4.12.0 and external-resizer v2.2.1, and
# deploy/kubernetes/csi-snapshotter/rbac-csi-snapshotter.yaml of external-snapshotter
# v8.6.0. (group, resource) -> verbs. Optional rules this driver does not use are left
# out: Secrets, CSIStorageCapacity (+ pods, replicasets for its owner), ReferenceGrants,
# group snapshots.
REQUIRED_RULES = {
    "csi-provisioner": {
        ("", "persistentvolumes"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "persistentvolumeclaims"): {"get", "list", "watch", "update"},
        ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
        ("", "events"): {"list", "watch", "create", "update", "patch"},
        # watch, update: the snapshot source-protection finalizer (v6.2.1+).
        ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list", "watch", "update"},
        ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list"},
        ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
        ("", "nodes"): {"get", "list", "watch"},
        ("storage.k8s.io", "volumeattachments"): {"get", "list", "watch"},
    },
    "csi-attacher": {
        ("", "persistentvolumes"): {"get", "list", "watch", "patch"},
        ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
        ("storage.k8s.io", "volumeattachments"): {"get", "list", "watch", "patch"},
        ("storage.k8s.io", "volumeattachments/status"): {"patch"},
    },
    "csi-snapshotter": {
        ("", "events"): {"list", "watch", "create", "update", "patch"},
        ("snapshot.storage.k8s.io", "volumesnapshotclasses"): {"get", "list", "watch"},
        ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list", "watch", "update", "patch"},
        ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"update", "patch"},
    },
    "csi-resizer": {
        ("", "persistentvolumes"): {"get", "list", "watch", "patch"},
        ("", "persistentvolumeclaims"): {"get", "list", "watch"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "persistentvolumeclaims/status"): {"patch"},
        ("", "events"): {"list", "watch", "create", "update", "patch"},
        ("storage.k8s.io", "volumeattributesclasses"): {"get", "list", "watch"},  # v2
    },
}
NAMESPACED_REQUIRED = {("coordination.k8s.io", "leases"): {"get", "watch", "list", "delete", "update", "create"}}


def _bound_rules(objects: list[dict], sa: str, cluster: bool) -> dict[tuple[str, str], set[str]]:
    binding_kind, role_kind = ("ClusterRoleBinding", "ClusterRole") if cluster else ("RoleBinding", "Role")
    granted: dict[tuple[str, str], set[str]] = {}
    for b in find(objects, binding_kind):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s.get("namespace") == NAMESPACE
                   for s in b.get("subjects", [])):
            continue
        assert b["roleRef"]["kind"] == role_kind, f"{b['metadata']['name']} binds a {b['roleRef']['kind']}"
        role = one(objects, role_kind, b["roleRef"]["name"])
        for rule in role.get("rules", []):
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    granted.setdefault((g, r), set()).update(rule.get("verbs", []))
    return granted


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_controller_rbac_covers_each_sidecar_and_no_more(installation, render):
    objects = render(installation)
    sa = pod_spec(one(objects, "Deployment", "nvme-csi-controller"))["serviceAccountName"]
    granted = _bound_rules(objects, sa, cluster=True)
    needed: dict[tuple[str, str], set[str]] = {}
    for sidecar, rules in REQUIRED_RULES.items():
        for key, verbs in rules.items():
            missing = verbs - granted.get(key, set())
            assert not missing, f"{sidecar} needs {sorted(missing)} on {key}"
            needed.setdefault(key, set()).update(verbs)
    extra = {k: sorted(v - needed.get(k, set())) for k, v in granted.items() if v - needed.get(k, set())}
    assert not extra, f"controller is granted more than its sidecars need: {extra}"
    for key, verbs in granted.items():
        assert "*" not in key and "*" not in verbs, f"wildcard in {key}: {verbs}"
        assert key[1] != "secrets", "no Secrets: the driver takes no secret parameters"
    ns_granted = _bound_rules(objects, sa, cluster=False)
    assert ns_granted == NAMESPACED_REQUIRED, f"namespaced rules: {ns_granted}"


@pytest.mark.parametrize("installation", INSTALLATIONS)
@pytest.mark.parametrize("daemonset", ["nvme-csi-node", "nvme-csi-target"])
def test_node_and_target_have_no_api_access(installation, daemonset, render):
    objects = render(installation)
    spec = pod_spec(one(objects, "DaemonSet", daemonset))
    sa_name = spec["serviceAccountName"]
    sa = one(objects, "ServiceAccount", sa_name)
    assert sa.get("automountServiceAccountToken") is False
    assert spec.get("automountServiceAccountToken") is False
    assert not _bound_rules(objects, sa_name, cluster=True)
    assert not _bound_rules(objects, sa_name, cluster=False)


# --- examples --------------------------------------------------------------------------------


@pytest.mark.parametrize("examples", EXAMPLE_SETS)
def test_examples_reference_what_exists(examples, render):
    # expansion/ is applied after the examples: the classes come from storage/.
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render("examples/storage") + render(examples)}
    objects = list(objects.values())
    classes = {sc["metadata"]["name"]: sc for sc in find(objects, "StorageClass")}
    snap_classes = {c["metadata"]["name"] for c in find(objects, "VolumeSnapshotClass")}
    pvcs = {p["metadata"]["name"]: p for p in find(objects, "PersistentVolumeClaim")}
    snaps = {s["metadata"]["name"]: s for s in find(objects, "VolumeSnapshot")}
    for pvc in pvcs.values():
        assert pvc["spec"]["storageClassName"] in classes
        src = pvc["spec"].get("dataSource")
        if src:
            pool = snaps if src["kind"] == "VolumeSnapshot" else pvcs
            assert src["name"] in pool, f"PVC {pvc['metadata']['name']}: dataSource {src['name']} does not exist"
    for snap in snaps.values():
        assert snap["spec"]["volumeSnapshotClassName"] in snap_classes
        assert snap["spec"]["source"]["persistentVolumeClaimName"] in pvcs
    for pod in find(objects, "Pod"):
        spec = pod["spec"]
        for v in spec.get("volumes", []):
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                assert claim in pvcs
                block = pvcs[claim]["spec"].get("volumeMode") == "Block"
                users = [c for c in spec["containers"]
                         if any(d["name"] == v["name"] for d in c.get("volumeDevices", []) + c.get("volumeMounts", []))]
                assert users, f"pod {pod['metadata']['name']} does not use volume {v['name']}"
                for c in users:
                    key = "volumeDevices" if block else "volumeMounts"
                    assert any(d["name"] == v["name"] for d in c.get(key, [])), (
                        f"pod {pod['metadata']['name']}: a {'Block' if block else 'Filesystem'} PVC goes in {key}")


def test_storageclass_targets_are_in_the_shipped_targets_file(render):
    names = {t["name"] for t in deploylib.targets_file(render("base"))[0]["targets"]}
    for sc in find(render("examples"), "StorageClass"):
        target = sc.get("parameters", {}).get("target")
        if target:
            assert target in names, f"StorageClass {sc['metadata']['name']}: target {target} is not in base's targets.json"


def test_expansion_grows_the_demo_volume_and_nothing_else(render):
    def size(q):
        m = re.fullmatch(r"(\d+)(Mi|Gi|Ti)", q)
        assert m, q
        return int(m.group(1)) * {"Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}[m.group(2)]

    before = {(o["kind"], o["metadata"]["name"]): o for o in render("examples/demo")}
    after = {(o["kind"], o["metadata"]["name"]): o for o in render("examples/expansion")}
    assert before.keys() == after.keys()
    changed = [k for k in before if before[k] != after[k]]
    assert changed == [("PersistentVolumeClaim", "nvme-demo")], changed
    old = size(before[changed[0]]["spec"]["resources"]["requests"]["storage"])
    new = size(after[changed[0]]["spec"]["resources"]["requests"]["storage"])
    assert new > old
    sc = one(render("examples"), "StorageClass", after[changed[0]]["spec"]["storageClassName"])
    assert sc.get("allowVolumeExpansion") is True
