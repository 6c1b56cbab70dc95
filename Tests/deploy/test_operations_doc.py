"""(6) docs/operations.md says what the manifests do: the objects base installs,
the controller's replica count and disruption budget, the sidecar versions, every
container's image, arguments and ports, and the snapshot install steps pinned to
the release of csi-snapshotter, in the order they must run."""

from __future__ import annotations

import re

import pytest
import yaml

import deploylib
from deploylib import INSTALLATIONS, REPO, containers, find, one, pod_spec

DOC = REPO / "docs" / "operations.md"
SIG_STORAGE = "registry.k8s.io/sig-storage"
# Kinds the "ServiceAccounts, RBAC" row stands for.
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _lines() -> list[str]:
    return DOC.read_text().splitlines()


def _section(heading: str) -> list[str]:
    """The lines under a heading (exact text, any level) up to the next heading of
    the same or a higher level."""
    lines = _lines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#+) (.*)$", line)
        if m and m.group(2).strip() == heading:
            level = len(m.group(1))
            out = []
            for rest in lines[i + 1:]:
                n = re.match(r"^(#+) ", rest)
                if n and len(n.group(1)) <= level:
                    break
                out.append(rest)
            return out
    raise AssertionError(f"{DOC} has no heading {heading!r}")


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """Markdown tables in `lines`: each a list of body rows, each row its cells."""
    tables, current = [], None
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if current is None:
                current = {"header": cells, "rows": []}
            elif all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                continue
            else:
                current["rows"].append(cells)
        elif current is not None:
            tables.append(current)
            current = None
    if current is not None:
        tables.append(current)
    return tables


def _table(heading: str, first_column: str) -> list[list[str]]:
    found = [t for t in _tables(_section(heading)) if t["header"][0] == first_column]
    assert len(found) == 1, f"{DOC}: expected one table with a '{first_column}' column under {heading!r}"
    return found[0]["rows"]


def _spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _object_ref(cell: str) -> tuple[str, str] | None:
    """("Deployment", "nvme-csi-controller") from 'Deployment `nvme-csi-controller`'."""
    m = re.fullmatch(r"(\w+) `([^`]+)`", cell)
    return (m.group(1), m.group(2)) if m else None


# --- what gets installed ---------------------------------------------------------------


def test_every_installed_object_is_in_the_table_and_the_table_names_nothing_else(render):
    rows = _table("What gets installed", "object")
    documented = [ref for ref in (_object_ref(r[0]) for r in rows) if ref]
    assert any(r[0] == "ServiceAccounts, RBAC" for r in rows), "the table lost its RBAC row"
    objects = [o for o in render("base") if o["kind"] not in RBAC_KINDS]

    def documents(ref, obj):
        kind, name = ref
        pattern = re.escape(name).replace(re.escape("<hash>"), r"[a-z0-9]+")
        return kind == obj["kind"] and re.fullmatch(pattern, obj["metadata"]["name"])

    for obj in objects:
        assert any(documents(ref, obj) for ref in documented), (
            f"docs/operations.md 'What gets installed' does not list {obj['kind']} {obj['metadata']['name']}")
    for ref in documented:
        assert any(documents(ref, obj) for obj in objects), f"docs/operations.md lists {ref}, which base does not install"


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_the_stated_replica_count_is_the_deployments(installation, render):
    rows = _table("What gets installed", "object")
    row = next(r for r in rows if _object_ref(r[0]) == ("Deployment", "nvme-csi-controller"))
    m = re.match(r"(\d+) replicas\b", row[1])
    assert m, f"the controller's row does not start with its replica count: {row[1]!r}"
    deploy = one(render(installation), "Deployment", "nvme-csi-controller")
    assert deploy["spec"]["replicas"] == int(m.group(1)), (
        f"{installation}: {deploy['spec']['replicas']} replicas, docs/operations.md says {m.group(1)}")


