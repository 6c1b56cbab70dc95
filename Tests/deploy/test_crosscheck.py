"""(3) The manifests agree with the nvme-csi binary and with themselves: the driver
name, the socket paths, every flag passed to nvme-csi (it must be in that role's
--help), the host paths each role needs, the sidecars' arguments, image pins,
resources and RBAC."""

from __future__ import annotations

import os
import re

import pytest

import deploylib
from deploylib import (
    DRIVER, INSTALLATIONS, KUBELET_PLUGINS, KUBELET_REGISTRY, NAMESPACE, STORAGE_NODE_LABEL,
    container, containers, find, flag_args, invocations, is_driver_image, main_invocation,
    mount_for_path, one, pod_spec, unix_path, volume,
)
from test_render import KUSTOMIZATIONS

EXAMPLE_SETS = ["examples", "examples/expansion"]

# Sidecars: image repository -> major version this deployment is built for.
SIDECAR_MAJORS = {
    "registry.k8s.io/sig-storage/csi-provisioner": 6,
    "registry.k8s.io/sig-storage/csi-attacher": 4,
    "registry.k8s.io/sig-storage/csi-snapshotter": 8,
    "registry.k8s.io/sig-storage/csi-resizer": 2,
    "registry.k8s.io/sig-storage/livenessprobe": 2,
    "registry.k8s.io/sig-storage/csi-node-driver-registrar": 2,
}
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
    path = flag_args(registrar)["--kubelet-registration-path"][0]
    assert path.startswith(f"{KUBELET_PLUGINS}/{DRIVER}/"), f"registration path {path} is not under the driver's plugin dir"


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
    plugin_dir = f"{KUBELET_PLUGINS}/{DRIVER}"
    assert vol.get("hostPath", {}).get("path") == plugin_dir, f"socket volume must be hostPath {plugin_dir}"
    registrar = container(spec, "node-driver-registrar")
    flags = flag_args(registrar)
    assert flags["--kubelet-registration-path"] == [f"{plugin_dir}/{os.path.basename(sock)}"], (
        "kubelet dials the registration path on the host: it must be the host path of the driver's socket")
    reg = mount_for_path(registrar, "/registration")
    assert reg is not None, "the registrar needs kubelet's registration dir at /registration"
    assert volume(spec, reg["name"]).get("hostPath", {}).get("path") == KUBELET_REGISTRY
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
    kubelet = _host_path_of(spec, c, "/var/lib/kubelet")
    assert kubelet["volume"]["hostPath"]["path"] == "/var/lib/kubelet"
    assert kubelet["mount"]["mountPath"] == "/var/lib/kubelet"
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
    assert hp["volume"]["hostPath"]["path"] == "/var/lib/nvme-csi"
    # Topology: every segment is key=value, and $(NODE_NAME) is the node's name.
    for seg in inv.flags.get("--topology", []):
        key, eq, value = seg.partition("=")
        assert eq and key and value, f"--topology {seg} is not key=value"
        assert key.startswith("topology.nvme.csi.dev/"), key
    env = _env(c)
    if "NODE_NAME" in env:
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert inv.flags.get("--topology"), (
        "external-provisioner with Topology=true needs a topology key on every node "
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
    assert hp["volume"]["hostPath"]["path"] == store_dir, (
        "mount the store at its host path, so the paths nvmet shows in configfs are the host's")
    configfs = inv.value("--configfs")
    wrapper = "\n".join(c.get("args", [])) if c.get("command") else ""
    mounts_configfs = re.search(r"mount -t configfs configfs " + re.escape(configfs) + r"\b", wrapper)
    if not mounts_configfs:
        hp = _host_path_of(spec, c, configfs)
        assert hp["volume"]["hostPath"]["path"] == "/sys/kernel/config" and hp["mount"]["mountPath"] == configfs
    ports = {p["containerPort"] for p in c.get("ports", [])}
    assert {7600, 4420} <= ports, f"declare the target API and NVMe/TCP ports, got {ports}"
    assert c["livenessProbe"]["tcpSocket"]["port"] == 7600


def test_talos_overlay_mounts_configfs_itself(render):
    ds = one(render("overlays/talos"), "DaemonSet", "nvme-csi-target")
    c = container(pod_spec(ds), "nvme-csi")
    script = "\n".join(c.get("args", []))
    assert "mount -t configfs configfs /sys/kernel/config" in script, "Talos does not mount configfs"
    assert "$(" not in deploylib.expand(script, {"POD_IP": "x"}), "a $(...) in the script would be expanded by Kubernetes"


def test_talos_overlay_leaves_host_paths_unchecked(render):
    node = pod_spec(one(render("overlays/talos"), "DaemonSet", "nvme-csi-node"))
    assert volume(node, "etc-nvme")["hostPath"].get("type", "") == ""
    assert volume(node, "state")["hostPath"].get("type", "") == ""
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
    assert "Topology=true" in prov.get("--feature-gates", [""])[0].split(","), "provisioner needs Topology=true"
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


# --- RBAC ---------------------------------------------------------------------------------

# What each sidecar needs, as its upstream deploy/kubernetes/rbac.yaml documents it
# (group, resource) -> verbs. Optional rules this driver does not use are left out.
REQUIRED_RULES = {
    "csi-provisioner": {
        ("", "persistentvolumes"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "persistentvolumeclaims"): {"get", "list", "watch", "update"},
        ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
        ("", "events"): {"list", "watch", "create", "update", "patch"},
        ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list"},
        ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list"},
        ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
        ("", "nodes"): {"get", "list", "watch"},
        ("storage.k8s.io", "volumeattachments"): {"get", "list", "watch"},
        ("storage.k8s.io", "volumeattributesclasses"): {"get", "list", "watch"},  # v6
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
