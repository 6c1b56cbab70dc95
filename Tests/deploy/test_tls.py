"""(3b) The target API's mutual TLS as deployed: every installation's target and
controller read their certificate from a whole Secret volume where their --tls-*
flags point (never --insecure-plaintext), the controller's non-root user can read
its key, and the cert-manager component issues exactly those Secrets, with the names
each side checks (--target-server-name, --controller-identity, --reader-identity).
"""

from __future__ import annotations

import re

import pytest

import deploylib
from deploylib import (
    INSTALLATIONS, NAMESPACE, REPO, TLS_FLAGS, TLS_WORKLOADS, find, invocations, one, pod_spec, tls_mount,
)

COMPONENT = "components/cert-manager"
COMPONENT_OVERLAY = "overlays/cert-manager"
READER_SECRET = "nvme-csi-reader-tls"
MAKE_CERTS = REPO / "deploy" / "certs" / "make-certs.sh"


def _values(inv: deploylib.Invocation, flag: str) -> list[str]:
    """A repeatable flag's values, else its default."""
    given = inv.flags.get(flag)
    if given:
        return list(given)
    default = deploylib.role_help(inv.role).defaults.get(flag)
    assert default, f"nvme-csi {inv.role} --help shows no default for {flag}"
    return [default]


def _target(objects: list[dict]) -> deploylib.Invocation:
    return deploylib.main_invocation(one(objects, "DaemonSet", "nvme-csi-target"))


def _controller(objects: list[dict]) -> deploylib.Invocation:
    return deploylib.main_invocation(one(objects, "Deployment", "nvme-csi-controller"))


# --- every installation --------------------------------------------------------------


@pytest.mark.parametrize("installation", INSTALLATIONS)
def test_no_installation_runs_the_target_api_in_plaintext(installation, render):
    found = [i for o in render(installation) for i in invocations(o) if i.role in ("target", "controller")]
    assert {i.role for i in found} == {"target", "controller"}
    for inv in found:
        assert "--insecure-plaintext" not in inv.flags, f"{inv.where}: --insecure-plaintext in a deployment"


@pytest.mark.parametrize("installation", INSTALLATIONS)
@pytest.mark.parametrize("workload", sorted(TLS_WORKLOADS))
def test_tls_files_are_a_whole_secret_volume(installation, workload, render):
    tls = tls_mount(one(render(installation), *workload))
    assert tls.secret == TLS_WORKLOADS[workload], (
        f"{tls.invocation.where}: mounts Secret {tls.secret}, expected {TLS_WORKLOADS[workload]}")


def _identity(spec: dict, c: dict) -> tuple[int, set[int]]:
    """The uid the container runs as (the image's is root) and its known groups."""
    pod = spec.get("securityContext") or {}
    own = c.get("securityContext") or {}
    uid = own.get("runAsUser", pod.get("runAsUser", 0))
    groups = {own.get("runAsGroup", pod.get("runAsGroup"))} - {None}
    groups |= set(pod.get("supplementalGroups", []))
    if "fsGroup" in pod:
        groups.add(pod["fsGroup"])
    return uid, groups


def check_key_readable(obj: dict) -> None:
    """Secret files belong to root; with an fsGroup kubelet gives them that group and
    adds group read (read-only volume). The key must be readable by the process, and
    not by every user of the container."""
    spec = pod_spec(obj)
    tls = tls_mount(obj)
    mode = tls.volume["secret"].get("defaultMode", 0o644)
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    group = 0
    if fs_group is not None:
        mode |= 0o440
        group = fs_group
    uid, groups = _identity(spec, tls.invocation.container)
    readable = uid == 0 or bool(mode & 0o004) or (bool(mode & 0o040) and group in groups)
    assert readable, (
        f"{tls.invocation.where}: uid {uid} (groups {sorted(groups)}) cannot read {tls.paths['--tls-key']} "
        f"(root:{group}, mode {mode:o}): set the pod's fsGroup and defaultMode 0440")
    assert not mode & 0o007, f"{tls.invocation.where}: the TLS key is readable by everyone (mode {mode:o})"