def test_the_stated_disruption_budget_is_the_manifests(render):
    rows = _table("What gets installed", "object")
    row = next(r for r in rows if _object_ref(r[0]) == ("PodDisruptionBudget", "nvme-csi-controller"))
    pdb = one(render("base"), "PodDisruptionBudget", "nvme-csi-controller")["spec"]
    stated = [s for s in _spans(row[1]) if re.fullmatch(r"\w+: \S+", s)]
    assert stated, f"the budget's row states none of its fields: {row[1]!r}"
    for field in stated:
        key, _, value = field.partition(": ")
        assert str(pdb.get(key)) == value, f"docs/operations.md: {field}, the manifest: {key}: {pdb.get(key)}"


# --- sidecars and containers ------------------------------------------------------------


def _sidecar_images(objects: list[dict]) -> dict[str, str]:
    found = {}
    for _, spec in deploylib.workloads(objects):
        for c in containers(spec):
            if c["image"].startswith(SIG_STORAGE + "/"):
                name, _, tag = c["image"][len(SIG_STORAGE) + 1:].partition(":")
                assert found.get(name, tag) == tag, f"{name} runs at two versions: {found[name]}, {tag}"
                found[name] = tag
    return found


def test_the_sidecar_version_table_is_what_runs(render):
    rows = _table("What gets installed", "sidecar")
    documented = {r[0]: r[1] for r in rows}
    assert documented == _sidecar_images(render("base")), "docs/operations.md's sidecar versions differ from base"


def _documented_containers() -> dict[tuple[str, str, str], dict]:
    rows = _table("Containers and their arguments", "pod")
    out = {}
    for pod, name, image, args, ports in rows:
        ref = _object_ref(pod)
        assert ref, f"pod cell {pod!r} is not 'Kind `name`'"
        key = (*ref, _spans(name)[0])
        assert key not in out, f"docs/operations.md lists {key} twice"
        out[key] = {
            "image": _spans(image)[0],
            "args": _spans(args),
            "ports": sorted(int(p) for p in _spans(ports)),
        }
    return out


def test_the_container_table_matches_base_argument_for_argument(render):
    """Every argument the table names for a container is in base's manifest, and
    every argument of the manifest is in the table; likewise images and ports."""
    documented = _documented_containers()
    actual = {}
    for obj, spec in deploylib.workloads(render("base")):
        for c in containers(spec):
            actual[(obj["kind"], obj["metadata"]["name"], c["name"])] = {
                "image": c["image"].rsplit("/", 1)[-1],
                "args": list(c.get("command", [])[1:]) + list(c.get("args", [])),
                "ports": sorted(p["containerPort"] for p in c.get("ports", [])),
            }
    assert documented.keys() == actual.keys(), (
        f"containers only in the docs: {sorted(documented.keys() - actual.keys())}; "
        f"only in base: {sorted(actual.keys() - documented.keys())}")
    errors = []
    for key, want in actual.items():
        got = documented[key]
        if got["image"] != want["image"]:
            errors.append(f"{key}: image {got['image']} in the docs, {want['image']} in base")
        missing = sorted(set(want["args"]) - set(got["args"]))
        extra = sorted(set(got["args"]) - set(want["args"]))
        if missing or extra or len(got["args"]) != len(want["args"]):
            errors.append(f"{key}: arguments not in the docs {missing}, in the docs but not in base {extra}")
        if got["ports"] != want["ports"]:
            errors.append(f"{key}: ports {got['ports']} in the docs, {want['ports']} in base")
    assert not errors, "docs/operations.md 'Containers and their arguments' is out of date:\n" + "\n".join(errors)


def test_the_container_table_check_sees_a_missing_flag():
    documented = _documented_containers()
    key = ("Deployment", "nvme-csi-controller", "csi-provisioner")
    assert "--leader-election" in documented[key]["args"], "the table parser lost the provisioner's arguments"


# --- snapshot support -----------------------------------------------------------------------

SNAPSHOTTER_REPO = "https://github.com/kubernetes-csi/external-snapshotter"


def _install_commands() -> list[str]:
    return [line.strip() for line in _section("Install") if line.strip().startswith("kubectl ")]


def _snapshot_support() -> dict:
    return yaml.safe_load((deploylib.DEPLOY / "snapshot-support" / "kustomization.yaml").read_text())


