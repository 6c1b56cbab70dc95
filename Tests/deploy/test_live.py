"""(4) The manifests' command lines and StorageClasses against running processes.

Starts `nvme-csi target` (file store, nvmet simulated in a directory) for every
target name the shipped targets file and the StorageClasses use, and `nvme-csi
controller` with the shipped targets file (addresses swapped for the local
targets' sockets: the tests reach nothing beyond this machine), each with the flags
of its manifest. The target API is mutual TLS as deployed: certificates from
deploy/certs/make-certs.sh stand in for the Secrets, at the paths the manifests'
--tls-* flags (or their defaults) name inside the Secret's mount. Each process's
--metrics-address moves to a free loopback port (the manifests' ports would collide
here), and each serves its metrics there. Then every StorageClass's parameters go
to CreateVolume the way external-provisioner sends them, for a mounted (its
fsType) and a raw block volume, and the demo examples run as CSI calls: create,
snapshot, restore, clone, expand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import deploylib
from deploylib import DRIVER, find, main_invocation, one, pod_spec

# What external-provisioner does with csi.storage.k8s.io/ keys: it consumes these
# (fsType, secret references) and refuses any other key with that prefix.
PROVISIONER_KEYS = {"csi.storage.k8s.io/fstype"} | {
    f"csi.storage.k8s.io/{p}-secret-{w}"
    for p in ("provisioner", "controller-publish", "node-stage", "node-publish", "controller-expand", "node-expand")
    for w in ("name", "namespace")
}
ACCESS_MODES = {
    "ReadWriteOnce": "single-node-writer",
    "ReadWriteOncePod": "single-node-single-writer",
    "ReadOnlyMany": "multi-node-reader-only",
    "ReadWriteMany": "multi-node-multi-writer",
}
KNOBS = ["ctrlLossTmo", "reconnectDelay", "fastIoFailTmo", "keepAliveTmo", "nrIoQueues"]
START_TIMEOUT = 20.0


def _wait_for_socket(path: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[1]} exited with {proc.returncode}:\n{log.read_text()}")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise AssertionError(f"{proc.args[1]} did not listen on {path} within {START_TIMEOUT}s:\n{log.read_text()}")


def _metrics_override(inv: deploylib.Invocation) -> tuple[int, dict[str, str]]:
    """The manifest's --metrics-address moved to a free loopback port: the port, and
    the override."""
    assert "--metrics-address" in inv.flags, f"{inv.where}: no --metrics-address in the manifest"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port, {"--metrics-address": f"127.0.0.1:{port}"}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200, f"GET /metrics on {port}: {r.status}"
        return r.read().decode()


MAKE_CERTS = deploylib.REPO / "deploy" / "certs" / "make-certs.sh"


def _make_certs(directory: Path) -> None:
    """A CA and the target, controller and reader certificates (each a directory with
    the Secret's keys), as an operator without cert-manager makes them."""
    r = subprocess.run(["bash", str(MAKE_CERTS), str(directory)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"make-certs.sh failed (is openssl installed?): {r.stderr}"


def _tls_overrides(obj: dict, secret_dir: Path) -> dict[str, str]:
    """The workload's --tls-* files, moved from the Secret's mount to `secret_dir`."""
    tls = deploylib.tls_mount(obj)
    return {flag: str(secret_dir / os.path.relpath(path, tls.directory)) for flag, path in tls.paths.items()}


def _secret_dir(certs: Path, obj: dict) -> Path:
    """make-certs.sh's directory for the Secret a workload mounts: DIR/<role> is what
    `kubectl create secret generic nvme-csi-<role>-tls --from-file=DIR/<role>` takes."""
    secret = deploylib.tls_mount(obj).secret
    m = re.fullmatch(r"nvme-csi-(\w+)-tls", secret)
    assert m and (certs / m.group(1)).is_dir(), f"make-certs.sh makes nothing for Secret {secret}"
    return certs / m.group(1)


def _substitute(inv: deploylib.Invocation, env: dict[str, str], overrides: dict[str, str]) -> list[str]:
    """The manifest's command line with $(VAR)s filled in and the host-specific
    flags (`overrides`) pointed at this test's directory."""
    argv = [inv.role]
    for flag, values in inv.flags.items():
        if flag in overrides:
            continue
        for v in values:
            argv.append(f"{flag}={deploylib.expand(v, env)}" if v != "" else flag)
    for flag, value in overrides.items():
        argv.append(f"{flag}={value}")
    unresolved = [a for a in argv if deploylib.ENV_REF.search(a)]
    assert not unresolved, f"unresolved $(VAR) in {unresolved}"
    return argv


class Cluster:
    """Targets and a controller running from the base manifests' command lines."""

    def __init__(self, objects: list[dict], extra_targets: set[str]):
        self.bin = deploylib.nvme_csi_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="nvd-", dir="/tmp"))
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.metrics: dict[str, int] = {}  # process name -> its metrics port
        self.objects = objects
        try:
            self._start(extra_targets)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str], sock: str) -> None:
        log = self.dir / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([self.bin, *argv], stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        self.procs.append(proc)
        self.logs.append(log)
        _wait_for_socket(sock, proc, log)

    def _start(self, extra_targets: set[str]) -> None:
        shipped, _ = deploylib.targets_file(self.objects)
        entries = [dict(t) for t in shipped["targets"]]
        for name in sorted(extra_targets - {t["name"] for t in entries}):
            entries.append({"name": name, "address": "placeholder"})
        self.certs = self.dir / "certs"
        _make_certs(self.certs)
        target_ds = one(self.objects, "DaemonSet", "nvme-csi-target")
        target_inv = main_invocation(target_ds)
        target_tls = _tls_overrides(target_ds, _secret_dir(self.certs, target_ds))
        for t in entries:
            root = self.dir / t["name"]
            (root / "configfs").mkdir(parents=True)
            (root / "store").mkdir()
            sock = str(root / "target.sock")
            port, metrics = _metrics_override(target_inv)
            argv = _substitute(target_inv, {"POD_IP": "127.0.0.1", "NODE_NAME": t["name"]}, {
                "--listen": f"unix://{sock}",
                "--store": f"file:{root / 'store'}",
                "--configfs": str(root / "configfs"),
                **target_tls,
                **metrics,
            })
            self._spawn(f"target-{t['name']}", argv, sock)
            self.metrics[f"target-{t['name']}"] = port
            t["address"] = f"unix://{sock}"
        targets = self.dir / "targets.json"
        targets.write_text(json.dumps({"targets": entries}))
        self.target_names = [t["name"] for t in entries]

        self.targets = targets
        deployment = one(self.objects, "Deployment", "nvme-csi-controller")
        self.endpoint = self.start_controller("controller", _secret_dir(self.certs, deployment))

    def start_controller(self, name: str, secret_dir: Path) -> str:
        """A controller with the Deployment's flags and the certificate in
        `secret_dir`; its endpoint, once every target answers its GetInfo."""
        deployment = one(self.objects, "Deployment", "nvme-csi-controller")
        controller_inv = main_invocation(deployment)
        sock = self.dir / f"{name}.sock"
        endpoint = f"unix://{sock}"
        port, metrics = _metrics_override(controller_inv)
        argv = _substitute(controller_inv, {}, {
            "--endpoint": endpoint, "--targets": str(self.targets), **_tls_overrides(deployment, secret_dir),
            **metrics})
        self._spawn(name, argv, str(sock))
        self.metrics[name] = port
        deadline = time.monotonic() + START_TIMEOUT
        while "ready=true" not in self.ctl("plugin-info", endpoint=endpoint).stdout:
            assert time.monotonic() < deadline, f"{name} never became ready:\n{self.log_text()}"
            time.sleep(0.1)
        return endpoint

    def ctl(self, *args: str, endpoint: str | None = None) -> subprocess.CompletedProcess:
        cmd, rest = args[0], list(args[1:])
        return subprocess.run([self.bin, "ctl", cmd, "--endpoint", endpoint or self.endpoint, *rest],
                              capture_output=True, text=True, timeout=60)

    def ctl_json(self, *args: str) -> dict:
        r = self.ctl(args[0], "--json", *args[1:])
        assert r.returncode == 0, f"ctl {' '.join(args)} failed: {r.stderr.strip()}\n{self.log_text()}"
        return json.loads(r.stdout)

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs if p.exists())

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _storage_classes(render) -> dict[str, dict]:
    classes: dict[str, dict] = {}
    for k in ["examples", *deploylib.INSTALLATIONS]:
        for sc in find(render(k), "StorageClass"):
            classes[sc["metadata"]["name"]] = sc
    return classes