@pytest.mark.parametrize("installation", INSTALLATIONS)
@pytest.mark.parametrize("workload", sorted(TLS_WORKLOADS))
def test_the_process_can_read_its_key_and_nobody_else(installation, workload, render):
    check_key_readable(one(render(installation), *workload))


def test_the_read_check_catches_an_unreadable_key(render):
    """The controller (uid 65532) without its fsGroup could not read a 0440 key."""
    import copy

    deploy = copy.deepcopy(one(render("base"), "Deployment", "nvme-csi-controller"))
    pod_spec(deploy)["securityContext"].pop("fsGroup", None)
    with pytest.raises(AssertionError, match="cannot read"):
        check_key_readable(deploy)


def test_a_subpath_mount_is_refused(render):
    import copy

    ds = copy.deepcopy(one(render("base"), "DaemonSet", "nvme-csi-target"))
    c = deploylib.container(pod_spec(ds), "nvme-csi")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/nvme-csi/tls")
    mount.update(mountPath="/etc/nvme-csi/tls/tls.key", subPath="tls.key")
    with pytest.raises(AssertionError):
        tls_mount(ds)


# --- cert-manager ------------------------------------------------------------------------


def _by_secret(objects: list[dict]) -> dict[str, dict]:
    certs: dict[str, dict] = {}
    for cert in find(objects, "Certificate"):
        secret = cert["spec"]["secretName"]
        assert secret not in certs, f"two Certificates write Secret {secret}"
        certs[secret] = cert
    return certs


def check_certificates(issued: list[dict], installation: list[dict], label: str) -> None:
    """The Certificates and Issuers in `issued` make the Secrets `installation`
    mounts, from one CA, with the names the other side checks."""
    for obj in find(issued, "Certificate") + find(issued, "Issuer"):
        assert obj["metadata"].get("namespace") == NAMESPACE, (
            f"{label}: {obj['kind']}/{obj['metadata']['name']} is not in namespace {NAMESPACE} (the pods' Secrets)")
    certs = _by_secret(issued)
    issuers = {i["metadata"]["name"]: i for i in find(issued, "Issuer")}
    target, controller = _target(installation), _controller(installation)

    def cert_for(workload) -> dict:
        secret = tls_mount(one(installation, *workload)).secret
        assert secret in certs, f"{label}: no Certificate writes Secret {secret} ({workload[1]} mounts it)"
        return certs[secret]

    def issuer_of(cert: dict) -> dict:
        ref = cert["spec"]["issuerRef"]
        assert ref.get("kind", "Issuer") == "Issuer" and ref.get("group", "cert-manager.io") == "cert-manager.io"
        assert ref["name"] in issuers, f"{label}: Certificate {cert['metadata']['name']}: no Issuer {ref['name']}"
        return issuers[ref["name"]]

    server = cert_for(("DaemonSet", "nvme-csi-target"))
    client = cert_for(("Deployment", "nvme-csi-controller"))
    leaves = [server, client] + ([certs[READER_SECRET]] if READER_SECRET in certs else [])

    server_name = controller.value("--target-server-name")
    assert server_name in server["spec"].get("dnsNames", []), (
        f"{label}: the controller wants a target certificate for {server_name} (--target-server-name), "
        f"Certificate {server['metadata']['name']} has dnsNames {server['spec'].get('dnsNames')}")
    assert "server auth" in server["spec"].get("usages", [])

    allowed = _values(target, "--controller-identity")
    assert set(client["spec"].get("dnsNames", [])) & set(allowed), (
        f"{label}: the targets allow {allowed} (--controller-identity), "
        f"Certificate {client['metadata']['name']} has dnsNames {client['spec'].get('dnsNames')}")
    assert "client auth" in client["spec"].get("usages", [])

    if READER_SECRET in certs:
        reader = certs[READER_SECRET]
        names = set(reader["spec"].get("dnsNames", []))
        assert names & set(_values(target, "--reader-identity")), f"{label}: the reader certificate has no --reader-identity"
        assert not names & set(allowed), f"{label}: the reader certificate carries a --controller-identity"
        assert "client auth" in reader["spec"].get("usages", [])

    # One CA behind both sides: each trusts the ca.crt of its own Secret.
    cas = set()
    for leaf in leaves:
        spec = leaf["spec"]
        assert not spec.get("isCA"), f"{label}: {leaf['metadata']['name']} is a CA"
        assert spec.get("privateKey", {}).get("rotationPolicy") == "Always", (
            f"{label}: {leaf['metadata']['name']}: a renewal should make a new key (privateKey.rotationPolicy: Always)")
        issuer = issuer_of(leaf)
        assert "ca" in issuer["spec"], f"{label}: {leaf['metadata']['name']} is not signed by a CA Issuer"
        cas.add(issuer["spec"]["ca"]["secretName"])
    assert len(cas) == 1, f"{label}: the certificates come from different CAs: {sorted(cas)}"
    ca_secret = cas.pop()
    assert ca_secret in certs, f"{label}: no Certificate makes the CA Secret {ca_secret}"
    ca = certs[ca_secret]
    assert ca["spec"].get("isCA") is True, f"{label}: Certificate {ca['metadata']['name']} is not a CA"
    assert "selfSigned" in issuer_of(ca)["spec"], f"{label}: the CA is not self-signed"