def test_snapshot_support_is_pinned_to_the_snapshotters_release(render):
    tag = _sidecar_images(render("base"))["csi-snapshotter"]
    kustomization = _snapshot_support()
    resources = kustomization["resources"]
    paths = []
    for r in resources:
        m = re.fullmatch(re.escape(SNAPSHOTTER_REPO) + r"/([\w/.-]+)\?ref=([\w.-]+)", r)
        assert m, f"snapshot-support: {r} is not external-snapshotter pinned with ?ref="
        assert m.group(2) == tag, f"snapshot-support: {r} is pinned to {m.group(2)}, csi-snapshotter runs {tag}"
        paths.append(m.group(1))
    # The CRDs first (kustomize orders CRDs first anyway; the list says what is meant).
    assert paths == ["client/config/crd", "deploy/kubernetes/snapshot-controller"], paths
    images = {i["name"]: i.get("newTag") for i in kustomization.get("images", [])}
    assert images == {SIG_STORAGE + "/snapshot-controller": tag}, (
        f"snapshot-controller must run {tag}, as csi-snapshotter: {images}")


def test_install_order_is_snapshot_support_driver_snapshot_class(render):
    commands = _install_commands()

    def first(predicate, what):
        for i, c in enumerate(commands):
            if predicate(c):
                return i
        raise AssertionError(f"docs/operations.md's Install has no command that applies {what}")

    support = first(lambda c: re.fullmatch(r"kubectl apply -k deploy/kubernetes/snapshot-support", c), "snapshot support")
    driver = first(lambda c: c.startswith("kubectl apply -k deploy/kubernetes/base"), "the driver")
    examples = [k for k in deploylib.EXAMPLES if find(render(k), "VolumeSnapshotClass")]
    snapshot_class = first(lambda c: any(re.search(rf"apply -k deploy/kubernetes/{re.escape(k)}(\s|$)", c) for k in examples),
                           "a VolumeSnapshotClass")
    assert support < driver < snapshot_class, (
        "install order must be: snapshot CRDs and snapshot-controller, the driver, the VolumeSnapshotClass")


def test_the_documented_k0s_path_is_the_overlays(render):
    text = "\n".join(_section("Another kubelet directory (k0s, microk8s)"))
    assert f"`{deploylib.kubelet_dir('overlays/k0s')}`" in text
    node = pod_spec(one(render("overlays/k0s"), "DaemonSet", "nvme-csi-node"))
    assert any(v.get("hostPath", {}).get("path") == deploylib.kubelet_dir("overlays/k0s") for v in node["volumes"])


# --- metrics -------------------------------------------------------------------------------------


def test_the_metrics_table_is_the_manifests(render):
    """The Metrics section's --metrics-address of each pod is base's, for every
    long-running nvme-csi process."""
    rows = _table("Metrics", "pod")
    documented = {_object_ref(r[0]): _spans(r[1]) for r in rows}
    actual = {}
    for obj, _ in deploylib.workloads(render("base")):
        for inv in deploylib.invocations(obj):
            if inv.role in ("controller", "node", "target") and "Probe" not in inv.where:
                actual[(obj["kind"], obj["metadata"]["name"])] = inv.flags.get("--metrics-address", [])
    assert documented == actual, f"docs/operations.md 'Metrics': {documented}, base: {actual}"


def test_the_documented_metric_names_are_the_sources():
    """Each nvmecsi_* name the Metrics section gives is one the sources register
    (namespace nvmecsi, then the name, or name and unit: rpc_requests + total)."""
    source = "\n".join(p.read_text() for p in sorted((REPO / "Sources").rglob("*.swift")))
    names = {re.sub(r"\{.*", "", s) for s in _spans("\n".join(_section("Metrics"))) if s.startswith("nvmecsi_")}
    assert len(names) >= 15, f"the Metrics section names only {sorted(names)}"
    for full in sorted(names):
        name = full[len("nvmecsi_"):]
        base, _, unit = name.rpartition("_")
        split = re.search(rf'metricName: "{re.escape(base)}", unitName: "{re.escape(unit)}"', source)
        assert f'"{name}"' in source or split, f"docs/operations.md names {full}, which no source file registers"