STORAGE_CLASS_NAMES = sorted(
    sc["metadata"]["name"] for sc in deploylib.render("examples") if sc["kind"] == "StorageClass")


@pytest.fixture(scope="module")
def cluster(render):
    classes = _storage_classes(render).values()
    targets = {sc.get("parameters", {}).get("target") for sc in classes} - {None}
    # A replicated class needs as many targets as copies (each its own failure domain).
    replicas = max(int(sc.get("parameters", {}).get("replicas", "1")) for sc in classes)
    shipped = {t["name"] for t in deploylib.targets_file(render("base"))[0]["targets"]}
    for n in range(replicas):
        if len(shipped | targets) >= replicas:
            break
        targets.add(f"store-replica-{n}")
    c = Cluster(render("base"), targets)
    yield c
    c.stop()


def provisioner_request(sc: dict, deployment: dict, pvc_name: str) -> tuple[list[str], str]:
    """CreateVolume arguments from a StorageClass, as external-provisioner builds
    them with this deployment's flags: the fsType key consumed (default from
    --default-fstype), other csi.storage.k8s.io/ keys refused, and with
    --extra-create-metadata the PVC/PV name keys added."""
    prov = deploylib.flag_args(deploylib.container(pod_spec(deployment), "csi-provisioner"))
    fs_type = prov.get("--default-fstype", ["ext4"])[0]
    params: list[str] = []
    for key, value in sc.get("parameters", {}).items():
        if key.startswith("csi.storage.k8s.io/"):
            assert key in PROVISIONER_KEYS, f"external-provisioner refuses reserved key {key}"
            if key == "csi.storage.k8s.io/fstype":
                fs_type = value
            continue
        params += ["--parameter", f"{key}={value}"]
    if "--extra-create-metadata" in prov:
        params += ["--parameter", f"csi.storage.k8s.io/pvc/name={pvc_name}",
                   "--parameter", "csi.storage.k8s.io/pvc/namespace=default",
                   "--parameter", f"csi.storage.k8s.io/pv/name=pvc-{uuid.uuid4()}"]
    return params, fs_type




