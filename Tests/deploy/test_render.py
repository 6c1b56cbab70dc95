"""(1) Every kustomization under deploy/kubernetes renders with `kubectl kustomize`."""

from __future__ import annotations

import pytest
import yaml

import deploylib
from deploylib import COMPONENTS, DEPLOY, EXAMPLES, INSTALLATIONS, REMOTE, RENDERED_IN

# Every kustomization under deploy/kubernetes, rendered on its own; a component
# that needs its overlay's input (RENDERED_IN) is rendered through that overlay.
KUSTOMIZATIONS = sorted(
    (set(deploylib.all_kustomizations()) | set(INSTALLATIONS) | set(EXAMPLES) | set(COMPONENTS))
    - set(RENDERED_IN) - set(REMOTE))


def test_the_expected_kustomizations_exist():
    found = set(deploylib.all_kustomizations())
    missing = sorted(set(INSTALLATIONS + EXAMPLES + COMPONENTS + REMOTE) - found)
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


@pytest.mark.parametrize("component", sorted(RENDERED_IN))
def test_components_that_need_an_overlay_are_rendered_through_one(component):
    overlay = RENDERED_IN[component]
    assert overlay in INSTALLATIONS, f"{overlay} (which renders {component}) is not an installation"
    k = yaml.safe_load((DEPLOY / overlay / "kustomization.yaml").read_text())
    used = {str((DEPLOY / overlay / c).resolve().relative_to(DEPLOY)) for c in k.get("components", [])}
    assert component in used, f"{overlay} does not use {component}"
    assert yaml.safe_load((DEPLOY / component / "kustomization.yaml").read_text())["kind"] == "Component"
