"""(2) Every rendered object is valid for current Kubernetes versions.

Built-in kinds are validated with kubernetes-validate in strict mode (unknown fields
are errors, so a misspelt `mountPropagation` fails). The snapshot kinds
(snapshot.storage.k8s.io) are CustomResourceDefinitions that kubernetes-validate
has no schema for: they are skipped by the schema check on purpose and checked by
hand below against the fields of the external-snapshotter v8 CRDs.
"""

from __future__ import annotations

import pytest
import kubernetes_validate

import deploylib
from deploylib import KUBERNETES_VERSIONS
from test_render import KUSTOMIZATIONS

# Kinds without a schema in kubernetes-validate, each with its hand check.
CRD_KINDS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"),
}
RESERVED_PREFIX = "csi.storage.k8s.io/"


def _label(obj):
    return f"{obj['apiVersion']} {obj['kind']}/{obj['metadata'].get('name')}"


def check_volume_snapshot_class(obj):
    assert obj["apiVersion"] == "snapshot.storage.k8s.io/v1"
    extra = set(obj) - {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
    assert not extra, f"{_label(obj)}: unknown fields {sorted(extra)}"
    assert isinstance(obj.get("driver"), str) and obj["driver"], f"{_label(obj)}: driver is required"
    assert obj.get("deletionPolicy") in ("Delete", "Retain"), f"{_label(obj)}: deletionPolicy must be Delete or Retain"
    params = obj.get("parameters", {})
    assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), (
        f"{_label(obj)}: parameters must map strings to strings")
    # The driver's CreateSnapshot refuses every parameter but the sidecars' own.
    bad = [k for k in params if not k.startswith(RESERVED_PREFIX)]
    assert not bad, f"{_label(obj)}: nvme-csi snapshots take no parameters, got {bad}"


def check_volume_snapshot(obj):
    assert obj["apiVersion"] == "snapshot.storage.k8s.io/v1"
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    assert not extra, f"{_label(obj)}: unknown fields {sorted(extra)}"
    spec = obj.get("spec")
    assert isinstance(spec, dict), f"{_label(obj)}: spec is required"
    extra = set(spec) - {"source", "volumeSnapshotClassName"}
    assert not extra, f"{_label(obj)}: unknown spec fields {sorted(extra)}"
    source = spec.get("source")
    assert isinstance(source, dict), f"{_label(obj)}: spec.source is required"
    keys = set(source)
    assert keys in ({"persistentVolumeClaimName"}, {"volumeSnapshotContentName"}), (
        f"{_label(obj)}: spec.source needs exactly one of persistentVolumeClaimName, volumeSnapshotContentName")
    assert all(isinstance(v, str) and v for v in source.values())
    if "volumeSnapshotClassName" in spec:
        assert isinstance(spec["volumeSnapshotClassName"], str) and spec["volumeSnapshotClassName"]


HAND_CHECKS = {
    "VolumeSnapshotClass": check_volume_snapshot_class,
    "VolumeSnapshot": check_volume_snapshot,
}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_objects_match_the_kubernetes_schemas(kustomization, version, render):
    errors = []
    for obj in render(kustomization):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue  # no schema: checked by hand in test_custom_resources_by_hand
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{_label(obj)}: no schema for Kubernetes {version}: {e.message}")
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path)
            errors.append(f"{_label(obj)}: {where}: {e.message}")
    assert not errors, f"{kustomization} against Kubernetes {version}:\n" + "\n".join(errors)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_custom_resources_by_hand(kustomization, render):
    for obj in render(kustomization):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            HAND_CHECKS[obj["kind"]](obj)


def test_the_schema_check_catches_a_misspelt_field():
    """The strict schema check really rejects what a typo produces."""
    bad = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "c", "image": "i", "volumeMounts": [
            {"name": "v", "mountPath": "/v", "mountPropogation": "Bidirectional"}]}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_hand_checks_catch_a_bad_snapshot():
    with pytest.raises(AssertionError):
        check_volume_snapshot({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                               "metadata": {"name": "s"}, "spec": {"source": {}}})
    with pytest.raises(AssertionError):
        check_volume_snapshot_class({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                                     "metadata": {"name": "c"}, "driver": "d", "deletionPolicy": "Keep"})


def test_every_kind_is_either_validated_or_hand_checked(render):
    for k in KUSTOMIZATIONS:
        for obj in render(k):
            if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
                assert obj["kind"] in HAND_CHECKS