@pytest.mark.parametrize("mode", ["filesystem", "block"])
@pytest.mark.parametrize("storage_class", STORAGE_CLASS_NAMES)
def test_storageclass_parameters_are_accepted_by_createvolume(storage_class, mode, cluster, render):
    sc = _storage_classes(render)[storage_class]
    deployment = one(cluster.objects, "Deployment", "nvme-csi-controller")
    name = f"pvc-{uuid.uuid4()}"
    params, fs_type = provisioner_request(sc, deployment, name)
    shape = ["--block"] if mode == "block" else ["--fs-type", fs_type]
    created = cluster.ctl_json("create-volume", name, "--size", "1Gi", *shape, *params)
    volume = created["volume"]
    vid = volume["volume_id"]
    try:
        target = sc.get("parameters", {}).get("target")
        if target:
            assert vid.startswith(f"v1.{target}."), f"{vid} is not on target {target}"
        replicas = int(sc.get("parameters", {}).get("replicas", "1"))
        if replicas > 1:
            assert vid.startswith("r1.") and len(vid.split(".")) == 2 + replicas, f"{vid} names no {replicas} legs"
        context = volume["volume_context"]
        expected = KNOBS + (["replicas"] if replicas > 1 else [])
        assert sorted(context) == sorted(expected), f"volume context {context}"
        for key in KNOBS:
            if key in sc.get("parameters", {}):
                assert context[key] == sc["parameters"][key], (
                    f"the node would connect with {key}={context[key]}, the StorageClass says {sc['parameters'][key]}")
        assert int(volume["capacity_bytes"]) == 1 << 30
    finally:
        r = cluster.ctl("delete-volume", vid)
        assert r.returncode == 0, f"delete-volume {vid}: {r.stderr}"
    gone = cluster.ctl("get-volume", vid)
    assert gone.returncode != 0 and "notFound" in gone.stderr, f"{vid} still exists after delete: {gone.stdout}"


