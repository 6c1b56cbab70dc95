"""(1) Every kustomization under deploy/kubernetes renders with `kubectl kustomize`."""

from __future__ import annotations

import pytest

import deploylib
from deploylib import COMPONENTS, EXAMPLES, INSTALLATIONS

KUSTOMIZATIONS = sorted(set(deploylib.all_kustomizations()) | set(INSTALLATIONS) | set(EXAMPLES) | set(COMPONENTS))


def test_the_expected_kustomizations_exist():
    found = set(deploylib.all_kustomizations())
    missing = sorted(set(INSTALLATIONS + EXAMPLES + COMPONENTS) - found)
    assert not missing, f"kustomizations missing under deploy/kubernetes: {missing}"


def test_kubectl_is_the_pinned_one():
    import subprocess

    out = subprocess.run([deploylib.kubectl(), "version", "--client"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Kustomize Version" in out.stdout, f"this kubectl has no kustomize built in:\n{out.stdout}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders(kustomization, render):
    objects = render(kustomization)
    assert objects, f"{kustomization} renders no objects"
    seen = set()
    for obj in objects:
        for key in ("apiVersion", "kind", "metadata"):
            assert key in obj, f"{kustomization}: an object has no {key}: {obj}"
        name = obj["metadata"].get("name")
        assert name, f"{kustomization}: a {obj['kind']} has no name"
        ident = (obj["apiVersion"].split("/")[0], obj["kind"], obj["metadata"].get("namespace"), name)
        assert ident not in seen, f"{kustomization}: {obj['kind']}/{name} appears twice"
        seen.add(ident)


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_installation_puts_namespaced_objects_in_the_driver_namespace(installation, render):
    cluster_scoped = {"Namespace", "CSIDriver", "ClusterRole", "ClusterRoleBinding", "StorageClass"}
    for obj in render(installation):
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"], f"{obj['kind']}/{obj['metadata']['name']} is cluster-scoped"
        else:
            assert obj["metadata"].get("namespace") == deploylib.NAMESPACE, (
                f"{installation}: {obj['kind']}/{obj['metadata']['name']} is not in namespace {deploylib.NAMESPACE}")
