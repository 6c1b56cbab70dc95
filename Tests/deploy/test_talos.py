"""The Talos machine-config patches (deploy/talos), the Talos overlay and
docs/talos.md agree: what a user applies to the nodes makes what the overlay's pods
need (modules, the label the target selects, the user volumes behind the host
paths), each patch uses only what Talos accepts in its form, and the guide shows
the files as they are.

The Talos schema below was read from siderolabs/talos
(pkg/machinery/config/types: block/user_volume_config.go, runtime/kernel_module.go,
k8s/node.go, k8s/admission_control.go, v1alpha1/v1alpha1_types.go); the versions
are those that introduced each field or kind."""

from __future__ import annotations

import re

import pytest
import yaml

from deploylib import REPO, STORAGE_NODE_LABEL, one, pod_spec, render_overlay, volume

TALOS = REPO / "deploy" / "talos"
DOC = REPO / "docs" / "talos.md"
PATCHES = sorted(TALOS.glob("*.yaml"))
STORAGE_PATCHES = [p for p in PATCHES if p.name.startswith("storage-node")]
EVERY_NODE = TALOS / "every-node.yaml"

# Multi-document kinds a patch may use: fields Talos decodes, and the oldest Talos
# that knows the kind.
KINDS = {
    "UserVolumeConfig": ({"apiVersion", "kind", "name", "volumeType", "provisioning", "filesystem",
                          "encryption", "mount", "trim", "scrub"}, (1, 10)),
    "KernelModuleConfig": ({"apiVersion", "kind", "name", "parameters"}, (1, 14)),
    "KubeNodeConfig": ({"apiVersion", "kind", "skipNodeRegistration", "registerWithFQDN", "nodeIP",
                        "labels", "annotations", "taints"}, (1, 14)),
    "KubeAdmissionControlConfig": ({"apiVersion", "kind", "name", "configuration"}, (1, 14)),
}
# The v1alpha1 fields a patch may set (machine.kernel.modules, machine.nodeLabels).
V1ALPHA1 = {"machine": {"kernel": {"modules": None}, "nodeLabels": None}}
# UserVolumeConfig: name 1..34 characters (36, the partition label limit, minus "u-").
VOLUME_NAME = re.compile(r"[A-Za-z0-9-]{1,34}")
USER_VOLUMES = "/var/mnt/"


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def patch(path) -> list[dict]:
    docs = documents(path.read_text())
    assert docs, f"{path.name} has no document"
    return docs


def is_v1alpha1(doc: dict) -> bool:
    """The machine configuration's own document: no apiVersion/kind header."""
    return "kind" not in doc and "apiVersion" not in doc