def test_createvolume_refuses_a_misspelt_parameter(cluster):
    """The same path fails on a StorageClass typo, so the test above can fail."""
    r = cluster.ctl("create-volume", f"pvc-{uuid.uuid4()}", "--parameter", "ctrlLossTMO=30")
    assert r.returncode != 0
    assert "unknown parameter" in r.stderr and "ctrlLossTMO" in r.stderr, r.stderr


def test_createvolume_refuses_an_unknown_target(cluster):
    r = cluster.ctl("create-volume", f"pvc-{uuid.uuid4()}", "--parameter", "target=no-such-target")
    assert r.returncode != 0 and "names no target" in r.stderr, r.stderr


def test_controller_reports_the_driver_name(cluster):
    info = cluster.ctl_json("plugin-info")
    assert info["name"] == DRIVER
    assert info["vendor_version"] == deploylib.binary_version()


def test_every_process_serves_metrics(cluster):
    """Every target and controller answers GET /metrics with its RPCs counted (the
    controller's GetInfo calls reached every target before it was ready)."""
    vid = cluster.ctl_json("create-volume", f"pvc-{uuid.uuid4()}", "--size", "16Mi")["volume"]["volume_id"]
    assert cluster.ctl("delete-volume", vid).returncode == 0
    assert len(cluster.metrics) >= len(cluster.target_names) + 1
    for name, port in cluster.metrics.items():
        text = _scrape(port)
        assert "nvmecsi_rpc_requests_total{" in text, f"{name} counted no RPC:\n{text[:2000]}"


def test_the_targets_serve_only_the_controller_identity(cluster):
    """A controller holding the reader's certificate (same CA, a --reader-identity)
    reaches the targets (GetInfo is a read) but may not create a volume: the targets
    check the names in the deployed certificates."""
    endpoint = cluster.start_controller("controller-as-reader", cluster.certs / "reader")
    r = cluster.ctl("create-volume", f"pvc-{uuid.uuid4()}", "--size", "16Mi", endpoint=endpoint)
    assert r.returncode != 0, f"the reader created a volume: {r.stdout}"
    assert "permissionDenied" in r.stderr and "may not call " in r.stderr, r.stderr


def _size(quantity: str) -> str:
    m = re.fullmatch(r"(\d+)(Mi|Gi|Ti)", quantity)
    assert m, f"size {quantity}: use Mi, Gi or Ti"
    return quantity