def test_cert_manager_component_issues_the_secrets_base_mounts(render):
    check_certificates(render(COMPONENT), render("base"), COMPONENT)


def test_installations_with_certificates_issue_what_they_mount(render):
    """An installation either leaves the Secrets to the user or makes all of them."""
    with_certificates = [i for i in INSTALLATIONS if find(render(i), "Certificate")]
    assert COMPONENT_OVERLAY in with_certificates
    for installation in with_certificates:
        check_certificates(render(installation), render(installation), installation)


def test_cert_manager_overlay_is_base_plus_the_component(render):
    def ident(o):
        return (o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])

    overlay = {ident(o): o for o in render(COMPONENT_OVERLAY)}
    parts = {ident(o): o for o in render("base") + render(COMPONENT)}
    assert overlay.keys() == parts.keys(), sorted(set(overlay) ^ set(parts))
    assert find(render(COMPONENT_OVERLAY), "Certificate"), "the cert-manager overlay makes no Certificates"


def test_base_makes_no_secrets_or_certificates(render):
    """The certificates are the user's (cert-manager or make-certs.sh): a Secret in the
    base would hold a key everyone shares, and the base must not need cert-manager."""
    objects = render("base")
    assert not find(objects, "Secret") and not find(objects, "Certificate") and not find(objects, "Issuer")


def test_the_certificate_check_catches_a_wrong_name(render):
    import copy

    issued = copy.deepcopy(render(COMPONENT))
    server = _by_secret(issued)[TLS_WORKLOADS[("DaemonSet", "nvme-csi-target")]]
    server["spec"]["dnsNames"] = ["nvme-csi-target.example"]
    with pytest.raises(AssertionError, match="--target-server-name"):
        check_certificates(issued, render("base"), "mutated")


# --- make-certs.sh -----------------------------------------------------------------------


def test_make_certs_names_are_the_ones_checked(render):
    """deploy/certs/make-certs.sh (clusters without cert-manager) writes the keys the
    pods read and the names each side checks."""
    text = MAKE_CERTS.read_text()
    declared = re.search(r"declare -A names=\(([^)]*)\)", text)
    assert declared, f"{MAKE_CERTS}: no names table"
    names = dict(re.findall(r"\[(\w+)\]=([\w.-]+)", declared.group(1)))
    objects = render("base")
    assert names.get("target") == _controller(objects).value("--target-server-name")
    assert names.get("controller") in _values(_target(objects), "--controller-identity")
    assert names.get("reader") in _values(_target(objects), "--reader-identity")
    for key in TLS_FLAGS.values():
        assert f"$out/{key}" in text or f"$out/.{key}" in text, f"{MAKE_CERTS} writes no {key}"