def typed(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def modules(docs: list[dict]) -> list[str]:
    names = [d["name"] for d in typed(docs, "KernelModuleConfig")]
    for d in filter(is_v1alpha1, docs):
        names += [m["name"] for m in (d.get("machine", {}).get("kernel", {}).get("modules") or [])]
    return names


def node_labels(docs: list[dict]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for d in typed(docs, "KubeNodeConfig"):
        labels.update(d.get("labels") or {})
    for d in filter(is_v1alpha1, docs):
        labels.update(d.get("machine", {}).get("nodeLabels") or {})
    return labels


def user_volumes(docs: list[dict]) -> dict[str, dict]:
    return {d["name"]: d for d in typed(docs, "UserVolumeConfig")}


def _only_known_keys(value, allowed, where: str):
    if allowed is None:
        return
    assert isinstance(value, dict), f"{where} is not a mapping"
    unknown = set(value) - set(allowed)
    assert not unknown, f"{where}: the patch sets {sorted(unknown)}, which this check does not know Talos to accept"
    for key, sub in value.items():
        _only_known_keys(sub, allowed[key], f"{where}.{key}")


def test_the_patches_are_there():
    names = {p.name for p in PATCHES}
    assert {"every-node.yaml", "storage-node.yaml", "storage-node.v1alpha1.yaml"} <= names, names


@pytest.mark.parametrize("path", PATCHES, ids=lambda p: p.name)
def test_patch_uses_only_what_talos_accepts_in_its_form(path):
    """*.v1alpha1.yaml: the v1alpha1 fields, plus documents Talos 1.12 knows (it is the
    form for clusters whose configuration predates the multi-document kinds). Any
    other file: multi-document only, no v1alpha1 part."""
    docs = patch(path)
    legacy_form = path.name.endswith(".v1alpha1.yaml")
    for i, d in enumerate(docs):
        where = f"{path.name} document {i + 1}"
        if is_v1alpha1(d):
            assert legacy_form, f"{where}: a v1alpha1 part belongs in a *.v1alpha1.yaml patch"
            _only_known_keys(d, V1ALPHA1, where)
            for m in d["machine"].get("kernel", {}).get("modules", []):
                assert set(m) <= {"name", "parameters"}, f"{where}: module {m}"
            continue
        assert d.get("apiVersion") == "v1alpha1", f"{where}: apiVersion {d.get('apiVersion')}"
        assert d.get("kind") in KINDS, f"{where}: kind {d.get('kind')} is not one this check knows"
        fields, since = KINDS[d["kind"]]
        assert set(d) <= fields, f"{where}: {d['kind']} has no {sorted(set(d) - fields)}"
        if legacy_form:
            assert since < (1, 14), f"{where}: {d['kind']} needs Talos {since[0]}.{since[1]}; use the v1alpha1 field"


@pytest.mark.parametrize("path", PATCHES, ids=lambda p: p.name)
def test_user_volumes_are_directory_volumes_talos_accepts(path):
    for name, d in user_volumes(patch(path)).items():
        assert VOLUME_NAME.fullmatch(name), f"{path.name}: user volume name {name!r}"
        assert d.get("volumeType") == "directory", f"{path.name}: {name} is not a directory volume"
        # Talos refuses these for volumeType directory.
        for field in ("provisioning", "filesystem", "encryption"):
            assert field not in d, f"{path.name}: {name}: {field} is invalid for a directory volume"


@pytest.mark.parametrize("path", STORAGE_PATCHES, ids=lambda p: p.name)
def test_storage_node_patch_loads_the_nvme_target(path):
    """nvmet and nvmet_tcp, each once; nvme_tcp (the host side) is built into Talos's
    kernel and is not listed."""
    assert sorted(modules(patch(path))) == ["nvmet", "nvmet_tcp"]


@pytest.mark.parametrize("path", STORAGE_PATCHES, ids=lambda p: p.name)
@pytest.mark.parametrize("installation", ["base", "overlays/talos"])
def test_storage_node_label_is_what_the_target_selects(path, installation, render):
    selector = pod_spec(one(render(installation), "DaemonSet", "nvme-csi-target"))["nodeSelector"]
    labels = node_labels(patch(path))
    assert selector == {STORAGE_NODE_LABEL: "true"}
    assert labels == selector, f"{path.name} labels the node {labels}; the target DaemonSet selects {selector}"


def test_storage_node_forms_agree():
    forms = {p.name: patch(p) for p in STORAGE_PATCHES}
    seen = {name: (sorted(modules(d)), node_labels(d), user_volumes(d)) for name, d in forms.items()}
    assert len({repr(v) for v in seen.values()}) == 1, f"the storage-node patches differ: {seen}"


def _overlay_host_path(render, kind_name: str, vol: str) -> dict:
    spec = pod_spec(one(render("overlays/talos"), "DaemonSet", kind_name))
    return volume(spec, vol)["hostPath"]


@pytest.mark.parametrize("daemonset, vol, patches", [
    ("nvme-csi-node", "state", [EVERY_NODE]),
    ("nvme-csi-target", "store", STORAGE_PATCHES),
], ids=["state", "store"])
def test_the_overlays_host_path_is_a_user_volume_of_the_patches(daemonset, vol, patches, render):
    host = _overlay_host_path(render, daemonset, vol)
    assert host["path"].startswith(USER_VOLUMES), host
    name = host["path"][len(USER_VOLUMES):]
    assert host["type"] == "Directory", "kubelet sees /var/mnt: check that the user volume is there"
    for p in patches:
        assert name in user_volumes(patch(p)), (
            f"overlays/talos puts {vol} on {host['path']}, but {p.name} makes no user volume {name!r} "
            f"(it makes {sorted(user_volumes(patch(p)))})")


def test_every_user_volume_of_the_patches_is_used(render):
    used = {_overlay_host_path(render, "nvme-csi-node", "state")["path"],
            _overlay_host_path(render, "nvme-csi-target", "store")["path"]}
    for p in PATCHES:
        for name in user_volumes(patch(p)):
            assert USER_VOLUMES + name in used, f"{p.name} makes user volume {name}, which no pod uses"


# --- docs/talos.md ----------------------------------------------------------------

def doc_blocks(lang: str = "yaml") -> list[str]:
    return re.findall(r"^```" + lang + r"\n(.*?)^```$", DOC.read_text(), re.S | re.M)


@pytest.mark.parametrize("path", PATCHES, ids=lambda p: p.name)
def test_the_guide_shows_each_patch_as_it_is(path):
    rel = f"deploy/talos/{path.name}"
    text = DOC.read_text()
    assert rel in text, f"docs/talos.md does not name {rel}"
    assert path.read_text() in doc_blocks(), f"docs/talos.md has no yaml block equal to {rel}"


def test_the_guide_names_only_patches_that_exist():
    for rel in set(re.findall(r"deploy/talos/[\w.-]+\.yaml", DOC.read_text())):
        assert (REPO / rel).is_file(), f"docs/talos.md names {rel}, which does not exist"


def test_the_guides_user_volumes_are_the_patches():
    """Every UserVolumeConfig the guide shows (the partition variant included) is named
    as one the overlay uses."""
    names = {n for p in PATCHES for n in user_volumes(patch(p))}
    shown = [d for b in doc_blocks() for d in documents(b) if isinstance(d, dict) and d.get("kind") == "UserVolumeConfig"]
    assert len(shown) >= len(names) + 1, "expected the patches and a partition variant"
    for d in shown:
        assert d["name"] in names, f"docs/talos.md shows user volume {d['name']}; the patches make {sorted(names)}"


def test_the_guides_var_lib_override_renders_bases_paths(render):
    """The override for Talos 1.10/1.11 and older installs puts state and store back on
    base's host paths, unchecked."""
    block = next(b for b in doc_blocks() if b.startswith("# my-cluster/var-lib-paths.yaml\n"))
    objects = render_overlay(
        {"resources": ["{deploy}/overlays/talos"], "patches": [{"path": "var-lib-paths.yaml"}]},
        {"var-lib-paths.yaml": block})
    base = {(k, n): volume(pod_spec(one(render("base"), "DaemonSet", k)), n)["hostPath"]["path"]
            for k, n in [("nvme-csi-node", "state"), ("nvme-csi-target", "store")]}
    for (kind_name, vol), path in base.items():
        host = volume(pod_spec(one(objects, "DaemonSet", kind_name)), vol)["hostPath"]
        assert host == {"path": path, "type": ""}, f"{kind_name} {vol}: {host}"


def _swift(path: str) -> str:
    return (REPO / path).read_text()


def test_the_runbooks_metrics_exist():
    """Metric and label names in the guide are ones the binary exports."""
    sources = _swift("Sources/nvme-csi/MetricsOptions.swift") + _swift("Sources/CSIServer/Metrics.swift")
    exported = {"nvmecsi_" + n for n in re.findall(r'set\(\s*"([a-z_]+)"', sources)}
    exported |= {"nvmecsi_rpc_requests_total", "nvmecsi_rpc_duration_seconds"}
    text = DOC.read_text()
    used = set(re.findall(r"\bnvmecsi_[a-z_]+", text))
    assert used, "the runbook names no metric"
    assert used <= exported, f"docs/talos.md names metrics the binary does not export: {sorted(used - exported)}"
    for name, labels in re.findall(r"\b(nvmecsi_[a-z_]+)\{([^}]*)\}", text):
        for label in re.findall(r'([a-z_]+)=~?"', labels):
            assert f'("{label}"' in sources, f"{name} has no label {label}"


def test_the_runbooks_connection_defaults_are_the_binarys():
    source = _swift("Sources/NVMeCSICore/VolumeParameters.swift")
    defaults = dict(re.findall(r"public var (\w+): Int = (-?\d+)", source))
    quoted = re.findall(r"`(\w+)` \(default (\d+) s\)", DOC.read_text())
    assert {k for k, _ in quoted} >= {"ctrlLossTmo", "fastIoFailTmo", "reconnectDelay"}, quoted
    for key, value in quoted:
        assert defaults.get(key) == value, f"docs/talos.md: {key} default {value}, the source has {defaults.get(key)}"


def test_the_runbooks_figures_are_measured_ones():
    """Every time in seconds with a decimal the runbook quotes is in reliability.md."""
    runbook = DOC.read_text().split("## Rolling Talos upgrade", 1)[1]
    measured = (REPO / "docs" / "reliability.md").read_text()
    for figure in re.findall(r"\b\d+\.\d+ s\b", runbook):
        assert figure in measured, f"docs/talos.md quotes {figure}, which reliability.md does not have"