def test_demo_examples_as_csi_calls(cluster, render):
    """demo/ and expansion/ replayed as the sidecars would: PVC nvme-demo created,
    snapshotted, restored, cloned, then grown to the expansion's size."""
    classes = _storage_classes(render)
    demo = render("examples/demo")
    deployment = one(cluster.objects, "Deployment", "nvme-csi-controller")
    pvcs = {p["metadata"]["name"]: p for p in find(demo, "PersistentVolumeClaim")}
    volumes: dict[str, str] = {}
    snapshots: dict[str, str] = {}

    def create(pvc: dict, source: list[str]) -> str:
        spec = pvc["spec"]
        sc = classes[spec["storageClassName"]]
        params, fs_type = provisioner_request(sc, deployment, pvc["metadata"]["name"])
        shape = ["--block"] if spec.get("volumeMode") == "Block" else ["--fs-type", fs_type]
        modes = [ACCESS_MODES[m] for m in spec["accessModes"]]
        out = cluster.ctl_json("create-volume", f"pvc-{uuid.uuid4()}", "--size", _size(spec["resources"]["requests"]["storage"]),
                               "--access-mode", modes[0], *shape, *params, *source)
        return out["volume"]["volume_id"]

    try:
        # Plain volumes first, then snapshots of them, then volumes from sources.
        for name, pvc in pvcs.items():
            if "dataSource" not in pvc["spec"]:
                volumes[name] = create(pvc, [])
        for snap in find(demo, "VolumeSnapshot"):
            source = volumes[snap["spec"]["source"]["persistentVolumeClaimName"]]
            out = cluster.ctl_json("create-snapshot", f"snapshot-{uuid.uuid4()}", "--volume", source)
            snapshots[snap["metadata"]["name"]] = out["snapshot"]["snapshot_id"]
        for name, pvc in pvcs.items():
            src = pvc["spec"].get("dataSource")
            if src:
                flag = ["--from-snapshot", snapshots[src["name"]]] if src["kind"] == "VolumeSnapshot" \
                    else ["--from-volume", volumes[src["name"]]]
                volumes[name] = create(pvc, flag)
        grown = one(render("examples/expansion"), "PersistentVolumeClaim", "nvme-demo")
        size = _size(grown["spec"]["resources"]["requests"]["storage"])
        out = cluster.ctl_json("expand", volumes["nvme-demo"], "--size", size)
        assert int(out["capacity_bytes"]) == 2 << 30, out
        assert out.get("node_expansion_required") is True, "kubelet must grow the file system after the controller"
    finally:
        for vid in [v for k, v in volumes.items() if k != "nvme-demo"] + list(snapshots.values()) + \
                [volumes.get("nvme-demo")]:
            if not vid:
                continue
            kind = "delete-snapshot" if vid.startswith("s1.") else "delete-volume"
            r = cluster.ctl(kind, vid)
            assert r.returncode == 0, f"{kind} {vid}: {r.stderr}"


def test_node_plugin_starts_with_its_manifest_flags(render, tmp_path_factory):
    """`nvme-csi node` with the DaemonSet's flags (paths moved to a temp dir, and an
    /etc/nvme with a host identity) starts and answers as the driver."""
    bin_ = deploylib.nvme_csi_bin()
    d = Path(tempfile.mkdtemp(prefix="nvn-", dir="/tmp"))
    try:
        etc = d / "etc-nvme"
        etc.mkdir()
        host_id = str(uuid.uuid4())
        (etc / "hostnqn").write_text(f"nqn.2014-08.org.nvmexpress:uuid:{host_id}\n")
        (etc / "hostid").write_text(host_id + "\n")
        inv = main_invocation(one(render("base"), "DaemonSet", "nvme-csi-node"))
        sock = d / "csi.sock"
        port, metrics = _metrics_override(inv)
        argv = _substitute(inv, {"NODE_NAME": "worker-1", "POD_IP": "127.0.0.1"}, {
            "--endpoint": f"unix://{sock}", "--state-dir": str(d / "state"), "--nvme-config-dir": str(etc),
            **metrics})
        log = d / "node.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([bin_, *argv], stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for_socket(str(sock), proc, log)
            r = subprocess.run([bin_, "ctl", "plugin-info", "--json", "--endpoint", f"unix://{sock}"],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["name"] == DRIVER
            assert host_id in log.read_text(), f"the node did not take its identity from {etc}:\n{log.read_text()}"
            text = _scrape(port)
            assert "nvmecsi_rpc_requests_total{" in text and "nvmecsi_node_staged_volumes 0" in text, text[:2000]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- the parameter table in the ext4 example -------------------------------------------

TABLE_ROW = re.compile(r"^#\s+(\w+)\s+(-?\d+)\s+(\d+)-(\d+)(, -1)?\s+\S")


def documented_knobs() -> dict[str, tuple[int, int, int, bool]]:
    """knob -> (default, min, max, -1 allowed) from storageclass-ext4.yaml's table."""
    text = (deploylib.DEPLOY / "examples" / "storage" / "storageclass-ext4.yaml").read_text()
    rows = {}
    for line in text.splitlines():
        m = TABLE_ROW.match(line)
        if m:
            rows[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(4)), bool(m.group(5)))
    return rows


def test_the_parameter_table_documents_every_knob():
    assert sorted(documented_knobs()) == sorted(KNOBS)


def test_documented_defaults_are_the_drivers(cluster):
    vid = cluster.ctl_json("create-volume", f"pvc-{uuid.uuid4()}", "--size", "16Mi")["volume"]
    try:
        context = vid["volume_context"]
        documented = {k: str(v[0]) for k, v in documented_knobs().items()}
        assert context == documented, (
            f"storageclass-ext4.yaml documents defaults {documented}, the driver uses {context}")
    finally:
        assert cluster.ctl("delete-volume", vid["volume_id"]).returncode == 0


@pytest.mark.parametrize("knob", KNOBS)
def test_documented_ranges_are_the_drivers(knob, cluster):
    """Each documented bound is accepted and one past it refused, alone (with
    ctrlLossTmo=-1, so the cross-checks between knobs stay out of the way)."""
    default, low, high, minus_one = documented_knobs()[knob]
    extra = [] if knob == "ctrlLossTmo" else ["--parameter", "ctrlLossTmo=-1"]

    def create(value: int) -> subprocess.CompletedProcess:
        return cluster.ctl("create-volume", "--json", f"pvc-{uuid.uuid4()}", "--size", "16Mi",
                           "--parameter", f"{knob}={value}", *extra)

    accepted = [low, high] + ([-1] if minus_one else [])
    below = low - 1 if not (minus_one and low - 1 == -1) else -2
    refused = [high + 1, below]
    for value in accepted:
        r = create(value)
        assert r.returncode == 0, f"{knob}={value} is documented as valid, the driver says: {r.stderr.strip()}"
        vid = json.loads(r.stdout)["volume"]["volume_id"]
        assert cluster.ctl("delete-volume", vid).returncode == 0
    for value in refused:
        r = create(value)
        assert r.returncode != 0 and "out of range" in r.stderr, (
            f"{knob}={value} is documented as invalid, the driver says: {r.stdout or r.stderr}")


VOLUME_ATTRIBUTES_CLASSES = sorted(
    vac["metadata"]["name"] for vac in deploylib.render("examples/attributes-class") if vac["kind"] == "VolumeAttributesClass")


def test_the_examples_carry_a_volumeattributesclass():
    assert VOLUME_ATTRIBUTES_CLASSES, "examples/attributes-class has no VolumeAttributesClass"


@pytest.mark.parametrize("vac_name", VOLUME_ATTRIBUTES_CLASSES)
def test_volumeattributesclass_parameters_are_accepted_by_modifyvolume(vac_name, cluster, render):
    """What the resizer sends for the example class: ControllerModifyVolume with its
    parameters, on a volume created without one; and CreateVolume with them (a PVC
    that names the class from the start)."""
    vac = one(render("examples/attributes-class"), "VolumeAttributesClass", vac_name)
    assert vac["driverName"] == "nvme.csi.dev"
    params = [arg for key, value in vac["parameters"].items() for arg in ("--parameter", f"{key}={value}")]
    vid = cluster.ctl_json("create-volume", f"pvc-{uuid.uuid4()}", "--size", "64Mi")["volume"]["volume_id"]
    created = cluster.ctl_json(
        "create-volume", f"pvc-{uuid.uuid4()}", "--size", "64Mi",
        *[arg.replace("--parameter", "--mutable-parameter") for arg in params])["volume"]["volume_id"]
    try:
        r = cluster.ctl("modify-volume", vid, *params)
        assert r.returncode == 0, f"modify-volume {vid} {params}: {r.stderr}"
        bad = cluster.ctl("modify-volume", vid, "--parameter", "target=elsewhere")
        assert bad.returncode != 0 and "cannot be modified" in bad.stderr, bad.stderr
    finally:
        for v in (vid, created):
            assert cluster.ctl("delete-volume", v).returncode == 0
